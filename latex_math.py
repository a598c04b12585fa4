"""latex_math.py -- a bounded recursive-descent parser and evaluator for the LaTeX arithmetic in math
answers (fractions, roots, powers, factorials, pi/e, trig and logs, free variables), for verifier.py.

Owns: _parse(text) -> AST, _value(AST, env) -> exact Fraction or float, _free_vars(AST). Imports only
the standard library. Model output is untrusted text: no eval/exec/sympify; nesting depth (MAX_DEPTH),
the height of the parsed tree (MAX_TREE_HEIGHT) and the size of exact results (MAX_RESULT_BITS) are
bounded, so every call returns in milliseconds.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction
from functools import lru_cache

MAX_DEPTH = 60  # parser nesting depth
MAX_TREE_HEIGHT = 200  # levels of a parsed expression (the evaluators recurse once or twice per level)
MAX_RESULT_BITS = 20_000  # exact powers / factorials / sci exponents beyond this size are not evaluated


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
    if _height(node) > MAX_TREE_HEIGHT:  # chains (1+1+...+1, 3!!!...!) nest the tree without nesting the text
        raise _ParseError(f"expression deeper than {MAX_TREE_HEIGHT} operations")
    return node


def _height(node) -> int:
    """Levels of an AST, counted with an explicit stack (a deep tree cannot exhaust Python's while it is
    measured), so that the recursive evaluators below only ever see trees of bounded height."""
    best, stack = 0, [(node, 1)]
    while stack:
        n, level = stack.pop()
        best = max(best, level)
        stack.extend((child, level + 1) for child in n[1:] if isinstance(child, tuple))
    return best


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
    if fa < 0:  # a real power of a negative base needs an odd root: (-a)^{p/q} = (-1)^p a^{p/q}
        if not (isinstance(b, Fraction) and b.denominator % 2 == 1):
            raise _Undefined("even root of a negative number")
        magnitude = _pow(-fa, b)
        return -magnitude if b.numerator % 2 else magnitude
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
