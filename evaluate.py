"""Math-answer verifier and benchmark evaluation (the reward of every GRPO step, the judge of every number).

SAERL (DESIGN.md, "Verifier and evaluation") trains with a 1/0 correctness reward and reports accuracy on
math benchmarks; both go through this file, so training reward, in-loop evaluation and the final report
share one template, one decoding routine and one verifier.

Verifier (model output is untrusted text: no eval/exec/sympify anywhere, everything is bounded):
    extract_answer(text) -> str | None      last balanced \\boxed{...} / \\fbox{...}; "answer is X" fallbacks
    normalize_answer(s) -> str              canonical string form (rules listed at the function)
    is_equiv(pred, gold) -> bool            string, numeric, expression, tuple/interval/set/matrix equivalence
    verify(completion, gold) -> bool        extract + is_equiv
    math_reward(completion, gold) -> float  1.0 / 0.0 for the trainer
    gold_parse_report(golds) -> dict        how many reference answers are numbers, expressions, text, empty

Numbers are exact (fractions.Fraction) wherever the input is rational: integers, decimals, fractions, mixed
numbers, scientific notation and perfect roots compare exactly (28801 != 28800, 0.33 != 1/3). Values that
need floats (pi, e, irrational roots, logs, trig) compare with relative tolerance REL_TOL. Expressions with
free variables compare by value at several points.

Percentage rule: "%" is a unit and is dropped, so 28% == 28 and 10% != 0.1.
Scientific notation: a digit run followed by e/E and an exponent is a number (2e-1 is 0.2, not 2*e-1).
Bare comma lists (1, 2, 10) are answer lists and compare order-free; bracketed ones are tuples/intervals.

Benchmarks (see the second half): BENCHMARKS registry, generate_completions, evaluate, markdown_table, CLI.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
import warnings
from dataclasses import dataclass, field, fields
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

# ------------------------------------------------------------------------------------------------ limits
MAX_COMPLETION_CHARS = 20_000  # extract_answer reads only this tail: the answer is at the end
MAX_ANSWER_CHARS = 1_000  # answers are cut to this before normalisation and parsing
MAX_DEPTH = 60  # parser nesting depth
MAX_RESULT_BITS = 20_000  # exact powers / factorials / sci exponents beyond this size are not evaluated
MAX_LIST_ITEMS = 64  # tuples, sets, matrix cells
REL_TOL = 1e-9  # relative tolerance for values that need floating point (round-off only)
N_POINTS = 6  # evaluation points for expressions with free variables


# ------------------------------------------------------------------------------------------------ extraction
def extract_answer(text: str | None) -> str | None:
    """The content of the last balanced \\boxed{...} (or \\fbox{...}, or \\boxed X for one token);
    else the text after the last "final answer" / "answer is" / "####"; else None (never a stray number)."""
    if not text:
        return None
    text = text[-MAX_COMPLETION_CHARS:]
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    return _answer_phrase(text)


def last_boxed(text: str, max_candidates: int = 8) -> str | None:
    """Content of the last balanced \\boxed{...} / \\fbox{...} (or `\\boxed 5`), or None; also data.py's
    reader of reference solutions."""
    pos = len(text)
    for _ in range(max_candidates):  # bounded: an adversary can write \boxed{ ten thousand times
        start = max(text.rfind("\\boxed", 0, pos), text.rfind("\\fbox", 0, pos))
        if start < 0:
            return None
        j = start + (6 if text.startswith("\\boxed", start) else 5)
        k = j
        while k < len(text) and text[k] == " ":
            k += 1
        if k < len(text) and text[k] == "{":
            content = _braced(text, k)
            if content is not None:
                return content.strip()
        elif k > j:  # "\boxed 5": a single token up to the next space or $
            m = re.match(r"[^\s$]{1,100}", text[k:k + 100])
            if m:
                return m.group(0)
        pos = start
    return None


def _braced(text: str, open_pos: int) -> str | None:
    """Content of the {...} group opening at open_pos, or None if it does not close within MAX_ANSWER_CHARS."""
    depth, i, end = 0, open_pos, min(len(text), open_pos + MAX_ANSWER_CHARS + 2)
    while i < end:
        c = text[i]
        if c == "\\":  # \{ and \} are literal braces (sets), not grouping
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_pos + 1:i]
        i += 1
    return None


_PHRASES = ("final answer", "answer is", "answer:", "####")


def _answer_phrase(text: str) -> str | None:
    tail = text[-2_000:]
    low = tail.lower()
    best = max(((low.rfind(p), p) for p in _PHRASES), key=lambda t: t[0])
    if best[0] < 0:
        return None
    rest = tail[best[0] + len(best[1]):]
    rest = re.sub(r"^\s*(is\b)?\s*[:=]?\s*", "", rest, flags=re.IGNORECASE)
    rest = rest.split("\n", 1)[0].strip()
    math_span = re.search(r"\$([^$]+)\$", rest)
    if math_span:
        rest = math_span.group(1)
    rest = rest.strip().rstrip(".").strip()
    return rest[:MAX_ANSWER_CHARS] or None


# ------------------------------------------------------------------------------------------------ normalisation
_UNIT_WORDS = (
    "square units|sq units|units|unit|square feet|square inches|square meters|square centimeters|sq ft|"
    "cm|mm|km|meters|meter|metres|inches|inch|feet|foot|ft|yards|yard|miles|mile|mph|kmh|"
    "dollars|dollar|cents|cent|hours|hour|hrs|minutes|minute|mins|min|seconds|second|sec|days|day|"
    "weeks|week|months|month|years|year|kg|grams|gram|pounds|pound|lbs|liters|liter|litres|ml|"
    "degrees|degree|percent|students|people|ways|points|cubic units"
)
_UNIT_RE = re.compile(r"(?<=[\d}).%])\s*(?:" + _UNIT_WORDS + r")(?:\^\{?[23]\}?)?\s*$", re.IGNORECASE)
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|textnormal|mbox|mathrm|mathbf|mathit|operatorname)\s*\{([^{}]*)\}")
_TRAILING_TEXT_RE = re.compile(r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\s*\{\s*[a-zA-Z][a-zA-Z .]*\}(?:\^\{?[23]\}?)?\s*$")
_LHS_RE = re.compile(r"^(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?[a-zA-Z0-9]+\}?)?(?:\([a-zA-Z]\))?\s*(?:=|\\in)\s*")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def normalize_answer(s: str | None) -> str:
    """Canonical string form of an answer. In order: cut to MAX_ANSWER_CHARS; unwrap a \\boxed; drop a trailing
    unit in \\text{}; unwrap \\text{} \\mbox{} \\mathrm{} ...; drop \\left \\right \\! \\, \\; \\: \\quad ~ $ and
    \\displaystyle; \\dfrac/\\tfrac -> \\frac; \\geq/\\leq/\\neq -> \\ge/\\le/\\ne; expand \\frac12 and
    \\sqrt2 shorthand; drop ^\\circ, "degrees", % and unit words after a number; drop a trailing period;
    drop thousands separators (1,000 and 1{,}000); drop a leading "x =" / "f(x) =" / "x \\in"; collapse
    spaces (one is kept only between two letters)."""
    if s is None:
        return ""
    return _normalize(str(s)[:MAX_ANSWER_CHARS])


@lru_cache(maxsize=1 << 16)
def _normalize(s: str) -> str:
    s = s.strip()
    if "\\boxed" in s or "\\fbox" in s:
        s = last_boxed(s) or s
    s = s.replace("\\\\", "\x00")  # matrix row breaks: keep them out of the way of the single-\ rules
    s = _TRAILING_TEXT_RE.sub("", s)
    for _ in range(3):  # \text{\textbf{x}} nests at most a little in practice
        s = _TEXT_CMD_RE.sub(r"\1", s)
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\\$|\\[!,;: ]|\\q?quad(?![a-zA-Z])|\\displaystyle|~|\$", " ", s).replace("\\%", "%")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\(ge|le|ne)q(?:slant)?(?![a-zA-Z])", r"\\\1", s)  # inequality answers: \geq -> \ge
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\d)", r"\\frac\1{\2}", s)
    s = re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", s)
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°", "", s)
    for _ in range(2):  # "5 cm^2", "30 degrees", "12 %" (the percentage rule: % is dropped)
        s = _UNIT_RE.sub("", s).strip()
        s = s.rstrip("%").strip() if re.search(r"[\d}]\s*%$", s) else s
    s = s.strip().rstrip(".").strip()
    s = s.replace("{,}", "")
    if _THOUSANDS_RE.fullmatch(s.replace(" ", "")):
        s = s.replace(" ", "").replace(",", "")
    if s.count("=") == 1 or "\\in" in s[:12]:
        s = _LHS_RE.sub("", s, count=1)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"(?<![a-zA-Z]) | (?![a-zA-Z])", "", s)
    return s.replace("\x00", "\\\\")


# ------------------------------------------------------------------------------------------------ equivalence
_INT_RE = re.compile(r"-?\d+")
_WORD_RE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3}")  # a word (not a command): the answer is text


def is_equiv(pred: str | None, gold: str | None) -> bool:
    """True when pred and gold denote the same answer (see the module docstring for the rules)."""
    if pred is None or gold is None:
        return False
    p, g = normalize_answer(pred), normalize_answer(gold)
    if not p or not g:
        return False
    if p == g:
        return True
    if _INT_RE.fullmatch(p) and _INT_RE.fullmatch(g):  # the trainer's common case, without the parser
        return int(p) == int(g)
    try:
        return _structures_equiv(_structure(p), _structure(g))
    except (_ParseError, RecursionError):
        return False


def verify(completion: str | None, gold: str | None) -> bool:
    """Does the completion's final answer match the reference answer? An empty gold never rewards."""
    if gold is None or not normalize_answer(gold):
        warnings.warn(f"gold answer {gold!r} is empty after normalisation; no completion is rewarded", stacklevel=2)
        return False
    return is_equiv(extract_answer(completion), gold)


