"""Verifier speed (calls/s) and, where math-verify is installed, verdict agreement with it.

Pairs are built from the reference answers in ../shared/data (benchmarks + MATH train) and perturbations
whose verdict is known by construction: the gold itself, re-typeset forms (\\dfrac, "x =", thousands
separators, decimals of terminating fractions) are right; off-by-one integers, x10, and another problem's
answer are wrong. Each prediction is wrapped as a completion ("... \\boxed{pred}") and graded against the
gold. Prints a table and writes bench/results/verifier.json (atomic).

    python bench/bench_verifier.py [--pairs 4000] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import re
import sys
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import data  # noqa: E402
import verifier as ev  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def load_golds() -> list[str]:
    files = sorted((SHARED / "bench").glob("*.jsonl")) + [SHARED / "train" / "math_train.jsonl"]
    golds = []
    for path in files:
        if path.exists():
            golds += [p.answer for p in data.load_problems(path, verbose=False)]
    if not golds:
        raise SystemExit(f"no gold answers found under {SHARED}; this benchmark needs ../shared/data")
    return golds


def perturbations(gold: str, other: str) -> list[tuple[str, str, bool | None]]:
    """(kind, prediction, expected verdict) for one gold; expected None where construction cannot tell."""
    out = [("identity", gold, True), ("other-problem", other, None)]
    if "\\frac" in gold:
        out.append(("dfrac", gold.replace("\\frac", "\\dfrac"), True))
    if re.fullmatch(r"-?\d+", gold):
        value = int(gold)
        out += [("x-equals", f"x = {gold}", True), ("off-by-one", str(value + 1), False),
                ("times-ten", str(value * 10), False) if value else ("plus-two", str(value + 2), False)]
        if abs(value) >= 1000:
            out.append(("thousands", f"{value:,}", True))
        out.append(("degrees", f"{gold}^\\circ", True))
    if re.search(r"\\sqrt\{\d\}", gold):
        out.append(("sqrt-shorthand", re.sub(r"\\sqrt\{(\d)\}", r"\\sqrt \1", gold), True))
    # a bare answer list (order-free); not thousands separators "1,\!296" nor $-wrapped intervals
    if "," in gold and not re.search(r"[(\[$]|\\!|^\\", gold):
        out.append(("reordered-list", ", ".join(reversed(gold.split(","))), True))
    if re.fullmatch(r"[(\[][^()\[\]]*,[^()\[\]]*[)\]]", gold):  # an interval or tuple: bracket kinds matter
        out.append(("bracket-swap", gold[:-1] + (")" if gold[-1] == "]" else "]"), False))
    m = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", gold)
    if m and int(m.group(3)):
        out.append(("slash", f"{m.group(1)}{m.group(2)}/{m.group(3)}", True))
        whole, rest = divmod(int(m.group(2)), int(m.group(3)))
        if whole and rest and not m.group(1):
            out.append(("mixed-number", f"{whole}\\frac{{{rest}}}{{{m.group(3)}}}", True))
        value = Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
        den = value.denominator
        while den % 2 == 0:
            den //= 2
        while den % 5 == 0:
            den //= 5
        if den == 1:  # terminating decimal: exact
            out.append(("decimal", f"{float(value):.10g}", True))
        else:  # a rounded decimal of a repeating fraction is a near miss, not the answer
            out.append(("rounded", f"{float(value):.2f}", False))
    return out


def build_pairs(n_pairs: int, seed: int) -> list[dict]:
    golds = load_golds()
    rng = random.Random(seed)
    rng.shuffle(golds)
    pairs = []
    for gold in golds:
        other = golds[rng.randrange(len(golds))]
        for kind, pred, expected in perturbations(gold, other):
            pairs.append({"kind": kind, "gold": gold, "completion": f"So the answer is $\\boxed{{{pred}}}$.",
                          "expected": expected})
        if len(pairs) >= n_pairs:
            break
    return pairs[:n_pairs]


def clear_caches() -> None:
    for fn in (ev._normalize, ev._parse, ev._structure):
        fn.cache_clear()


def time_calls(fn, pairs) -> tuple[list[bool], float]:
    start = time.perf_counter()
    verdicts = [bool(fn(p["completion"], p["gold"])) for p in pairs]
    return verdicts, len(pairs) / (time.perf_counter() - start)


def math_verify_fn():
    try:
        from math_verify import parse, verify
    except ImportError:
        return None

    def grade(completion, gold):
        try:
            return verify(parse(f"${gold}$"), parse(completion))
        except Exception:
            return False
    return grade


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "verifier.json"))
    args = parser.parse_args()

    pairs = build_pairs(args.pairs, args.seed)
    clear_caches()
    ours, ours_cold = time_calls(ev.verify, pairs)
    _, ours_warm = time_calls(ev.verify, pairs)  # golds and answers seen before: the trainer's repeated golds
    integer_pairs = [p for p in pairs if re.fullmatch(r"-?\d+", p["gold"])]
    clear_caches()
    _, ours_int = time_calls(ev.verify, integer_pairs)
    result = {"machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
              "pairs": len(pairs), "ours_calls_per_s_cold": ours_cold, "ours_calls_per_s_warm": ours_warm,
              "ours_calls_per_s_integer_golds": ours_int, "kinds": {}}

    grade = math_verify_fn()
    theirs = None
    if grade is not None:
        theirs, theirs_rate = time_calls(grade, pairs)
        result["math_verify_calls_per_s"] = theirs_rate

    print(f"pairs: {len(pairs)}   ours: {ours_cold:,.0f} calls/s cold, {ours_warm:,.0f} warm, "
          f"{ours_int:,.0f} on integer golds" + (f"   math-verify: {theirs_rate:,.0f} calls/s" if theirs else
                                                 "   (math-verify not installed: pip install math-verify)"))
    print("\n| kind | pairs | expected | ours accept | ours right |"
          + (" math-verify accept | math-verify right | agree |" if theirs else ""))
    print("|---|---:|---|---:|---:|" + ("---:|---:|---:|" if theirs else ""))
    for kind in dict.fromkeys(p["kind"] for p in pairs):
        idx = [i for i, p in enumerate(pairs) if p["kind"] == kind]
        expected = pairs[idx[0]]["expected"]
        row = {"pairs": len(idx), "expected": expected, "ours_accept": sum(ours[i] for i in idx) / len(idx)}
        if expected is not None:
            row["ours_right"] = sum(ours[i] == expected for i in idx) / len(idx)
        if theirs:
            row["math_verify_accept"] = sum(theirs[i] for i in idx) / len(idx)
            row["agree"] = sum(ours[i] == theirs[i] for i in idx) / len(idx)
            if expected is not None:
                row["math_verify_right"] = sum(theirs[i] == expected for i in idx) / len(idx)
        result["kinds"][kind] = row
        fmt = lambda key: f"{100 * row[key]:.1f}%" if key in row else "-"  # noqa: E731
        print(f"| {kind} | {len(idx)} | {expected} | {fmt('ours_accept')} | {fmt('ours_right')} |"
              + (f" {fmt('math_verify_accept')} | {fmt('math_verify_right')} | {fmt('agree')} |" if theirs else ""))

    if theirs:
        disagreements = [{"kind": pairs[i]["kind"], "gold": pairs[i]["gold"],
                          "pred": ev.extract_answer(pairs[i]["completion"]), "ours": ours[i], "math_verify": theirs[i],
                          "expected": pairs[i]["expected"]} for i in range(len(pairs)) if ours[i] != theirs[i]]
        result["disagreements"] = disagreements
        print(f"\n{len(disagreements)} disagreements (first 25):")
        for d in disagreements[:25]:
            print(f"  [{d['kind']}] gold={d['gold']!r} pred={d['pred']!r} ours={d['ours']} "
                  f"math-verify={d['math_verify']} expected={d['expected']}")
    data.atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
