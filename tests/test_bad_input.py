"""Bad input never passes silently (issue 24): data.load_problems fed random corruptions of real rows.

Each case writes a handful of real rows (copied from ../shared/data: MATH, GSM8K, AMC23, OlympiadBench,
Minerva, AIME; their schemas differ as real files do), corrupts them (bytes flipped, lines cut or joined,
fields dropped, types changed, garbage and blank lines inserted, a byte-order mark, CRLF endings, a
runaway problem text) and loads the file. Either it loads, and then every untouched row is there with its
problem text and answer and every other row is accounted for in the report; or it fails with a one-line
DataError naming the file and a row (or line). Never another exception.
"""
import json
import random
import re
import time

import pytest

from data import MAX_PROBLEM_CHARS, load_problems_report
from runtime import DataError

ROWS = [
    {"problem": "Evaluate $\\log_464$.", "answer": "3", "difficulty": 2.0, "type": "Algebra"},
    {"problem": "Evaluate: $(2^2)^3$.", "answer": "64", "difficulty": 1.0, "type": "Algebra"},
    {"question": "John arm wrestles 20 people.  He beats 80%.  How many people did he lose to?",
     "answer": "He beats 20*.8=<<20*.8=16>>16 people\nSo he loses to 20-16=<<20-16=4>>4 people\n#### 4", "idx": 305},
    {"id": 18, "problem": "How many positive perfect squares less than $2023$ are divisible by $5$?", "answer": 8.0,
     "url": "https://artofproblemsolving.com/wiki/index.php/2023_AMC_12A_Problems/Problem_3",
     "question": "How many positive perfect squares less than $2023$ are divisible by $5$?"},
    {"id": 3091, "subfield": "Algebra", "context": None,
     "solution": ["Multiplying, $(-T-i)(i-T)=-(i+T)(i-T)=-\\left(i^{2}-T^{2}\\right)=1+T^{2}$. "
                  "With $T=2,1+T^{2}=\\mathbf{5}$."], "is_multiple_answer": False, "unit": None,
     "answer_type": "Numerical", "error": None,
     "problem": "Let $T=2$. Compute the product of $-T-i$ and $i-T$, where $i=\\sqrt{-1}$.", "answer": ["5"]},
    {"problem": "How many up quarks does a tritium ($H^3$) nucleus contain?", "solution": "\\boxed{4}.",
     "type": "Relativity (8.033 Fall 2006)", "idx": 142, "answer": ["4\n", "4"]},
    {"problem": "Find the sum of all positive two-digit integers that are divisible by each of their digits.",
     "solution": "Using casework, we can list out all of these numbers: "
                 "\\[11+12+15+22+24+33+36+44+48+55+66+77+88+99=\\boxed{630}.\\]",
     "answer": "630", "year": 2001, "aime_number": 1, "problem_number": 1, "difficulty": 2.0},
    {"problem": "Café: what is $\\frac{1}{2}+\\frac{1}{2}$? (réponse en entier)", "answer": "1"},
]
# (problem text, answer) each row loads as, read off the rows above by hand (GSM8K: after ####; AMC's 8.0 is
# "8"; a one-element list is its element; Minerva's ["4\n", "4"] is its first form, stripped)
EXPECTED = [
    ("Evaluate $\\log_464$.", "3"),
    ("Evaluate: $(2^2)^3$.", "64"),
    ("John arm wrestles 20 people.  He beats 80%.  How many people did he lose to?", "4"),
    ("How many positive perfect squares less than $2023$ are divisible by $5$?", "8"),
    ("Let $T=2$. Compute the product of $-T-i$ and $i-T$, where $i=\\sqrt{-1}$.", "5"),
    ("How many up quarks does a tritium ($H^3$) nucleus contain?", "4"),
    ("Find the sum of all positive two-digit integers that are divisible by each of their digits.", "630"),
    ("Café: what is $\\frac{1}{2}+\\frac{1}{2}$? (réponse en entier)", "1"),
]
ODD_VALUES = [None, 0, -1, 1.5, 10 ** 400, float("nan"), True, "", " ", [], ["x", ["y"]], {}, {"a": 1}, "\x00",
              "x" * (MAX_PROBLEM_CHARS + 1)]


def test_real_rows_load_as_expected(tmp_path):
    """The reference the fuzz test compares against: the uncorrupted file loads every row."""
    path = tmp_path / "real.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    problems, report = load_problems_report(path, verbose=False)
    assert [(p.problem, p.answer) for p in problems] == EXPECTED
    assert report["bad"] == report["duplicates"] == report["renamed_ids"] == []


