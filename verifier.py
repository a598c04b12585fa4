"""The math-answer verifier: the reward of every GRPO step and the judge of every reported number.

SAERL trains with a 1/0 correctness reward and reports accuracy on
math benchmarks; both call this file, so training reward, in-loop evaluation and the final report share
one verifier. Model output is untrusted text: no eval/exec/sympify anywhere, and everything is bounded.
Imports only the standard library and latex_math.py (the bounded LaTeX arithmetic parser it uses).
Over 600 lines on purpose: the reward and every reported number must come from one set of equivalence
rules, read together in one file (the LaTeX arithmetic already lives apart in latex_math.py).

    extract_answer(text) -> str | None      the final \\boxed{...} (boxes joined across "and"/commas), or the
                                            answer after a later "final answer is" / "answer:" / "####"
    last_boxed(text) -> str | None          the last balanced \\boxed{...} alone (also data.py's reader)
    normalize_answer(s) -> str              canonical string form (rules listed at the function)
    is_equiv(pred, gold) -> bool            string, numeric, expression, relation, tuple/interval/set/matrix
    verify(completion, gold) -> bool        extract + is_equiv
    math_reward(completion, gold) -> float  1.0 / 0.0 for the trainer
    gold_parse_report(golds) -> dict        how many reference answers are numbers, expressions, text, empty

Numbers are exact (fractions.Fraction) wherever the input is rational: integers, decimals, fractions, mixed
numbers (2\\frac{1}{3}, 7 3/4), scientific notation and perfect roots compare exactly (28801 != 28800,
0.33 != 1/3). Values that need floats (pi, e, irrational roots, logs, trig) compare with relative tolerance
REL_TOL; a decimal printed with >= 10 significant digits (0.0833333333333333) equals the value it rounds.
Expressions with free variables compare by value at several points. A real power of a negative base needs an
odd root and takes the numerator's sign: (-2)^{2/3} = 4^{1/3}.

Percentage rule: "%" is a unit and is dropped, so 28% == 28 and 10% != 0.1.
Scientific notation: a digit run followed by e/E and an exponent is a number (2e-1 is 0.2, not 2*e-1).
Bare comma lists (1, 2, 10; also "1 and 2", "1 or 2", {1,2}) are answer lists and compare order-free as
multisets; bracketed ones are tuples/intervals. 32,349 is a number, "32, 349" a list; 1,22 is a list too (no
decimal commas).
Relations: x > 5 is 5 < x; one equation or inequality equals another when their sides' differences are
proportional (2x+4y-3 = 0 is y = -x/2 + 3/4; the factor must be positive for < and <=); an inequality in one
variable equals its interval (-793 < a < 10 is (-793, 10)). Chains (z = 1+1 = 2, x = 5+5+1 = 7 = 11) are
not graded by their last member: they compare member by member (past two relations, as text only).
Labels: a left side that only names the answer is dropped ("x =", "f(x) =", "(p,q) =", "AB =", "x \\in").
Peer agreement: tests/test_verifier_peers.py runs the test cases of Math-Verify, hendrycks' MATH, Qwen2.5-Math,
lm-eval's minerva_math and PRM800K; bench/bench_verifier.py reports the figures.
"""
from __future__ import annotations

import math
import re
import warnings
from fractions import Fraction
from functools import lru_cache

from latex_math import MAX_DEPTH, MAX_RESULT_BITS, _free_vars, _parse, _ParseError, _Undefined, _value  # noqa: F401

# ------------------------------------------------------------------------------------------------ limits
MAX_COMPLETION_CHARS = 20_000  # extract_answer reads only this tail: the answer is at the end
MAX_ANSWER_CHARS = 1_000  # answers are cut to this before normalisation and parsing
MAX_LIST_ITEMS = 64  # tuples, sets, matrix cells
REL_TOL = 1e-9  # relative tolerance for values that need floating point (round-off only)
N_POINTS = 6  # evaluation points for expressions with free variables


