"""bench/busy_machine.py -- `python saerl.py` on a quiet machine and beside busy background processes.

    python bench/busy_machine.py [--busy 2] [--runs 1] [--out bench/results/busy_machine.json]

A laptop or a shared node always has something else running. Loops of small tensor ops whose
OpenMP threads spin while they wait for each other stall whenever one core is taken (measured
before the fix on this 2-core machine: the toy run 1 min 57 s quiet, 16 min 43 s beside other jobs).
The entry points now set OMP_WAIT_POLICY=PASSIVE before torch loads (waiting threads sleep).

This runs the default toy pipeline (a fresh run folder each time, the toy world built once first
and reused, so each timed run is the pipeline itself) quiet, then with `--busy` processes that each
spin one core for as long as the run lasts, and prints the wall times, their ratio and each stage's
time (from the run's own report). `--wait-policy active` times the old behaviour for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def spinner() -> subprocess.Popen:
    """A process that keeps one core busy until it is killed (bounded: it exits after an hour)."""
    return subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3600: pass"])


def timed_run(out: Path, world: Path, env: dict) -> dict:
    cmd = [sys.executable, str(ROOT / "saerl.py"), "--out", str(out)]
    (out / "toy_world").symlink_to(world, target_is_directory=True)  # the same world, built once
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"saerl.py failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    line = next((l for l in proc.stderr.splitlines() if "stage times:" in l), "")
    stages = {name: float(s) for name, s in re.findall(r"(\w+) ([\d.]+) s", line.split("stage times:")[-1])}
    return {"seconds": seconds, "stages": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busy", type=int, default=2, help="background processes, each spinning one core")
    ap.add_argument("--runs", type=int, default=1, help="timed runs per condition")
    ap.add_argument("--wait-policy", default="passive", choices=("passive", "active"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "busy_machine.json"))
    ap.add_argument("--keep", default=None, help="copy the quiet run's folder here (its report, clusters, logs)")
    args = ap.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY=args.wait_policy.upper())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = tmp / "world"
        subprocess.run([sys.executable, str(ROOT / "toy.py"), "--out", str(world)], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        results = {"quiet": [], f"{args.busy} busy": []}
        for condition in results:
            for r in range(args.runs):
                procs = [spinner() for _ in range(args.busy)] if condition != "quiet" else []
                try:
                    out = tmp / f"{condition.replace(' ', '_')}_{r}"
                    out.mkdir()
                    results[condition].append(timed_run(out, world, env))
                finally:
                    for p in procs:
                        p.kill()
                        p.wait()
        if args.keep:
            shutil.copytree(tmp / "quiet_0" / "toy", args.keep, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("checkpoints", "cache", "*.safetensors", "sae"))
    quiet = min(x["seconds"] for x in results["quiet"])
    busy = min(x["seconds"] for x in results[f"{args.busy} busy"])
    stages = sorted({s for rows in results.values() for x in rows for s in x["stages"]},
                    key=lambda s: -results["quiet"][0]["stages"].get(s, 0))
    print(f"| condition (OMP_WAIT_POLICY={args.wait_policy.upper()}, {os.cpu_count()} cores) | wall s | "
          + " | ".join(stages) + " |")
    print("|---|---:|" + "---:|" * len(stages))
    for condition, rows in results.items():
        best = min(rows, key=lambda x: x["seconds"])
        print(f"| {condition} | {best['seconds']:.0f} | " + " | ".join(f"{best['stages'].get(s, 0):.1f}" for s in stages)
              + " |")
    print(f"busy / quiet: {busy / quiet:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"wait_policy": args.wait_policy, "cpus": os.cpu_count(),
                                          "busy_processes": args.busy, "results": results,
                                          "ratio": busy / quiet}, indent=1) + "\n")


if __name__ == "__main__":
    main()
