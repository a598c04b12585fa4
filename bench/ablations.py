"""bench/ablations.py -- which of SAERL's mechanisms help: the ablation grid in the toy world, one command.

    python bench/ablations.py [--seeds 5] [--variants all|NAME,...] [--out runs/ablations]
                              [--world runs/toy_world] [--json bench/results/ablations.json] [-- saerl.py flags]

Each seed s is one paired replicate: `python saerl.py --seed s` runs every data stage with seed s (the
SAE, the labelled subset, the probes, k-means: the data engineering's own variance is in the
interval) and trains vanilla GRPO and SAERL from the same warm start, evaluated on the same problems
with the same sampling seeds. Each variant then starts from a copy of that seed's run folder, so the
stages it does not change are read back from the cache, and trains one arm:

    saerl              the default (filter, clusters, easy-to-hard, --mix 0.25)
    filter-only        --schedule random: random order over the kept problems
    no-filter          --no-quality-filter
    no-curriculum      --no-curriculum: shuffled inside clusters
    no-clusters        --no-cluster: one cluster, a pure difficulty curriculum
    mix-0              --mix 0: pure cluster batches
    mixed              --schedule mixed: the same progress, every batch mixed over all clusters
    oracle-filter      --oracle filter: the known-bad rows dropped instead of the probe's lowest
    oracle-difficulty  --oracle difficulty: the true difficulty orders the curriculum
    oracle-clusters    --oracle clusters: the true topics are the clusters
    pace-budget        --pace budget: the step budget spread over each cluster's whole easy-to-hard range

Before any variant runs, a learnability check: vanilla must gain clearly over the seeds (the lower
end of the 95% t-interval of final minus starting accuracy above zero); otherwise the grid stops with
a non-zero exit, since arms cannot be compared where training does not move the policy. The result:
per variant, the final accuracy, its paired difference to vanilla (per seed over problems; over seeds
with a t-interval), steps to the target accuracy (interpolated; the target is --target, fixed before
the run) and the fraction of informative groups (rewards not all equal) per stretch of 10 steps. Writes
the JSON, <out>/report.md and <out>/differences.svg. Every run resumes: the same command after an
interruption picks up where it stopped (stage cache, arm checkpoints).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import report  # noqa: E402
import toy  # noqa: E402
from runtime import atomic_write_text, read_jsonl  # noqa: E402

VARIANTS = {  # name -> (saerl.py flags, the arm it trains)
    "saerl": ([], "saerl"),
    "filter-only": (["--schedule", "random"], "saerl-random"),
    "no-filter": (["--no-quality-filter"], "saerl"),
    "no-curriculum": (["--no-curriculum"], "saerl"),
    "no-clusters": (["--no-cluster"], "saerl"),
    "mix-0": (["--mix", "0"], "saerl"),
    "mixed": (["--schedule", "mixed"], "saerl-mixed"),
    "oracle-filter": (["--oracle", "filter"], "saerl"),
    "oracle-difficulty": (["--oracle", "difficulty"], "saerl"),
    "oracle-clusters": (["--oracle", "clusters"], "saerl"),
    "pace-budget": (["--pace", "budget"], "saerl"),
}
WINDOW = 10  # steps per stretch of the informative-groups table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="paired replicates (seeds 0..N-1)")
    ap.add_argument("--variants", default="all", help=f"all, or a comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--out", default="runs/ablations", help="the grid's run folders and report")
    ap.add_argument("--world", default="runs/toy_world", help="the toy world (built there if absent)")
    ap.add_argument("--target", type=float, default=None,
                    help="the accuracy whose first crossing is reported (fix it before the run)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "ablations.json"))
    ap.add_argument("extra", nargs="*", help="saerl.py flags for every run (after --)")
    args = ap.parse_args(argv)
    names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or args.seeds < 2:
        ap.error(f"--variants {args.variants}: unknown {unknown}" if unknown else
                 f"--seeds {args.seeds}: the intervals need at least 2 paired replicates")
    out = Path(args.out)
    world = toy.build_world(Path(args.world))
    common = ["--model", str(world.model_dir), "--train-data", str(world.train_path),
              "--benchmarks", f"toy={world.test_path}", "--preset", "toy", *args.extra]
    if args.target is not None:
        common += ["--target", str(args.target)]
    t0 = time.time()
    for seed in range(args.seeds):  # the base runs: every data stage, vanilla and SAERL
        run(common + ["--seed", str(seed), "--out", str(out / f"s{seed}"), "--name", "saerl"])
    result = {"seeds": args.seeds, "target": args.target, "flags": args.extra,
              "learnability": learnability(out, args.seeds)}
    print(json.dumps(result["learnability"]))
    if not result["learnability"]["passed"]:
        write(result, out, Path(args.json), {})
        print(f"ablations: LEARNABILITY CHECK FAILED: vanilla GRPO does not gain clearly over {args.seeds} seeds "
              f"({result['learnability']['text']}); arms are not compared where training does not move the "
              "policy. Change the world or the budget.", file=sys.stderr)
        return 1
    for name in names:
        if name == "saerl":
            continue
        flags, _ = VARIANTS[name]
        for seed in range(args.seeds):
            folder = out / f"s{seed}" / name
            if not folder.exists():  # the base run's data stages, read back from the cache where unchanged
                shutil.copytree(out / f"s{seed}" / "saerl", folder,
                                ignore=shutil.ignore_patterns("arms", "report.*", "run.lock"))
            run(common + flags + ["--seed", str(seed), "--out", str(out / f"s{seed}"), "--name", name,
                                  "--no-compare"])
    arms = {name: collect(out, name, args.seeds) for name in names}
    result["variants"] = summarise(arms, collect(out, "vanilla", args.seeds), args.target)
    result["seconds"] = round(time.time() - t0, 1)
    write(result, out, Path(args.json), arms)
    return 0


def run(cmd: list[str]) -> None:
    """One `python saerl.py` run; a failure stops the grid with its command line."""
    print("ablations: python saerl.py " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, str(ROOT / "saerl.py"), *cmd], cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"ablations: saerl.py exited {proc.returncode}: {' '.join(cmd)}")


def collect(out: Path, name: str, seeds: int) -> dict:
    """{seed: {"curve": [(step, acc)], "items": final per-problem scores, "informative": [per step]}} of one
    variant's arm ("vanilla": the base runs' vanilla arm)."""
    folder, arm = ("saerl", "vanilla") if name == "vanilla" else (name, VARIANTS[name][1])
    res = {}
    for seed in range(seeds):
        arm_dir = out / f"s{seed}" / folder / "arms" / f"{arm}-s{seed}"
        evals, train = read_jsonl(arm_dir / "eval_log.jsonl"), read_jsonl(arm_dir / "train_log.jsonl")
        res[seed] = {"curve": [(r["step"], r["mean"]) for r in evals], "items": evals[-1]["items"],
                     "informative": [1.0 - r["frac_zero_std"] for r in train]}
    return res


def learnability(out: Path, seeds: int) -> dict:
    """Vanilla's gain (final minus starting accuracy) over the seeds, and whether it is clear: the lower
    end of its 95% t-interval above zero."""
    gains = [run["curve"][-1][1] - run["curve"][0][1] for run in collect(out, "vanilla", seeds).values()]
    mean, low, high = report.mean_and_interval(gains)
    return {"gains": gains, "mean": mean, "low": low, "high": high, "passed": bool(low > 0),
            "text": f"gain {100 * mean:+.1f} points, 95% interval [{100 * low:+.1f}, {100 * high:+.1f}]"}


def summarise(arms: dict, vanilla: dict, target: float | None) -> dict:
    """Per variant: final accuracy, paired difference to vanilla, steps to target, informative groups."""
    out = {}
    for name, runs in {"vanilla": vanilla, **arms}.items():
        finals = [r["curve"][-1][1] for r in runs.values()]
        row = {"final": interval(finals)}
        if name != "vanilla":
            diffs = [float(np.mean(np.subtract(r["items"], vanilla[s]["items"]))) for s, r in runs.items()]
            row["paired_difference"] = interval(diffs)
        if target is not None:
            hits = [report.steps_to_target(r["curve"], target) for r in runs.values()]
            row["steps_to_target"] = {"per_seed": hits, **(interval([h for h in hits if h is not None])
                                                            if any(h is not None for h in hits) else {})}
        steps = min(len(r["informative"]) for r in runs.values())
        row["informative_groups"] = [float(np.mean([np.mean(r["informative"][a:a + WINDOW]) for r in runs.values()]))
                                     for a in range(0, steps, WINDOW)]
        out[name] = row
    return out


def interval(values: list[float]) -> dict:
    mean, low, high = report.mean_and_interval(values)
    return {"mean": mean, "low": low, "high": high, "values": values}


def write(result: dict, out: Path, json_path: Path, arms: dict) -> None:
    """The JSON, report.md and differences.svg (each arm minus vanilla, 95% intervals over seeds)."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(result, indent=1) + "\n")
    lines = ["# SAERL ablation grid (toy world)", "",
             f"{result['seeds']} paired seeds; learnability check: {result['learnability']['text']} "
             f"({'passed' if result['learnability']['passed'] else 'FAILED'}).", ""]
    variants = result.get("variants", {})
    if variants:
        lines += ["| variant | final accuracy | minus vanilla (points) | steps to target | informative groups per "
                  f"{WINDOW} steps |", "|---|---:|---:|---:|---|"]
        for name, row in variants.items():
            diff = row.get("paired_difference")
            stt = row.get("steps_to_target", {})
            lines.append(f"| {name} | {_ci(row['final'], 1, '.3f')} | {_ci(diff, 100, '+.1f') if diff else '-'} | "
                         f"{_ci(stt, 1, '.1f') if 'mean' in stt else '-'} | "
                         + " ".join(f"{x:.2f}" for x in row["informative_groups"]) + " |")
        rows = [(name, row["paired_difference"]) for name, row in variants.items() if "paired_difference" in row]
        atomic_write_text(out / "differences.svg", report.forest_svg(
            [(name, 100 * d["mean"], 100 * d["low"], 100 * d["high"]) for name, d in rows],
            axis="final accuracy minus vanilla (points), 95% interval over seeds"))
        lines += ["", "![each arm minus vanilla](differences.svg)", ""]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


def _ci(d: dict, scale: float, fmt: str) -> str:
    return f"{scale * d['mean']:{fmt}} [{scale * d['low']:{fmt}}, {scale * d['high']:{fmt}}]"


if __name__ == "__main__":
    sys.exit(main())