def math_reward(completion: str | None, gold: str | None) -> float:
    """1.0 if the completion's final answer is correct, else 0.0 (the GRPO reward)."""
    return 1.0 if verify(completion, gold) else 0.0


def answer_kind(answer: str | None) -> str:
    """One of number, expression, tuple, interval, set, list, matrix, choice, text, empty."""
    s = normalize_answer(answer)
    if not s:
        return "empty"
    if re.fullmatch(r"\(?[A-E]\)?", s):
        return "choice"
    try:
        st = _structure(s)
    except (_ParseError, RecursionError):
        return "text"
    if st[0] == "scalar":
        if st[1] is None or _WORD_RE.search(s):  # "Yes" parses as Y*e*s but is a word
            return "text"
        return "expression" if _free_vars(st[1]) else "number"
    if st[0] == "bracketed":
        return "tuple" if st[1:3] == ("(", ")") else "interval"
    return st[0]


def gold_parse_report(golds, n_examples: int = 5) -> dict:
    """Counts of reference answers by kind, plus the first examples of those that did not parse as math
    (text, empty). Text golds are still graded (case-insensitive string match); empty ones never reward."""
    counts: dict[str, int] = {}
    examples: list[str] = []
    for g in golds:
        kind = answer_kind(g)
        counts[kind] = counts.get(kind, 0) + 1
        if kind in ("text", "empty") and len(examples) < n_examples:
            examples.append(str(g))
    total = sum(counts.values())
    unparsed = counts.get("text", 0) + counts.get("empty", 0)
    return {"total": total, "counts": counts, "unparsed": unparsed, "examples": examples}


