"""Specification of latex_math.py: the bounded LaTeX arithmetic parser and evaluator. Every expected
value is worked by hand in the comment beside it (verifier.py's equivalence rules are specified in
test_verifier.py; here only the arithmetic)."""
import math
from fractions import Fraction

import pytest

from latex_math import (MAX_DEPTH, MAX_RESULT_BITS, MAX_TREE_HEIGHT, _free_vars, _int_root, _parse, _ParseError,
                        _Undefined, _value)


def value(text, **env):
    return _value(_parse(text), {k: Fraction(v) for k, v in env.items()})


@pytest.mark.parametrize("text, expected", [
    (r"\frac{1}{2}+\frac{1}{3}", Fraction(5, 6)),  # 3/6 + 2/6
    ("2+3*4", Fraction(14)),  # * before +
    ("-2^2", Fraction(-4)),  # ^ before unary minus: -(2^2)
    ("2^3^2", Fraction(512)),  # ^ is right-associative: 2^(3^2) = 2^9
    ("(1+2)(3+4)", Fraction(21)),  # juxtaposition multiplies: 3 * 7
    (r"3\cdot4", Fraction(12)),
    ("2^{-3}", Fraction(1, 8)),  # 1 / 2^3
    ("8^{2/3}", Fraction(4)),  # (cube root of 8)^2 = 2^2, exact
    (r"\sqrt[3]{-27}", Fraction(-3)),  # an odd root of a negative number: (-3)^3 = -27
    ("5!", Fraction(120)),  # 5*4*3*2*1
    (r"\binom{5}{2}", Fraction(10)),  # 5*4/2
    ("|3-5|", Fraction(2)),
    ("0.25", Fraction(1, 4)),  # decimals are exact
    ("1.5e3", Fraction(1500)),
])
def test_exact_values_by_hand(text, expected):
    got = value(text)
    assert isinstance(got, Fraction) and got == expected


@pytest.mark.parametrize("text, expected", [
    (r"\sqrt{12}", 2 * math.sqrt(3)),  # 12 = 4 * 3 is not a square: a float
    (r"\sin(\pi/6)", 0.5),
    (r"\log_{2}{8}", 3.0),  # 2^3 = 8
])
def test_inexact_values_are_floats_near_the_hand_value(text, expected):
    got = value(text)
    assert isinstance(got, float) and got == pytest.approx(expected, rel=1e-12)


def test_free_variables_are_found_and_bound_from_the_environment():
    tree = _parse("x^2+2xy")
    assert _free_vars(tree) == {"x", "y"}
    assert _value(tree, {"x": Fraction(3), "y": Fraction(1, 2)}) == Fraction(12)  # 9 + 2*3*(1/2)
    with pytest.raises(_Undefined, match="free variable"):
        _value(tree, {"x": Fraction(3)})


@pytest.mark.parametrize("text", ["1/0", "(-4)^{1/2}", "0^{-1}", "(1/2)!", r"\sqrt[0]{5}"])
def test_values_that_do_not_exist_raise_undefined(text):
    with pytest.raises(_Undefined):
        value(text)


def test_results_too_large_to_hold_raise_instead_of_computing():
    with pytest.raises(_Undefined):
        value(f"2^{{{MAX_RESULT_BITS * 4}}}")  # 80,000 bits
    with pytest.raises(_Undefined):
        value("3000!")  # factorials stop at 2000
    assert value("2^{100}") == Fraction(2 ** 100)  # below the bound: exact


@pytest.mark.parametrize("text", ["", "2+", "(1+2", r"\dfrac{3}{4}", "1 # 2"])
def test_text_that_is_not_arithmetic_raises_parse_error(text):
    with pytest.raises(_ParseError):
        _parse(text)


def test_nesting_and_chains_are_bounded():
    ok = "+".join(["1"] * (MAX_TREE_HEIGHT // 2))  # a chain of 100 additions nests the tree 100 deep
    assert value(ok) == MAX_TREE_HEIGHT // 2
    with pytest.raises(_ParseError, match="deeper"):
        _parse("+".join(["1"] * (MAX_TREE_HEIGHT + 5)))
    with pytest.raises(_ParseError):
        _parse("(" * (MAX_DEPTH + 5) + "1" + ")" * (MAX_DEPTH + 5))


def test_integer_roots_are_exact_for_big_numbers():
    r = 12345678901234567890
    assert _int_root(r ** 3, 3) == r  # Newton on integers: no float rounding at 200 bits
    assert _int_root(r ** 3 + 1, 3) is None
    assert _int_root(2 ** 64 + 1, 2) is None and _int_root(2 ** 64, 2) == 2 ** 32
    assert [_int_root(x, 5) for x in (0, 1)] == [0, 1]