# ------------------------------------------------------------------------------------------------ extraction
def as_text(value, what: str = "text") -> str | None:
    """Model output or a reference answer as a str: bytes are decoded as UTF-8 (undecodable bytes become
    U+FFFD, as in any text that reaches a tokenizer), None stays None; anything else is refused with
    a message naming what was given."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    raise TypeError(f"{what} must be a str (or UTF-8 bytes); got {type(value).__name__} {str(value)[:40]!r}")


def extract_answer(text: str | None) -> str | None:
    """The final answer of a completion: the last balanced \\boxed{...} (joined with the boxes just before it
    when only "and", commas, $ or labels divide them: \\boxed{-2} and \\boxed{1} is "-2, 1"), or the answer
    after the last "final answer" / "answer is" / "answer:" / "####" when there is no box, or when that phrase
    comes after the box and states a number or LaTeX (the Minerva format "Final Answer: The final answer is X.
    I hope it is correct." wins over an earlier box); else None (never a stray number)."""
    text = as_text(text, "completion")
    if not text:
        return None
    text = text[-MAX_COMPLETION_CHARS:]
    boxed = _final_boxes(text)
    if boxed is None:
        phrase = _answer_phrase(text)
        return phrase[1] if phrase else None
    later = _answer_phrase(text[boxed[0]:]) if _PHRASE_HINT_RE.search(text, boxed[0]) else None
    if later is not None and later[0] > 0 and re.search(r"\d|\\[a-zA-Z]", later[1]):  # a number or LaTeX,
        return later[1]  # not "\boxed{5}. I am sure the answer is correct."
    return boxed[1]


def last_boxed(text: str, max_candidates: int = 8) -> str | None:
    """Content of the last balanced \\boxed{...} / \\fbox{...} (or `\\boxed 5`), or None; also data.py's
    reader of reference solutions."""
    return next((content for _, _, content in _boxes(text, max_candidates)), None)


def _boxes(text: str, max_candidates: int = 8):
    """The balanced boxes of text from the last one backwards, as (start, end, content); bounded, because an
    adversary can write \\boxed{ ten thousand times."""
    pos = len(text)
    for _ in range(max_candidates):
        start = max(text.rfind("\\boxed", 0, pos), text.rfind("\\fbox", 0, pos))
        if start < 0:
            return
        j = start + (6 if text.startswith("\\boxed", start) else 5)
        k = j
        while k < len(text) and text[k] == " ":
            k += 1
        if k < len(text) and text[k] == "{":
            content = _braced(text, k)
            if content is not None:
                yield start, k + len(content) + 2, content.strip()
        elif k > j:  # "\boxed 5": a single token up to the next space or $
            m = re.match(r"[^\s$]{1,100}", text[k:k + 100])
            if m:
                yield start, k + m.end(), m.group(0)
        pos = start


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


# what may stand between two boxes of one answer: spaces, $ \( \) \[ \], \quad, commas, "and"/"or",
# "y_2 =", and \text{...} ("\boxed{(3,3)} \text{ for part (a) and } \boxed{(1,1)}"); never bare prose
_SEPARATORS = r"(?:\s|\$|\\[()\[\]]|\\q?quad|\\[,;:! ]|[,;]|\\text\{[^{}$]{0,40}\}|\b(?:and|or)\b)"
_BOX_GAP_RE = re.compile(rf"(?:{_SEPARATORS}|[a-zA-Z](?:_\{{?\w{{1,4}}\}}?)?\s*=)*")
_SPAN_GAP_RE = re.compile(rf"{_SEPARATORS}*")


def _final_boxes(text: str) -> tuple[int, str] | None:
    """(start, answer) of the last box joined with the boxes before it that only separators divide from it."""
    parts, start = [], None
    for s, e, content in _boxes(text):
        if parts and (start - e > 80 or not _BOX_GAP_RE.fullmatch(text, e, start)):
            break
        parts.append(content)
        start = s
        close = text.rfind("}", max(0, s - 81), s)  # no box can end just before this one: stop looking
        if close < 0 or not _BOX_GAP_RE.fullmatch(text, close + 1, s):
            break
    return (start, ", ".join(reversed(parts))) if parts else None


_PHRASE_HINT_RE = re.compile(r"answer|####", re.IGNORECASE)
_PHRASE_RE = re.compile(r"final answer|answer is|answer\s*:|####|answer(?=\s*(?:\$|\\\(|\\\[))", re.IGNORECASE)
# $$...$$ and \[...\] may span lines; $...$ and \(...\) may not ("Answer $ \n 9 \n $" is no answer)
_MATH_SPAN_RE = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\$((?:\\\$|[^$\n])+)\$|\\\(([^\n]+?)\\\)", re.DOTALL)
_SENTENCE_END_RE = re.compile(r"\n|<\||\.\s+(?=[A-Z])|\.\s*$")


def _answer_phrase(text: str) -> tuple[int, str] | None:
    """(start, answer) after the last answer phrase, or None. The answer is the rest of the phrase's sentence
    (which ends at a newline or at ". I hope it is correct"); its math spans, joined when only separators
    divide them; and after the last " is " outside math when prose names the quantity first ("The volume of
    $ABCD$ is 120")."""
    tail = text[-2_000:]
    last = None
    for last in _PHRASE_RE.finditer(tail):
        pass
    if last is None:
        return None
    region = re.sub(r"^\s*(?:is\b)?\s*[:=]?\s*", "", tail[last.end():last.end() + 500], flags=re.IGNORECASE)
    spans = list(_MATH_SPAN_RE.finditer(region))

    def in_math(i: int) -> bool:
        return any(m.start() < i < m.end() for m in spans)

    end = next((m.start() for m in _SENTENCE_END_RE.finditer(region) if not in_math(m.start())), len(region))
    spans = [m for m in spans if m.start() < end]
    cut = max((m.end() for m in re.finditer(r"\sis\s", region[:end]) if not in_math(m.start())), default=0)
    spans = [m for m in spans if m.start() >= cut]
    if not spans:
        answer = region[cut:end]
    elif all(_SPAN_GAP_RE.fullmatch(region, a.end(), b.start()) for a, b in zip(spans, spans[1:])):
        answer = ", ".join(next(g for g in m.groups() if g is not None) for m in spans)
    else:
        answer = next(g for g in spans[0].groups() if g is not None)
    answer = re.sub(r"\\[()\[\]]|\$", " ", answer).strip().rstrip(".").strip()
    return (len(text) - len(tail) + last.start(), answer[:MAX_ANSWER_CHARS]) if answer else None


# ------------------------------------------------------------------------------------------------ normalisation
_UNIT_WORDS = (
    "square units|sq units|units|unit|square feet|square inches|square meters|square centimeters|sq ft|square|"
    "cm|mm|km|centimeters|centimeter|meters|meter|metres|inches|inch|feet|foot|ft|yards|yard|miles|mile|mph|kmh|"
    "dollars|dollar|cents|cent|yuan|hours|hour|hrs|minutes|minute|mins|min|seconds|second|sec|days|day|"
    "weeks|week|months|month|years|year|kg|grams|gram|pounds|pound|lbs|liters|liter|litres|ml|"
    "degrees|degree|percentage|percent|pct|students|people|ways|points|integers|digits|meals|edges|multiples|"
    "cubic units"
)
_UNIT_RE = re.compile(r"(?<=[\d}).%])\s*(?:" + _UNIT_WORDS + r")(?:\^\{?[23]\}?)?\s*$", re.IGNORECASE)
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|textnormal|mbox|mathrm|mathbf|mathit|operatorname)\s*\{([^{}]*)\}")
_TRAILING_TEXT_RE = re.compile(r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\s*\{\s*[a-zA-Z][a-zA-Z .]*\}(?:\^\{?[23]\}?)?\s*$")
_ORDINAL_RE = re.compile(r"(?<=\d)\s*\^?\s*\{?\s*\\(?:mathrm|text)\s*\{\s*(?:st|nd|rd|th)\s*\}\s*\}?")
# a command written with a doubled backslash (text escaped once too often): \\frac -> \frac; a row break
# before a command is written \\ \frac or \\\frac, so this does not touch matrices
_DOUBLED_CMD_RE = re.compile(r"(?<!\\)\\\\(?=(?:[dtc]?frac|left|right|pi|sqrt|leq?|geq?|neq?|text|mathrm|boxed|cdot|"
                             r"times|infty|circ|pm|quad|in|cup)(?![a-zA-Z]))")
_LHS_RE = re.compile(r"^(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?[a-zA-Z0-9]+\}?)?(?:\([a-zA-Z0-9]\))?\s*(?:=|\\in)\s*")
_PLAIN_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SPACED_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?: \d{3})+(?:\.\d+)?")
_MIXED_RE = re.compile(r"(-?\d+)\s+(\d+)\s*/\s*(\d+)")  # a whole answer "7 3/4" (inside an expression: ambiguous)
_AND_OR_RE = re.compile(r"\s*(?<![A-Za-z\\])(?:and|or)(?![A-Za-z])\s*")


