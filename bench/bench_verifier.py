"""Verifier agreement with the peers' own test cases, speed (calls/s), worst time on adversarial inputs, and,
where math-verify is installed, its figures on the same cases.

Peer cases: tests/verifier_peer_cases.jsonl (see tests/test_verifier_peers.py for where each comes from and how
both sides are read). Reported: agreement with the peers' expectations and false positives (we accept, the peer
rejects), on the cases whose expectation SAERL accepts and on all of them; the rejected cases with their reasons;
math-verify's agreement on the same cases (each side passed to its parse() as written; bare LaTeX answers of the
non-Math-Verify sources wrapped in $...$, as its README asks). Writes bench/results/verifier_peers.json.

Pairs (skip with --pairs 0) are built from the reference answers in ../shared/data (benchmarks + MATH train)
and perturbations whose verdict is known by construction: the gold itself, re-typeset forms (\\dfrac, "x =",
thousands separators, decimals of terminating fractions) are right; off-by-one integers, x10, and another
problem's answer are wrong. Each prediction is wrapped as a completion ("... \\boxed{pred}") and graded against the
gold. Prints a table and writes bench/results/verifier.json (atomic).

    python bench/bench_verifier.py [--pairs 4000] [--seed 0]
    python bench/bench_verifier.py --pairs 0     # peer cases, adversarial inputs and throughput only
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import random
import re
import sys
import time
import warnings
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import data  # noqa: E402
import runtime  # noqa: E402
import verifier as ev  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
PEER_CASES = REPO / "tests" / "verifier_peer_cases.jsonl"
TOWER = "5^{5^{5^{5}}}"
NESTED = "{" * 100_000 + "1" + "}" * 100_000
ADVERSARIAL = {  # tests/test_evaluate.py's inputs, plus runs aimed at the answer-phrase, box-joining and relation rules
    "tower": TOWER, "tower-boxed": f"\\boxed{{{TOWER}}}", "nested-braces": NESTED, "nested-boxed": "\\boxed" + NESTED,
    "megabyte-digits": "1" * 1_000_000, "megabyte-boxes": "\\boxed{" * 150_000, "megabyte-parens": "(" * 1_000_000,
    "huge-sci": "1e1000000", "huge-power": "10^{10^{6}}", "factorial": "100000!",
    "dollar-run": "The final answer is " + "$" * 100_000, "paren-delimiters": "The final answer is " + "\\(" * 50_000,
    "joined-boxes": "\\boxed{1} and " * 20_000, "relation-run": "x" + "<" * 100_000, "equals-run": "=" * 100_000,
    "pm-run": "\\pm" * 50_000, "and-run": " and 1" * 100_000, "phrase-run": "answer is " * 100_000,
    "sentence-run": "The final answer is " + "a. B" * 50_000, "mixed-number-run": "1 2/3 " * 50_000,
    "doubled-backslashes": "\\\\frac" * 100_000, "approx-run": "\\approx" * 50_000,
    "inequality-chain": "-1<x<" * 20_000 + "1", "brace-set": "{" + "1," * 100_000 + "1}",
    "million-digit-decimal": "0." + "3" * 1_000_000, "is-run": "final answer: " + " is $x$" * 50_000,
}


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


def read_answer(text: str) -> str:
    """As tests/test_verifier_peers.py reads each side: the marked final answer if any, else the text."""
    answer = ev.extract_answer(text)
    return answer if answer is not None else text


def math_verify_case_fn():
    """math-verify's verdict on a peer case (None when it is not installed), with the case's own options."""
    try:
        from math_verify import parse, verify
    except ImportError:
        return None

    def as_text(case, side):
        text = case[side]
        delimited = re.search(r"(?<!\\)\$|\\boxed|\\\(|\\\[", text)  # an escaped \$ is a dollar sign
        if case["source"] == "huggingface/Math-Verify" or delimited:
            return text
        return f"${text}$"

    def grade(case):
        config = case.get("config", {})
        options = {"float_rounding": config.get("precision", 6), "strict": config.get("strict", True),
                   "allow_set_relation_comp": config.get("allow_set_relation_comp", False)}
        try:
            return bool(verify(parse(as_text(case, "gold")), parse(as_text(case, "pred")), **options))
        except Exception:
            return False
    return grade


def agreement(cases, verdicts) -> dict:
    n = len(cases)
    return {"cases": n, "agreement": sum(v is c["expected"] for c, v in zip(cases, verdicts)) / n,
            "false_positives": sum(v and not c["expected"] for c, v in zip(cases, verdicts)),
            "false_negatives": sum(c["expected"] and not v for c, v in zip(cases, verdicts))}


def worst_adversarial_ms() -> tuple[float, str]:
    worst = (0.0, "")
    for name, text in ADVERSARIAL.items():
        for call in (lambda: ev.verify(text, "5"), lambda: ev.is_equiv(text, "3125"), lambda: ev.is_equiv("7", text),
                     lambda: ev.is_equiv(text, text + "1"), lambda: ev.math_reward(text, text)):
            clear_caches()
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an empty gold warns; not what is timed here
                call()
            worst = max(worst, (1000 * (time.perf_counter() - start), name))
    return worst


def peer_report(out: str) -> None:
    cases = [json.loads(line) for line in PEER_CASES.read_text().splitlines() if line.strip()]
    accepted = [c for c in cases if "reject" not in c]
    pairs = [(read_answer(c["pred"]), read_answer(c["gold"])) for c in cases]
    clear_caches()
    start = time.perf_counter()
    ours = [ev.is_equiv(p, g) for p, g in pairs]
    cold = len(cases) / (time.perf_counter() - start)
    start = time.perf_counter()
    for p, g in pairs:
        ev.is_equiv(p, g)
    warm = len(cases) / (time.perf_counter() - start)
    ours_of = dict(zip(map(id, cases), ours))
    worst_ms, worst_name = worst_adversarial_ms()
    result = {"machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
              "cases": len(cases), "accepted": len(accepted), "rejected": len(cases) - len(accepted),
              "ours_accepted": agreement(accepted, [ours_of[id(c)] for c in accepted]),
              "ours_all": agreement(cases, ours),
              "ours_is_equiv_calls_per_s_cold": cold, "ours_is_equiv_calls_per_s_warm": warm,
              "adversarial_worst_ms": worst_ms, "adversarial_worst_input": worst_name, "by_source": {},
              "gaps": [{"source": c["source"], "where": c["where"], "gold": c["gold"][-200:], "pred": c["pred"][-200:],
                        "expected": c["expected"], "gap": c.get("gap", "")}
                       for c in accepted if ours_of[id(c)] is not c["expected"]],
              "rejected_cases": [{"source": c["source"], "path": c["path"], "where": c["where"],
                                  "gold": c["gold"][-200:], "pred": c["pred"][-200:], "peer_expected": c["expected"],
                                  "ours": ours_of[id(c)], "reason": c["reject"]} for c in cases if "reject" in c]}
    grade = math_verify_case_fn()
    theirs_of = {}
    if grade is not None:
        theirs_of = {id(c): grade(c) for c in cases}
        result["math_verify_version"] = importlib.metadata.version("math-verify")
        result["math_verify_accepted"] = agreement(accepted, [theirs_of[id(c)] for c in accepted])
        result["math_verify_all"] = agreement(cases, [theirs_of[id(c)] for c in cases])
        result["math_verify_disagrees_on_accepted"] = [
            {"source": c["source"], "where": c["where"], "gold": c["gold"][-200:], "pred": c["pred"][-200:],
             "expected": c["expected"], "math_verify": theirs_of[id(c)]}
            for c in accepted if theirs_of[id(c)] is not c["expected"]]
    for source in dict.fromkeys(c["source"] for c in cases):
        mine = [c for c in accepted if c["source"] == source]
        row = {"cases": sum(c["source"] == source for c in cases), "accepted": len(mine),
               "ours": agreement(mine, [ours_of[id(c)] for c in mine])}
        if theirs_of:
            row["math_verify"] = agreement(mine, [theirs_of[id(c)] for c in mine])
        result["by_source"][source] = row

    fmt = lambda a: f"{100 * a['agreement']:.1f}% ({a['false_positives']} FP, {a['false_negatives']} FN)"  # noqa
    print(f"peer cases: {len(cases)}, accepted {len(accepted)}, rejected {len(cases) - len(accepted)}")
    print("\n| source | cases | accepted | ours | math-verify |\n|---|---:|---:|---|---|")
    for source, row in result["by_source"].items():
        print(f"| {source} | {row['cases']} | {row['accepted']} | {fmt(row['ours'])} | "
              f"{fmt(row['math_verify']) if 'math_verify' in row else '-'} |")
    print(f"| all accepted | {len(cases)} | {len(accepted)} | {fmt(result['ours_accepted'])} | "
          f"{fmt(result['math_verify_accepted']) if theirs_of else '-'} |")
    print(f"| all, rejected included | {len(cases)} | - | {fmt(result['ours_all'])} | "
          f"{fmt(result['math_verify_all']) if theirs_of else '-'} |")
    print(f"\nis_equiv: {cold:,.0f} calls/s cold, {warm:,.0f} warm; worst adversarial input: {worst_ms:.1f} ms "
          f"({worst_name})")
    print(f"\n{len(result['gaps'])} accepted cases we miss:")
    for g in result["gaps"]:
        print(f"  [{g['where']}] expected={g['expected']} gold={g['gold'][-60:]!r}: {g['gap']}")
    reasons: dict[str, int] = {}
    for c in result["rejected_cases"]:
        reasons[c["reason"]] = reasons.get(c["reason"], 0) + 1
    print(f"\n{len(result['rejected_cases'])} rejected expectations, by reason:")
    for reason, n in sorted(reasons.items(), key=lambda t: -t[1]):
        print(f"  {n:3d}  {reason[:150]}")
    runtime.atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


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
    parser.add_argument("--peers-out", default=str(REPO / "bench" / "results" / "verifier_peers.json"))
    args = parser.parse_args()

    peer_report(args.peers_out)
    if args.pairs <= 0:
        return
    print()

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
    runtime.atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