@lru_cache(maxsize=1 << 16)
def _structure(s: str):
    """Split a normalised answer into ("matrix", rows) | ("bracketed", open, close, items) | ("set", items) |
    ("list", items) | ("union", parts) | ("scalar", ast_or_None, text). Items are structures themselves."""
    m = re.fullmatch(r"\\begin\{([pbBvV]?matrix|array)\}(?:\{[lcr|]*\})?(.*)\\end\{\1\}", s, re.DOTALL)
    if m:
        rows = [r for r in m.group(2).split("\\\\") if r.strip()]
        cells = [[_scalar(c) for c in r.split("&")] for r in rows[:MAX_LIST_ITEMS]]
        if sum(len(r) for r in cells) > MAX_LIST_ITEMS:
            raise _ParseError("matrix too large")
        return ("matrix", tuple(tuple(r) for r in cells))
    parts = _split_top(s, "\\cup")
    if len(parts) > 1:
        return ("union", tuple(_structure(p) for p in parts))
    if s.startswith("\\{") and s.endswith("\\}") and _wraps(s[2:-2]):
        return ("set", tuple(_structure(p) for p in _split_top(s[2:-2], ",")))
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _wraps(s[1:-1]):
        items = _split_top(s[1:-1], ",")
        if len(items) > 1:
            return ("bracketed", s[0], s[-1], tuple(_structure(p) for p in items))
    items = _split_top(s, ",")
    if len(items) > 1:
        return ("list", tuple(_structure(p) for p in items))
    return _scalar(s)


def _wraps(inner: str) -> bool:
    """Is the inner text balanced, i.e. did the outer brackets belong together? ("(1,2),(3,4)" is not one.)"""
    depth = 0
    for c in inner:
        depth += c in "([{"
        depth -= c in ")]}"
        if depth < 0:
            return False
    return depth == 0


def _split_top(s: str, sep: str) -> list[str]:
    out, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c == "\\" and s.startswith(sep, i) and sep.startswith("\\") and depth == 0:
            out.append(s[start:i])
            i += len(sep)
            start = i
            continue
        if c == "\\":
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == sep and depth == 0:
            out.append(s[start:i])
            start = i + 1
        i += 1
        if len(out) > MAX_LIST_ITEMS:
            raise _ParseError(f"more than {MAX_LIST_ITEMS} items")
    out.append(s[start:])
    return [p.strip() for p in out]


def _scalar(s: str):
    s = s.strip()
    if s.count("=") == 1:  # "x=3" inside a list or tuple item
        s = _LHS_RE.sub("", s, count=1)
    try:
        return ("scalar", _parse(s), s)
    except _ParseError:
        return ("scalar", None, s)


def _structures_equiv(a, b) -> bool:
    if a[0] == "matrix" and b[0] == "matrix":
        return len(a[1]) == len(b[1]) and all(
            len(ra) == len(rb) and all(map(_structures_equiv, ra, rb)) for ra, rb in zip(a[1], b[1]))
    if {a[0], b[0]} == {"matrix", "bracketed"}:  # a vector written as a one-row/column matrix vs as a tuple
        mat, tup = (a, b) if a[0] == "matrix" else (b, a)
        cells = [c for row in mat[1] for c in row]
        vector = len(mat[1]) == 1 or all(len(row) == 1 for row in mat[1])
        return vector and tup[1] == "(" and len(cells) == len(tup[3]) and all(map(_structures_equiv, cells, tup[3]))
    if a[0] != b[0]:
        return False
    if a[0] == "bracketed":  # tuples and intervals: bracket kinds must match, order matters
        return a[1:3] == b[1:3] and len(a[3]) == len(b[3]) and all(map(_structures_equiv, a[3], b[3]))
    if a[0] in ("set", "list", "union"):  # order-free, as multisets
        return _multiset_equiv(a[1], b[1])
    return _scalars_equiv(a, b)


def _multiset_equiv(xs, ys) -> bool:
    if len(xs) != len(ys):
        return False
    unused = list(ys)
    for x in xs:
        for k, y in enumerate(unused):
            if _structures_equiv(x, y):
                del unused[k]
                break
        else:
            return False
    return True