def normalize_answer(s: str | None) -> str:
    """Canonical string form of an answer. In order: cut to MAX_ANSWER_CHARS; undouble \\\\frac-style commands;
    unwrap the final \\boxed(es); drop $ \\( \\) \\[ \\] delimiters, ordinal suffixes and a trailing unit in
    \\text{}; unwrap \\text{} \\mbox{} \\mathrm{} ...; drop \\left \\right \\! \\, \\; \\: \\quad ~ and
    \\displaystyle; \\dfrac/\\tfrac/\\cfrac -> \\frac; relations to \\le \\ge \\ne < > (>=, \\geq, \\gt ...);
    "= a \\approx b" keeps the exact value; expand \\frac12 and \\sqrt2 shorthand; drop ^\\circ, "degrees",
    % and unit words after a number; drop a trailing period; drop thousands separators (1,000 1{,}000 1\\,000,
    but not "32, 349"); a whole answer "7 3/4" -> 7\\frac{3}{4}; "and", "or" and ";" separate list items;
    {1,2} is the set \\{1,2\\}; brackets around a single matrix go; drop a label on the left of one "="
    ("x =", "f(x) =", "(p,q) =", "AB =", "x \\in") unless keep_lhs; collapse spaces (one is kept only
    between two letters)."""
    s = as_text(s, "answer")
    if s is None:
        return ""
    return _normalize(str(s)[:MAX_ANSWER_CHARS])