class Corrupted:
    """ROWS as JSONL lines, corrupted step by step; remembers which original rows were touched."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in ROWS]
        self.origin = list(range(len(ROWS)))  # the ROWS index each line holds, None for inserted lines
        self.touched, self.ops = set(), []
        self.bom = self.crlf = False

    def line(self) -> int:
        return self.rng.randrange(len(self.lines))

    def touch(self, k: int) -> None:
        if self.origin[k] is not None:
            self.touched.add(self.origin[k])

    def insert(self, k: int, line: bytes) -> None:
        self.lines.insert(k, line)
        self.origin.insert(k, None)

    def flip_bytes(self):
        k = self.line()
        b = bytearray(self.lines[k])
        for _ in range(self.rng.randint(1, 3)):
            if b:
                b[self.rng.randrange(len(b))] ^= self.rng.randint(1, 255)
        self.lines[k] = bytes(b)
        self.touch(k)

    def cut_line(self):
        k = self.line()
        self.lines[k] = self.lines[k][:self.rng.randrange(len(self.lines[k]) + 1)]
        self.touch(k)

    def join_lines(self):
        k = self.line()
        if k + 1 < len(self.lines):
            self.touch(k), self.touch(k + 1)
            self.lines[k:k + 2] = [self.lines[k] + self.lines[k + 1]]
            self.origin[k:k + 2] = [None]

    def _edit_row(self, edit):
        k = self.line()
        try:
            row = json.loads(self.lines[k])
        except (ValueError, RecursionError):  # already corrupted beyond JSON, or a garbage line
            return
        if isinstance(row, dict) and row:
            edit(row, self.rng.choice(sorted(row)))
            self.lines[k] = json.dumps(row, ensure_ascii=False).encode("utf-8")
            self.touch(k)

    def drop_field(self):
        self._edit_row(lambda row, key: row.pop(key))

    def change_type(self):
        self._edit_row(lambda row, key: row.__setitem__(key, self.rng.choice(ODD_VALUES)))

    def insert_garbage(self):
        garbage = self.rng.choice([
            bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 40))).replace(b"\n", b" "),
            b"[" * 100_000, b"1" * 5_000, b'"just a string"', b"[1, 2, 3]", b"null", b"{}",
            b'{"problem": "orphan with no answer"}', b"\xef\xbb\xbf{}", b"\x00\x00"])
        self.insert(self.rng.randrange(len(self.lines) + 1), garbage)

    def blank_line(self):
        self.insert(self.rng.randrange(len(self.lines) + 1), self.rng.choice([b"", b"   ", b"\t"]))

    def duplicate_row(self):
        k = self.line()
        self.insert(k + 1, self.lines[k])  # after the original: the untouched original is the one kept

    def byte_order_mark(self):
        self.bom = True

    def crlf_endings(self):
        self.crlf = True

    def apply(self, n_ops: int) -> "Corrupted":
        kinds = [self.flip_bytes, self.cut_line, self.join_lines, self.drop_field, self.change_type,
                 self.insert_garbage, self.blank_line, self.duplicate_row, self.byte_order_mark, self.crlf_endings]
        for _ in range(n_ops):
            op = self.rng.choice(kinds)
            self.ops.append(op.__name__)
            op()
        return self

    def data(self) -> bytes:
        end = b"\r\n" if self.crlf else b"\n"
        return (b"\xef\xbb\xbf" if self.bom else b"") + b"".join(line + end for line in self.lines)


def test_random_corruptions_load_or_fail_with_one_line_naming_file_and_row(tmp_path):
    rng = random.Random(24)
    outcomes = {"loaded": 0, "refused": 0}
    start = time.perf_counter()
    for case in range(200):
        corrupted = Corrupted(rng).apply(rng.randint(1, 3))
        path = tmp_path / f"case{case}.jsonl"
        path.write_bytes(corrupted.data())
        where = f"case {case} ({', '.join(corrupted.ops)})"
        try:
            problems, report = load_problems_report(path, verbose=False)
        except DataError as e:
            message = str(e)
            assert "\n" not in message, f"{where}: a multi-line error: {message!r}"
            assert path.name in message and re.search(r"\b(row|line) \d+", message), f"{where}: {message!r}"
            outcomes["refused"] += 1
            continue
        except Exception as e:  # noqa: BLE001 -- the point of the test: nothing else may escape
            pytest.fail(f"{where}: {type(e).__name__}: {e}")
        loaded = {(p.problem, p.answer) for p in problems}
        for i in set(range(len(ROWS))) - corrupted.touched:
            assert EXPECTED[i] in loaded, f"{where}: untouched row {EXPECTED[i][0]!r} did not load"
        assert len(problems) + len(report["bad"]) + len(report["duplicates"]) == report["rows"], \
            f"{where}: rows dropped without a report"
        assert len({p.id for p in problems}) == len(problems), f"{where}: ids not unique"
        assert all(isinstance(p.problem, str) and p.problem.strip() and len(p.problem) <= MAX_PROBLEM_CHARS
                   and isinstance(p.answer, str) and p.answer for p in problems), where
        outcomes["loaded"] += 1
    assert time.perf_counter() - start < 10.0
    assert outcomes["loaded"] > 100 and outcomes["refused"] > 5, outcomes  # both paths exercised


@pytest.mark.parametrize("corrupt", ["flip_bytes", "cut_line", "change_type"])
def test_a_corrupted_json_file_loads_or_fails_naming_file_and_line(tmp_path, corrupt):
    """A .json list file (no rows until it parses): the same corruptions, one error naming a line."""
    rng = random.Random(corrupt)
    for case in range(20):
        corrupted = Corrupted(rng)
        getattr(corrupted, corrupt)()
        path = tmp_path / f"case{case}.json"
        path.write_bytes(b"[\n" + b",\n".join(corrupted.lines) + b"\n]")
        try:
            problems, report = load_problems_report(path, verbose=False)
        except DataError as e:
            assert "\n" not in str(e) and path.name in str(e) and re.search(r"\b(row|line) \d+", str(e)), str(e)
            continue
        for i in set(range(len(ROWS))) - corrupted.touched:
            assert EXPECTED[i] in {(p.problem, p.answer) for p in problems}
        assert len(problems) + len(report["bad"]) + len(report["duplicates"]) == report["rows"]
