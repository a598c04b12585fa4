"""bench/reading_path.py -- how many lines a reader reads to follow the method end to end.

    python bench/reading_path.py [--rev REV] [--out bench/results/reading_path.json]

The reader's path (issue 21): the pipeline and its data operations (saerl.py), the schedule
(schedule.py), SAE encoding (sae.py up to SAE training, the layer choice, the SAE module of
sae_formats.py), the estimators' textbook half (estimators.py: k-means, ElasticNet, the probe; not
the metrics nor the speed-ups), the sampler (sampler.py) and the GRPO step (grpo.py up to "The
run", and the token log-probs it scores, logprobs.py). Not on it: config.py (every flag, its default
and its check: a reference the reader consults, not the method). Lines are counted as they stand, docstrings and comments included: a reader reads those too.
With --rev the same parts are counted at another commit (files that do not exist there count 0).
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (label, file, first line matching `start` (None: the top), up to the first later line matching `end` (None: the end))
PARTS = [
    ("the pipeline and the data operations", "saerl.py", None, None),
    ("the schedule", "schedule.py", None, r"^# The schedule file and the input checks"),
    ("SAE encoding", "sae.py", None, r"^def _activation_stream"),
    ("the hook layer", "sae.py", r"^def prompt_texts", r"^(class InputArgs|@dataclass)"),
    ("the SAE module", "sae_formats.py", None, r"^def _make_sae"),
    ("the estimators' textbook half", "estimators.py", r"^# Diversity: k-means", r"^# Metrics"),
    ("the sampler", "sampler.py", None, None),
    ("the GRPO step", "grpo.py", None, r"^# The run"),
    ("the token log-probs", "logprobs.py", None, None),
]


def read(path: str, rev: str | None) -> list[str] | None:
    if rev is None:
        file = ROOT / path
        return file.read_text().splitlines() if file.exists() else None
    shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], capture_output=True, text=True)
    return shown.stdout.splitlines() if shown.returncode == 0 else None


def span(lines: list[str], start: str | None, end: str | None) -> list[str]:
    first = 0 if start is None else next(i for i, line in enumerate(lines) if re.search(start, line))
    last = next((i for i, line in enumerate(lines[first + 1:], first + 1) if end and re.search(end, line)), len(lines))
    return lines[first:last]


def count(rev: str | None = None) -> list[dict]:
    rows = []
    for label, path, start, end in PARTS:
        lines = read(path, rev)
        n = 0 if lines is None else len(span(lines, start, end))
        rows.append({"part": label, "file": path, "lines": n})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default=None, help="count at this git commit instead of the working tree")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "reading_path.json"))
    args = ap.parse_args()
    rows = count(args.rev)
    total = sum(r["lines"] for r in rows)
    print("| part | file | lines |\n|---|---|---:|")
    for r in rows:
        print(f"| {r['part']} | `{r['file']}` | {r['lines']} |")
    print(f"| **total** | | **{total}** |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rev": args.rev or "working tree", "parts": rows, "total": total},
                                         indent=1) + "\n")


if __name__ == "__main__":
    main()