@lru_cache(maxsize=1 << 16)
def _normalize(s: str, keep_lhs: bool = False) -> str:
    s = s.strip()
    if _PLAIN_NUMBER_RE.fullmatch(s):  # most golds and answers: nothing below would change them
        return s
    if "\\" in s:
        s = _DOUBLED_CMD_RE.sub(r"\\", s)
        if "\\boxed" in s or "\\fbox" in s:
            boxed = _final_boxes(s)
            s = boxed[1] if boxed else s
        s = re.sub(r"^(?:\\\\\s*)+", "", s)  # a line break before the answer
        s = s.replace("\\\\", "\x00")  # matrix row breaks: keep them out of the way of the single-\ rules
    s = re.sub(r"\\\$|\$|\\[()\[\]]", " ", s).strip()
    if "\\" in s:
        s = _ORDINAL_RE.sub("", s)
        s = _TRAILING_TEXT_RE.sub("", s)
        for _ in range(3):  # \text{\textbf{x}} nests at most a little in practice
            s = _TEXT_CMD_RE.sub(r"\1", s)
        s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])", "", s)
        s = re.sub(r",\\!\s*", ",", s)
        s = re.sub(r"\\[!,;: ]|\\q?quad|\\displaystyle", " ", s).replace("\\%", "%")
        s = re.sub(r"\\[dtc]frac", r"\\frac", s)
        s = re.sub(r"\\(ge|le|ne)q(?:slant)?(?![a-zA-Z])", r"\\\1", s)  # inequality answers: \geq -> \ge
        s = re.sub(r"\\lt(?![a-zA-Z])", "<", re.sub(r"\\gt(?![a-zA-Z])", ">", s))
        if "\\approx" in s:  # "x = 1/3 \approx 0.33" keeps the exact value; "x \approx 11" reads as "x = 11"
            s = s[:s.index("\\approx")] if "=" in s else s.replace("\\approx", "=", 1)
        s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
        s = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", s)
        s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\d)", r"\\frac\1{\2}", s)
        s = re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", s)
    s = s.replace("~", " ").replace(">=", "\\ge ").replace("<=", "\\le ").replace("!=", "\\ne ")
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°", "", s)
    for _ in range(2):  # "5 cm^2", "30 degrees", "12 %" (the percentage rule: % is dropped)
        s = _UNIT_RE.sub("", s).strip()
        s = s.rstrip("%").strip() if re.search(r"[\d}]\s*%$", s) else s
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"\{\s*,\s*\}", "", s)
    if _THOUSANDS_RE.fullmatch(s) or _SPACED_THOUSANDS_RE.fullmatch(s):
        s = s.replace(" ", "").replace(",", "")
    m = _MIXED_RE.fullmatch(s)
    if m and int(m[2]) < int(m[3]):
        s = f"{m[1]}\\frac{{{m[2]}}}{{{m[3]}}}"
    s = _AND_OR_RE.sub(",", s).replace(";", ",")
    s = re.sub(r"(?:\s*,)+", ",", s).strip(", ")
    if len(s) > 2 and s[0] == "{" and s[-1] == "}" and _wraps(s[1:-1]):  # {1,2,3}: braces as a set
        s = "\\{" + s[1:-1] + "\\}" if len(_split_top(s[1:-1], ",")) > 1 else s[1:-1]
    m = re.fullmatch(r"[(\[]\s*(\\begin\{(\w+)\}.*\\end\{\2\})\s*[)\]]", s, re.DOTALL)
    if m:  # (\begin{pmatrix}...\end{pmatrix}) is the matrix
        s = m.group(1)
    if not keep_lhs:
        s = _drop_label(s)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"(?<![a-zA-Z]) | (?![a-zA-Z])", "", s)
    return s.replace("\x00", "\\\\")