def _scalars_equiv(a, b) -> bool:
    (_, ast_a, text_a), (_, ast_b, text_b) = a, b
    if text_a == text_b:
        return True
    choice_a, choice_b = _choice(text_a), _choice(text_b)
    if choice_a or choice_b:
        return choice_a is not None and choice_a == choice_b
    if text_a.lower() == text_b.lower() and _WORD_RE.search(text_a):
        return True  # text answers ("Yes", "\text{even}") compare case-insensitively
    if ast_a is None or ast_b is None:
        return False
    vars_a, vars_b = _free_vars(ast_a), _free_vars(ast_b)
    if vars_a != vars_b:
        return False
    try:
        if not vars_a:
            return _close(_value(ast_a, {}), _value(ast_b, {}), points=False)
        return _equal_at_points(ast_a, ast_b, sorted(vars_a))
    except (_Undefined, _ParseError, OverflowError, ZeroDivisionError, ValueError, RecursionError):
        return False


def _choice(text: str) -> str | None:
    """Multiple-choice letter: "(B)", "B", "B)" or "(B) 12" -> "B"; None for anything else."""
    m = re.fullmatch(r"\(?([A-Ea-e])\)(?:\s*\S.*)?|\(?([A-E])\)?", text)
    return (m.group(1) or m.group(2)).upper() if m else None


def _equal_at_points(ast_a, ast_b, names: list[str]) -> bool:
    compared = 0
    for p in range(N_POINTS):
        # distinct, non-integer, mixed-sign values so that e.g. x and |x| or x^2 and 2x differ somewhere
        env = {n: Fraction(13 + 17 * p + 7 * j, 10 + j) * (-1 if (p + j) % 3 == 2 else 1) for j, n in enumerate(names)}
        try:
            va = _value(ast_a, env)
        except (_Undefined, ZeroDivisionError, ValueError, OverflowError):
            va = None
        try:
            vb = _value(ast_b, env)
        except (_Undefined, ZeroDivisionError, ValueError, OverflowError):
            vb = None
        if (va is None) != (vb is None):
            return False
        if va is not None:
            if not _close(va, vb, points=True):
                return False
            compared += 1
    return compared >= 2


def _close(x, y, *, points: bool) -> bool:
    if isinstance(x, Fraction) and isinstance(y, Fraction):
        return x == y  # exact: integers, decimals, fractions, perfect roots
    fx, fy = float(x), float(y)  # OverflowError for astronomically large exact values: not equal
    if fx == fy:
        return True
    if not (math.isfinite(fx) and math.isfinite(fy)):
        return False
    if fx == 0 or fy == 0 or points:  # values near zero (sin(pi) = 1e-16) need an absolute floor
        return abs(fx - fy) <= max(REL_TOL * max(abs(fx), abs(fy)), 1e-12)
    return math.isclose(fx, fy, rel_tol=REL_TOL, abs_tol=0.0)


# ------------------------------------------------------------------------------------------------ parser
class _ParseError(ValueError):
    """The text is not simple LaTeX arithmetic."""


class _Undefined(ArithmeticError):
    """The value does not exist (division by zero, sqrt of a negative) or is too large to compute."""


_TOKEN_RE = re.compile(r"\s*(?:(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|(\\[a-zA-Z]+|\\[{}|])|([a-zA-Z])"
                       r"|([-+*/^!(){}\[\]_|]))")
_CONSTS = {"\\pi": math.pi, "\\infty": math.inf, "\\inf": math.inf, "e": math.e}
_FUNCS = {"\\sin": math.sin, "\\cos": math.cos, "\\tan": math.tan, "\\cot": lambda v: 1 / math.tan(v),
          "\\sec": lambda v: 1 / math.cos(v), "\\csc": lambda v: 1 / math.sin(v), "\\arcsin": math.asin,
          "\\arccos": math.acos, "\\arctan": math.atan, "\\ln": math.log, "\\log": math.log, "\\exp": math.exp,
          "\\sinh": math.sinh, "\\cosh": math.cosh, "\\tanh": math.tanh}
_GREEK = {"\\alpha", "\\beta", "\\gamma", "\\delta", "\\theta", "\\lambda", "\\mu", "\\sigma", "\\phi", "\\omega",
          "\\rho", "\\tau", "\\epsilon", "\\varepsilon", "\\varphi", "\\psi", "\\eta", "\\nu", "\\xi", "\\zeta"}
_MUL = {"*", "\\cdot", "\\times"}
_DIV = {"/", "\\div"}
_CLOSER = {"(": ")", "{": "}", "[": "]"}


@lru_cache(maxsize=1 << 16)
def _parse(s: str):
    """Parse simple LaTeX arithmetic into a tuple AST: ("num", Fraction) ("var", name) ("const", float)
    ("add"|"sub"|"mul"|"div"|"pow", a, b) ("neg"|"abs"|"fact", a) ("root", a, n) ("func", name, a, base)."""
    tokens, pos = [], 0
    s = s.strip()
    while pos < len(s):
        m = _TOKEN_RE.match(s, pos)
        if not m or m.end() == pos:
            if s[pos:].strip() == "":
                break
            raise _ParseError(f"unexpected character {s[pos]!r} at {pos}")
        tokens.append(m.group(m.lastindex))
        pos = m.end()
    if not tokens:
        raise _ParseError("empty")
    parser = _Parser(tokens)
    node = parser.expr()
    if parser.pos != len(tokens):
        raise _ParseError(f"unexpected {tokens[parser.pos]!r}")
    return node