def _drop_label(s: str) -> str:
    """The right side of an answer whose left side only names it: "x = 3", "f(x) = 2x", "x \\in [1,2]",
    "(p,q) = (3,2)", "AB = 4", "\\frac{NO}{BO} = \\frac{1}{2}", "2+3 = 5" (a computation and its result)."""
    if "\\in" in s[:12]:
        return _LHS_RE.sub("", s, count=1)
    if s.count("=") != 1:
        return s
    lhs, rhs = (part.strip() for part in s.split("="))
    if not rhs or _split_relation(lhs) or _split_relation(rhs):
        return s
    if _LHS_RE.match(s):
        return rhs
    constant = not re.search(r"[A-Za-z]", re.sub(r"\\[a-zA-Z]+", "", rhs))  # no variables, no words
    # a name: letters and |:(),/ only, marked as a label by a capital (AB), a bracket, a bar, a ratio, a
    # subscript or a fraction, naming a constant; "xy = 1" is a curve and "MR = SRMC" a condition, not labels
    name = re.sub(r"_\{[^{}]*\}|_\w|\\frac|\\angle|\\overline|\\triangle", "", lhs)
    if (constant and re.fullmatch(r"[A-Za-z{}|:(),\s/]*[A-Za-z][A-Za-z{}|:(),\s/]*", name)
            and (name != lhs or re.search(r"[A-Z(|:]", name))):
        return rhs
    if lhs and constant and not re.search(r"[A-Za-z]", re.sub(r"\\[a-zA-Z]+", "", lhs)):
        return rhs
    return s


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
        a, b = _structure(p), _structure(g)
        if (a[0] == "rel") != (b[0] == "rel"):  # "y = 2x+1" lost its label, "2x-y+1 = 0" kept it: retry whole
            a_eq = _structure(_normalize(as_text(pred, "answer")[:MAX_ANSWER_CHARS], True), True)
            b_eq = _structure(_normalize(as_text(gold, "answer")[:MAX_ANSWER_CHARS], True), True)
            if a_eq[0] == b_eq[0] == "rel":
                return _structures_equiv(a_eq, b_eq)
        return _structures_equiv(a, b)
    except (_ParseError, RecursionError):
        return False


def verify(completion: str | None, gold: str | None) -> bool:
    """Does the completion's final answer match the reference answer? An empty gold never rewards."""
    if gold is None or not normalize_answer(gold):
        warnings.warn(f"gold answer {str(gold)[:80]!r} is empty after normalisation; no completion is rewarded",
                      stacklevel=2)
        return False
    return is_equiv(extract_answer(completion), gold)


def math_reward(completion: str | None, gold: str | None) -> float:
    """1.0 if the completion's final answer is correct, else 0.0 (the GRPO reward)."""
    return 1.0 if verify(completion, gold) else 0.0


def answer_kind(answer: str | None) -> str:
    """One of number, expression, relation, tuple, interval, set, list, matrix, choice, text, empty."""
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
    return {"rel": "relation"}.get(st[0], st[0])


def gold_parse_report(golds, n_examples: int = 5) -> dict:
    """Counts of reference answers by kind; how many did not parse as math (text, empty), their indices in
    `golds` (the quality stage labels those problems suspect) and the first examples of them. Text golds
    are still graded (case-insensitive string match); empty ones never reward."""
    golds = list(golds)
    counts: dict[str, int] = {}
    unparsed_indices: list[int] = []
    for i, g in enumerate(golds):
        kind = answer_kind(g)
        counts[kind] = counts.get(kind, 0) + 1
        if kind in ("text", "empty"):
            unparsed_indices.append(i)
    return {"total": sum(counts.values()), "counts": counts, "unparsed": len(unparsed_indices),
            "unparsed_indices": unparsed_indices, "examples": [str(golds[i]) for i in unparsed_indices[:n_examples]]}


@lru_cache(maxsize=1 << 16)
def _structure(s: str, keep_lhs: bool = False):
    """Split a normalised answer into ("matrix", rows) | ("bracketed", open, close, items) | ("set", items) |
    ("list", items) | ("union", parts) | ("rel", ops, member_asts, text) | ("scalar", ast_or_None, text).
    Items are structures themselves; an item "a \\pm b" is the two items a+b and a-b."""
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
        return ("set", tuple(_structure(p) for p in _expand_pm(_split_top(s[2:-2], ","))))
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _wraps(s[1:-1]):
        items = _split_top(s[1:-1], ",")
        if len(items) > 1:
            return ("bracketed", s[0], s[-1], tuple(_structure(p) for p in items))
    items = _expand_pm(_split_top(s, ","))
    if len(items) > 1:
        return ("list", tuple(_structure(p) for p in items))
    return _scalar(s, keep_lhs)


def _expand_pm(items: list[str]) -> list[str]:
    out = []
    for item in items:
        out += [item.replace("\\pm", "+"), item.replace("\\pm", "-")] if item.count("\\pm") == 1 else [item]
    return out


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


def _scalar(s: str, keep_lhs: bool = False):
    s = s.strip() if keep_lhs else _drop_label(s.strip())  # "x=3" inside a list or tuple item
    relation = _split_relation(s)
    try:
        if relation:
            return ("rel", relation[1], tuple(_parse(m) for m in relation[0]), s)
        return ("scalar", _parse(s), s)
    except _ParseError:
        return ("scalar", None, s)


_REL_RE = re.compile(r"\\(?:le|ge|ne)(?![a-zA-Z])|[<>=]")
_FLIP = {">": "<", "\\ge": "\\le", "<": ">", "\\le": "\\ge", "=": "=", "\\ne": "\\ne"}