class _Parser:
    """Recursive descent: expr := term (+|- term)*; term := unary ((*|/|implicit) unary)*;
    unary := (-|+)* power; power := postfix (^ unary)?; postfix := atom !*. Every recursion passes
    through atom, which bounds the nesting depth."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.pos, self.depth = tokens, 0, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        t = self.peek()
        if t is None or (expected is not None and t != expected):
            raise _ParseError(f"expected {expected or 'a token'}, found {t!r}")
        self.pos += 1
        return t

    def expr(self):
        node = self.term()
        while self.peek() in ("+", "-"):
            op = "add" if self.take() == "+" else "sub"
            node = (op, node, self.term())
        return node

    def term(self):
        node = self.unary()
        while True:
            t = self.peek()
            if t in _MUL:
                self.take()
                node = ("mul", node, self.unary())
            elif t in _DIV:
                self.take()
                node = ("div", node, self.unary())
            elif t is not None and self.starts_atom(t):
                node = ("mul", node, self.power())
            else:
                return node

    def starts_atom(self, t: str) -> bool:
        return (t[0].isdigit() or t[0] == "." or t.isalpha() or t in ("(", "{", "[") or t in _CONSTS
                or t in _FUNCS or t in _GREEK or t in ("\\frac", "\\sqrt", "\\binom"))

    def unary(self):
        negative = False
        while self.peek() in ("-", "+"):  # a loop, not recursion: "------1" cannot exhaust the stack
            negative ^= self.take() == "-"
        node = self.power()
        return ("neg", node) if negative else node

    def power(self):
        base = self.postfix()
        if self.peek() != "^":
            return base
        self.take()
        return ("pow", base, self.unary())  # right-associative (a^b^c = a^(b^c)); 2^-1 allowed

    def postfix(self):
        node = self.atom()
        while self.peek() == "!":
            self.take()
            node = ("fact", node)
        return node

    def group(self):
        """A {...} / (...) / [...] group, or a single atom (LaTeX arguments like \\frac{1}{2} or \\sqrt x)."""
        if self.peek() in _CLOSER:
            opener = self.take()
            node = self.expr()
            self.take(_CLOSER[opener])
            return node
        return self.postfix()

    def atom(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _ParseError(f"nesting deeper than {MAX_DEPTH}")
        t = self.take()
        if t[0].isdigit() or t[0] == ".":
            node = ("num", _number(t))
            if t.isdigit() and self.peek() == "\\frac":  # mixed number 2\frac{1}{3} = 7/3
                save = self.pos
                self.take()
                num, den = self.group(), self.group()
                if num[0] == "num" and den[0] == "num" and num[1].denominator == den[1].denominator == 1 != den[1]:
                    node = ("num", node[1] + num[1] / den[1])
                else:
                    self.pos = save
        elif t in _CLOSER:
            node = self.expr()
            self.take(_CLOSER[t])
        elif t == "|":
            node = ("abs", self.expr())
            self.take("|")
        elif t in _CONSTS:
            node = ("const", _CONSTS[t])
        elif t.isalpha() or t in _GREEK:
            name = t
            if self.peek() == "_":  # subscripted variable a_1, x_{n}
                self.take()
                sub = self.take()
                if sub == "{":
                    while self.peek() not in ("}", None):
                        sub += self.take()
                    sub += self.take("}")
                name += "_" + sub
            node = ("var", name)
        elif t == "\\frac":
            node = ("div", self.group(), self.group())
        elif t == "\\binom":
            node = ("binom", self.group(), self.group())
        elif t == "\\sqrt":
            index = None
            if self.peek() == "[":
                self.take()
                index = self.expr()
                self.take("]")
            node = ("root", self.group(), index or ("num", Fraction(2)))
        elif t in _FUNCS:
            base = power = None
            if t == "\\log" and self.peek() == "_":
                self.take()
                base = self.group()
            if self.peek() == "^":  # \sin^2 x
                self.take()
                power = self.group()
            node = ("func", t, self.group(), base)
            if power is not None:
                node = ("pow", node, power)
        else:
            raise _ParseError(f"unsupported token {t!r}")
        self.depth -= 1
        return node


def _number(t: str) -> Fraction:
    mantissa, _, exponent = t.lower().partition("e")
    value = Fraction(mantissa)
    if exponent:
        e = int(exponent)
        if abs(e) * 4 > MAX_RESULT_BITS:
            raise _ParseError(f"exponent {e} too large")
        value *= Fraction(10) ** e
    return value


def _free_vars(node) -> frozenset:
    if node[0] == "var":
        return frozenset([node[1]])
    out = frozenset()
    for child in node[1:]:
        if isinstance(child, tuple):
            out |= _free_vars(child)
    return out


def _value(node, env: dict):
    """Value of an AST: Fraction where exact, float otherwise. Raises _Undefined where there is none."""
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "const":
        return node[1]
    if kind == "var":
        if node[1] not in env:
            raise _Undefined(f"free variable {node[1]}")
        return env[node[1]]
    if kind == "neg":
        return -_value(node[1], env)
    if kind == "abs":
        return abs(_value(node[1], env))
    if kind == "func":
        result = _FUNCS[node[1]](float(_value(node[2], env)))
        return result / math.log(float(_value(node[3], env))) if node[3] is not None else result
    a = _value(node[1], env)
    if kind == "fact":
        if not (isinstance(a, Fraction) and a.denominator == 1 and 0 <= a <= 2_000):
            raise _Undefined("factorial of a non-integer or too large")
        return Fraction(math.factorial(int(a)))
    b = _value(node[2], env)
    if kind == "add":
        return a + b
    if kind == "sub":
        return a - b
    if kind == "mul":
        return a * b
    if kind == "div":
        if b == 0:
            raise _Undefined("division by zero")
        return a / b
    if kind == "pow":
        return _pow(a, b)
    if kind == "root":
        if b == 0:
            raise _Undefined("zeroth root")
        return _pow(a, 1 / b if isinstance(b, float) else Fraction(1) / b)
    if kind == "binom":
        if not all(isinstance(v, Fraction) and v.denominator == 1 and 0 <= v <= 2_000 for v in (a, b)):
            raise _Undefined("binomial of non-integers or too large")
        return Fraction(math.comb(int(a), int(b)))
    raise _ParseError(f"unknown node {kind}")


def _pow(a, b):
    if isinstance(b, Fraction) and isinstance(a, Fraction):
        if b.denominator == 1:
            e = b.numerator
            if a == 0 and e < 0:
                raise _Undefined("0 to a negative power")
            if a in (0, 1) or e == 0:
                return a ** e
            if a == -1:
                return Fraction(-1 if e % 2 else 1)
            if abs(e) * max(a.numerator.bit_length(), a.denominator.bit_length()) > MAX_RESULT_BITS:
                raise _Undefined(f"power with exponent {e} is too large")
            return a ** e
        if b.denominator <= 64:  # exact roots: 8^{2/3} = 4, \sqrt{12} is not exact and falls through
            root = _exact_root(a, b.denominator)
            if root is not None:
                return _pow(root, Fraction(b.numerator))
    fa, fb = float(a), float(b)
    if fa < 0:
        odd = isinstance(b, Fraction) and b.denominator % 2 == 1
        if not odd:
            raise _Undefined("even root of a negative number")
        return -((-fa) ** fb)  # real odd root: (-8)^{1/3} with an irrational result
    if fa == 0:
        if fb <= 0:
            raise _Undefined("0 to a non-positive power")
        return 0.0
    try:
        result = math.pow(fa, fb)
    except OverflowError as exc:
        raise _Undefined("power overflows") from exc
    if not math.isfinite(result):
        raise _Undefined("power overflows")
    return result


def _exact_root(a: Fraction, n: int) -> Fraction | None:
    if a < 0:
        if n % 2 == 0:
            return None
        r = _exact_root(-a, n)
        return -r if r is not None else None
    num, den = _int_root(a.numerator, n), _int_root(a.denominator, n)
    return Fraction(num, den) if num is not None and den is not None else None


def _int_root(x: int, n: int) -> int | None:
    """The integer r with r**n == x, or None. Newton's method on integers, so big values stay exact."""
    if x < 2:
        return x
    r = 1 << ((x.bit_length() + n - 1) // n)  # an upper bound of the root
    while True:
        nxt = ((n - 1) * r + x // r ** (n - 1)) // n
        if nxt >= r:
            break
        r = nxt
    return r if r ** n == x else None


# ================================================================================================ benchmarks
@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives. source: a Hub dataset id (":config" picks a config) or a local file.
    Field names of None fall back to data.py's aliases (problem|question|..., answer|final_answer|...)."""
    source: str
    split: str = "test"
    problem_field: str | None = None
    answer_field: str | None = None
    local_name: str | None = None  # the copy's file name in shared/data/bench, named in error messages


BENCHMARKS = {
    "math500": Benchmark("HuggingFaceH4/MATH-500", "test", "problem", "answer"),
    "aime24": Benchmark("math-ai/aime24", "test", None, None, "aime24.jsonl"),
    "amc23": Benchmark("math-ai/amc23", "test", None, None, "amc23.jsonl"),
    "minerva": Benchmark("math-ai/minervamath", "test", None, None, "minerva_math.jsonl"),
    "olympiadbench": Benchmark("math-ai/olympiadbench", "test", None, None, "olympiadbench.jsonl"),
    "gsm8k": Benchmark("openai/gsm8k:main", "test", "question", "answer", "gsm8k_test.jsonl"),
}
SHARED_BENCH_DIR = Path(__file__).resolve().parent.parent / "shared" / "data" / "bench"


def resolve_benchmark(spec: str) -> tuple[str, Benchmark]:
    """"math500" (registry), "name=path/to/file.jsonl", or a bare local path (named after its stem)."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        return name.strip(), Benchmark(path.strip())
    if spec in BENCHMARKS:
        return spec, BENCHMARKS[spec]
    if Path(spec).exists():
        return Path(spec).stem, Benchmark(spec)
    raise ValueError(f"unknown benchmark {spec!r}; expected one of {', '.join(BENCHMARKS)}, "
                     "a local .jsonl/.json file, or name=path")


def load_benchmark(spec: str, *, limit: int | None = None, seed: int = 0) -> tuple[str, list]:
    """(name, problems) through data.load_problems. A Hub copy that cannot be read names the local file to pass."""
    import data
    name, bench = resolve_benchmark(spec)
    try:
        problems = data.load_problems(bench.source, split=bench.split, limit=limit, seed=seed,
                                      problem_field=bench.problem_field, answer_field=bench.answer_field)
    except data.DataError as exc:
        local = SHARED_BENCH_DIR / (bench.local_name or f"{name}.jsonl")
        hint = f"--bench {name}={local}" if local.exists() else f"--bench {name}=path/to/{name}.jsonl"
        raise data.DataError(f"benchmark {name!r}: {exc}\n  pass a local copy instead: {hint}") from exc
    if not problems:
        raise data.DataError(f"benchmark {name!r} ({bench.source}) has no usable problems")
    return name, problems


# ------------------------------------------------------------------------------------------------ generation
def generate_completions(model, tokenizer, prompts: list[str], *, n: int = 1, temperature: float = 0.0,
                         top_p: float = 1.0, max_new_tokens: int = 1024, batch_size: int = 8,
                         seed: int = 0) -> list[list[str]]:
    """n completions per prompt (texts without the prompt), the one decoding routine of training and evaluation.

    temperature 0 is greedy (one generation, repeated n times); otherwise nucleus sampling seeded by `seed`
    without touching the caller's global RNG state. Prompts are left-padded; a completion stops at the first
    EOS / <|im_end|> / pad token. On CUDA the forward passes run under bf16 autocast."""
    import torch
    from transformers import GenerationConfig

    sample = temperature > 0
    stop_ids = _stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    # every field that changes decoding is set, so the model's own generation_config (Qwen ships
    # top_k=20, repetition_penalty=1.05) cannot silently fill it in
    config = GenerationConfig(do_sample=sample, temperature=temperature if sample else 1.0,
                              top_p=top_p if sample else 1.0, top_k=0 if sample else None, repetition_penalty=1.0,
                              max_new_tokens=max_new_tokens, num_return_sequences=n if sample else 1,
                              pad_token_id=pad_id, eos_token_id=stop_ids)
    device = next(model.parameters()).device
    per_prompt = n if sample else 1
    completions: list[list[str]] = []
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            enc = tokenizer(batch, return_tensors="pt", padding=True, padding_side="left",
                            add_special_tokens=False).to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = model.generate(**enc, generation_config=config)  # [B*per_prompt, T_prompt + T_new]
            new_tokens = out[:, enc["input_ids"].shape[1]:].tolist()  # [B*per_prompt, T_new]
            texts = [tokenizer.decode(_until_stop(row, stop_ids), skip_special_tokens=True) for row in new_tokens]
            for i in range(len(batch)):
                group = texts[i * per_prompt:(i + 1) * per_prompt]
                completions.append(group if sample else group * n)
    model.train(was_training)
    return completions


def _stop_token_ids(model, tokenizer) -> list[int]:
    ids = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")):
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, int) and v != tokenizer.unk_token_id and v not in ids:
                ids.append(v)
    if not ids:
        raise ValueError("the tokenizer has no EOS token and the model's generation_config names none; "
                         "set tokenizer.eos_token")
    return ids


def _until_stop(row: list[int], stop_ids: list[int]) -> list[int]:
    for k, token in enumerate(row):
        if token in stop_ids:
            return row[:k]
    return row


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate(model, tokenizer, benchmark, *, template: str = "qwen-math", n: int = 1, temperature: float = 0.0,
             top_p: float = 1.0, max_new_tokens: int = 1024, batch_size: int = 8, out_dir=None,
             limit: int | None = None, seed: int = 0, name: str | None = None) -> dict:
    """Accuracy of a model on one benchmark: greedy pass@1 (n=1, temperature 0) or avg@n with sampling.

    benchmark: a registry name, "name=path", a local file, or a list of data.Problem. A problem counts a
    completion correct when its answer matches the reference or any listed alternative. 95% interval:
    Wilson score for pass@1; for avg@n a normal interval over problems (mean +- 1.96 sd/sqrt(N) of the
    per-problem accuracies, clipped to [0, 1]), since the n samples of one problem are not independent.
    With out_dir, every completion, extracted answer and verdict goes to out_dir/<name>.jsonl (atomic)."""
    import data

    if isinstance(benchmark, str):
        name_, problems = load_benchmark(benchmark, limit=limit, seed=seed)
        name = name or name_
    else:
        problems, name = list(benchmark)[:limit], name or "problems"
    t0 = time.perf_counter()
    prompts = [data.format_prompt(p.problem, tokenizer, template) for p in problems]
    completions = generate_completions(model, tokenizer, prompts, n=n, temperature=temperature, top_p=top_p,
                                       max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
    rows, per_problem = [], []
    for problem, samples in zip(problems, completions):
        golds = [problem.answer] + list(problem.meta.get("answer_alternatives", []))
        n_correct = 0
        for k, text in enumerate(samples):
            extracted = extract_answer(text)
            correct = any(is_equiv(extracted, g) for g in golds)
            n_correct += correct
            rows.append({"benchmark": name, "id": problem.id, "sample": k, "gold": problem.answer,
                         "extracted": extracted, "correct": correct, "completion": text})
        per_problem.append(n_correct / n)
    accuracy = sum(per_problem) / len(per_problem)
    if n == 1:
        low, high = wilson_interval(int(sum(per_problem)), len(per_problem))
    else:
        low, high = mean_interval(per_problem)
    gold_report = gold_parse_report([p.answer for p in problems])
    if gold_report["unparsed"]:
        warnings.warn(f"{name}: {gold_report['unparsed']} of {gold_report['total']} gold answers are not math "
                      f"(graded as text, empty ones never correct), e.g. {gold_report['examples'][:3]}", stacklevel=2)
    result = {"benchmark": name, "metric": "pass@1" if n == 1 else f"avg@{n}", "n_problems": len(problems),
              "n": n, "temperature": temperature, "accuracy": accuracy, "ci_low": low, "ci_high": high,
              "interval": "wilson" if n == 1 else "normal over problems",
              "extracted_fraction": sum(r["extracted"] is not None for r in rows) / len(rows),
              "gold_report": gold_report, "seconds": time.perf_counter() - t0, "completions_path": None}
    if out_dir is not None:
        path = Path(out_dir) / f"{name}.jsonl"
        data.write_jsonl(path, rows)
        result["completions_path"] = str(path)
    return result


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (Wilson 1927); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """Normal interval mean +- z * sd / sqrt(N) (sample sd), clipped to [0, 1]; (0, 1) for fewer than 2 values."""
    if len(values) < 2:
        return 0.0, 1.0
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = z * sd / math.sqrt(len(values))
    return max(0.0, mean - half), min(1.0, mean + half)


def markdown_table(results: list[dict]) -> str:
    """One row per benchmark (accuracy in %, 95% interval), plus the unweighted mean when there are several."""
    lines = ["| benchmark | metric | problems | accuracy (%) | 95% interval |", "|---|---|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['benchmark']} | {r['metric']} | {r['n_problems']} | {100 * r['accuracy']:.1f} "
                     f"| {100 * r['ci_low']:.1f} – {100 * r['ci_high']:.1f} |")
    if len(results) > 1:
        mean = sum(r["accuracy"] for r in results) / len(results)
        lines.append(f"| mean | | {sum(r['n_problems'] for r in results)} | {100 * mean:.1f} | |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI
def _flag(default, help_text: str, kind=None):
    return field(default=default, metadata={"help": help_text, "type": kind or type(default)})


@dataclass
class EvalConfig:
    """The CLI: each field is a flag (--max-new-tokens for max_new_tokens)."""
    model: str = _flag("", "local model folder (or a Hub id already in the local HF cache)")
    benchmarks: str = _flag("math500", f"comma-separated: {', '.join(BENCHMARKS)}, or local files")
    bench: list = _flag(None, "name=path of a local benchmark file (repeatable)", str)
    template: str = _flag("qwen-math", "prompt template of data.format_prompt (qwen-math, plain, chat, chatml)")
    n: int = _flag(1, "samples per problem (avg@n when > 1)")
    temperature: float = _flag(0.0, "0 = greedy")
    top_p: float = _flag(1.0, "nucleus sampling mass")
    max_new_tokens: int = _flag(3000, "completion length limit")
    batch_size: int = _flag(8, "prompts per generate call")
    limit: int = _flag(None, "seeded random subset of each benchmark", int)
    seed: int = _flag(0, "seed of sampling and of --limit")
    out: str = _flag("runs/eval", "writes <out>/<benchmark>.jsonl, results.md, results.json")
    device: str = _flag("auto", "auto, cpu or cuda")


def _in_hf_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # a malformed repo id and the like: not cached
        return False


def load_model(name: str, device: str = "auto"):
    """(model, tokenizer) from a local folder, the local HF cache or the Hub; when none of these can
    serve it, fail at once with a message naming what to pass instead (no 35 s of Hub retries)."""
    from data import hub_reachable

    if not Path(name).is_dir() and not _in_hf_cache(name) and not hub_reachable():
        raise SystemExit(f"model {name!r} is not a local folder nor in the Hugging Face cache, and the Hub is not "
                         "reachable from here (or HF_HUB_OFFLINE is set). Pass a local path: --model "
                         "/path/to/model_dir (a folder with config.json and weights, e.g. toy.build_world's "
                         "model_dir or the output of shared/tools/smollm2_to_hf.py)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device)
    except OSError as exc:  # no network, a typo in the id, a gated repo
        raise SystemExit(f"could not load model {name!r}: {exc}\nPass a local path: --model /path/to/model_dir") from exc
    return model, tokenizer


def main(argv: list[str] | None = None) -> list[dict]:
    import json
    import data

    parser = argparse.ArgumentParser(description="Evaluate a model on math benchmarks (pass@1 or avg@n).")
    for f in fields(EvalConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), type=f.metadata["type"], default=f.default,
                            help=f.metadata["help"], required=f.name == "model",
                            action="append" if f.name == "bench" else "store")
    config = EvalConfig(**vars(parser.parse_args(argv)))

    specs = [s for s in config.benchmarks.split(",") if s.strip()] + (config.bench or [])
    try:  # every benchmark is read before the model is loaded, so a missing one fails in seconds
        loaded = [load_benchmark(s.strip(), limit=config.limit, seed=config.seed) for s in specs]
    except (data.DataError, ValueError) as exc:
        raise SystemExit(str(exc)) from exc
    model, tokenizer = load_model(config.model, config.device)
    results = []
    for name, problems in loaded:
        result = evaluate(model, tokenizer, problems, name=name, template=config.template, n=config.n,
                          temperature=config.temperature, top_p=config.top_p,
                          max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                          out_dir=config.out, seed=config.seed)
        print(f"{name}: {result['metric']} = {100 * result['accuracy']:.1f}% "
              f"[{100 * result['ci_low']:.1f}, {100 * result['ci_high']:.1f}] over {result['n_problems']} problems",
              file=sys.stderr)
        results.append(result)
    table = markdown_table(results)
    print(table)
    data.atomic_write_text(Path(config.out) / "results.md", table + "\n")
    data.atomic_write_text(Path(config.out) / "results.json",
                           json.dumps({"config": vars(config), "results": results}, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