def _split_relation(s: str) -> tuple[list[str], tuple[str, ...]] | None:
    """Members and operators of a relation (x < 3, 2x+4y-3 = 0, -793 < a < 10) at bracket depth 0, or None."""
    members, ops, depth, start, i = [], [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and (m := _REL_RE.match(s, i)):
            members.append(s[start:i])
            ops.append(m.group(0))
            i = start = m.end()
            continue
        elif c == "\\":
            i += 1
        i += 1
    if not ops or len(ops) > 2:
        return None
    return [*members, s[start:]], tuple(ops)


def _structures_equiv(a, b) -> bool:
    if a[0] == "matrix" and b[0] == "matrix":
        return len(a[1]) == len(b[1]) and all(
            len(ra) == len(rb) and all(map(_structures_equiv, ra, rb)) for ra, rb in zip(a[1], b[1]))
    if "rel" in (a[0], b[0]):
        if a[0] == b[0]:
            return _relations_equiv(a, b)
        interval = _as_interval(a if a[0] == "rel" else b)  # -793 < a < 10 is the interval (-793, 10)
        other = b if a[0] == "rel" else a
        return interval is not None and other[0] in ("bracketed", "union") and _structures_equiv(interval, other)
    if {a[0], b[0]} == {"set", "list"}:  # \{1,2\} and "1, 2": both order-free
        return _multiset_equiv(a[1], b[1])
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


def _relations_equiv(a, b) -> bool:
    """Same relation: the operators agree (x > 5 is 5 < x) and, for one operator, the sides' differences are
    proportional (2x+4y-3 = 0 is y = -x/2 + 3/4; the factor must be positive for <, <=); chains agree member
    by member."""
    (ops_a, xs), (ops_b, ys) = _oriented(a), _oriented(b)
    if ops_a != ops_b or len(xs) != len(ys):
        return False
    if len(xs) == 2:
        return _proportional(("sub", xs[0], xs[1]), ("sub", ys[0], ys[1]), positive=ops_a[0] not in ("=", "\\ne"))
    return all(_asts_equiv(x, y, "", "") for x, y in zip(xs, ys))


def _oriented(rel):
    _, ops, members, _ = rel
    if all(op in (">", "\\ge") for op in ops):
        return tuple(_FLIP[op] for op in reversed(ops)), members[::-1]
    return ops, members


def _as_interval(rel):
    """The interval a relation in one variable describes (x <= 3, -2 <= x <= 7, 0 < f(x) < 1), or None."""
    ops, members = _oriented(rel)
    if not all(op in ("<", "\\le") for op in ops):
        return None
    infinity = ("const", math.inf)
    if len(members) == 2:
        has_var = [bool(_free_vars(m)) for m in members]
        if has_var == [True, False]:
            members, ops = (("neg", infinity), *members), ("<", *ops)
        elif has_var == [False, True]:
            members, ops = (*members, infinity), (*ops, "<")
        else:
            return None
    low, middle, high = members
    if _free_vars(low) or _free_vars(high) or not _free_vars(middle):
        return None
    return ("bracketed", "(" if ops[0] == "<" else "[", ")" if ops[1] == "<" else "]",
            (("scalar", low, repr(low)), ("scalar", high, repr(high))))


def _proportional(da, db, *, positive: bool) -> bool:
    names = _free_vars(da)
    if not names or names != _free_vars(db):
        return False
    ratio, compared = None, 0
    for env in _points(sorted(names)):
        va, vb = _try_value(da, env), _try_value(db, env)
        if (va is None) != (vb is None):
            return False
        if va is None:
            continue
        zero_a, zero_b = _close(va, Fraction(0), points=True), _close(vb, Fraction(0), points=True)
        if zero_a or zero_b:
            if zero_a != zero_b:
                return False
            continue
        r = va / vb
        if ratio is None:
            ratio = r
            if positive and r < 0:
                return False
        elif not _close(r, ratio, points=True):
            return False
        compared += 1
    return compared >= 2


_LONG_DECIMAL_RE = re.compile(r"-?\d*\.(\d+)")


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
    return _asts_equiv(ast_a, ast_b, text_a, text_b)


def _asts_equiv(ast_a, ast_b, text_a: str, text_b: str) -> bool:
    vars_a, vars_b = _free_vars(ast_a), _free_vars(ast_b)
    if vars_a != vars_b:
        return False
    try:
        if vars_a:
            return _equal_at_points(ast_a, ast_b, sorted(vars_a))
        va, vb = _value(ast_a, {}), _value(ast_b, {})
        digits = max(_significant_digits(text_a), _significant_digits(text_b))
        if digits >= 10:  # a float printout (0.0833333333333333 for 1/12): equal to its printed precision
            return math.isclose(float(va), float(vb), rel_tol=10.0 ** (1 - digits), abs_tol=0.0)
        return _close(va, vb, points=False)
    except (_Undefined, _ParseError, OverflowError, ZeroDivisionError, ValueError, RecursionError):
        return False


def _significant_digits(text: str) -> int:
    """Significant digits of a plain decimal such as 0.0833333333333333 (15); 0 for anything else."""
    if not _LONG_DECIMAL_RE.fullmatch(text):
        return 0
    return len(text.lstrip("-").replace(".", "").lstrip("0"))


def _choice(text: str) -> str | None:
    """Multiple-choice letter: "(B)", "B", "B)" or "(B) 12" -> "B"; None for anything else."""
    m = re.fullmatch(r"\(?([A-Ea-e])\)(?:\s*\S.*)?|\(?([A-E])\)?", text)
    return (m.group(1) or m.group(2)).upper() if m else None


def _points(names: list[str]):
    """N_POINTS environments of distinct, non-integer, mixed-sign values, so that e.g. x and |x| or x^2 and 2x
    differ somewhere."""
    for p in range(N_POINTS):
        yield {n: Fraction(13 + 17 * p + 7 * j, 10 + j) * (-1 if (p + j) % 3 == 2 else 1) for j, n in enumerate(names)}


def _try_value(node, env: dict):
    try:
        return _value(node, env)
    except (_Undefined, ZeroDivisionError, ValueError, OverflowError):
        return None


def _equal_at_points(ast_a, ast_b, names: list[str]) -> bool:
    compared = 0
    for env in _points(names):
        va, vb = _try_value(ast_a, env), _try_value(ast_b, env)
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
