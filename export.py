"""export.py -- SAERL's engineered order as a dataset another RL trainer reads, one row per problem, in order.
Imports: the standard library (pyarrow lazily, for verl's parquet); from this project data, runtime, schedule.

    export_rows(problems, batches, fmt, template)    the rows, TRL's or verl's format, in training order
    export_run(run_dir, fmt)                         a run folder's schedule.jsonl -> run_dir/export/<fmt>.jsonl
    python export.py RUN_DIR --format trl|verl       the same from the command line; `saerl.py --export trl`
                                                     writes it after the schedule stage

Row k of the file is the k-th problem SAERL trains on: batch `step` of schedule.jsonl, `position` in that
batch. A trainer that reads the rows in file order, B prompts per step (B = SAERL's --batch-size), trains
SAERL's batches in SAERL's order; only the epoch's last, shorter batch may be dropped or merged. Each row
carries the problem's text (rendered as the run's prompt template, data.prompt_messages), its reference
answer and its SAERL id, so nothing has to be looked up in the source dataset.

    trl   {"prompt": [messages], "solution": answer, "answer": answer, "id", "step", "position"}
          TRL's conversational prompt format; GRPOTrainer hands the other columns to reward functions
          (examples/trl_saerl_order.py keeps the order: GRPOConfig(shuffle_dataset=False))
    verl  {"data_source", "prompt": [messages], "ability": "math",
           "reward_model": {"style": "rule", "ground_truth": answer},
           "extra_info": {"index": k, "id", "step", "position"}}
          verl's RL dataset rows, as .jsonl and, when pyarrow is importable, .parquet (verl's usual input);
          data_source is the problem's own (a verl dataset read back keeps its reward routing), else its
          file name (examples/verl_saerl_sampler.py: a sampler in this order and a reward with SAERL's judge)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data import Problem, load_problems, prompt_messages
from runtime import DataError, atomic_path, write_jsonl
from schedule import read_schedule

FORMATS = ("trl", "verl")


def export_rows(problems: list[Problem], batches: list[list[str]], fmt: str, template: str, *,
                data_source: str = "saerl") -> list[dict]:
    """One row per scheduled problem, ordered by (step, position in the batch); fmt is trl or verl. verl's
    data_source is the problem's own field where it has one, else `data_source` (the training data's name)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    by_id = {p.id: p for p in problems}
    rows = []
    for step, batch in enumerate(batches):
        for position, pid in enumerate(batch):
            if pid not in by_id:
                raise DataError(f"schedule step {step} names problem id {pid!r}, which is not among the run's "
                                f"{len(problems)} problems")
            p = by_id[pid]
            prompt = prompt_messages(p, template)
            if fmt == "trl":
                rows.append({"prompt": prompt, "solution": p.answer, "answer": p.answer, "id": pid, "step": step,
                             "position": position})
                continue
            if isinstance(prompt, str):  # verl renders every prompt through the tokenizer's chat template
                raise ValueError("verl's rows hold a chat; template 'plain' has none: export with qwen-math, chatml "
                                 "or chat")
            source = p.meta.get("data_source")
            rows.append({"data_source": source if isinstance(source, str) else data_source,
                         "prompt": prompt, "ability": "math",
                         "reward_model": {"style": "rule", "ground_truth": p.answer},
                         "extra_info": {"index": len(rows), "id": pid, "step": step, "position": position}})
    return rows


def export_run(run_dir, fmt: str, *, template: str | None = None) -> list[Path]:
    """run_dir/export/<fmt>.jsonl (and verl.parquet where pyarrow imports) from the run's problems.jsonl and
    schedule.jsonl (the engineered epoch); the template defaults to the run's own (config.json). Returns the
    files written."""
    run_dir = Path(run_dir)
    for name in ("problems.jsonl", "schedule.jsonl"):
        if not (run_dir / name).is_file():
            raise DataError(f"{run_dir} has no {name}: run saerl.py up to its schedule stage first "
                            "(--stage schedule)")
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    template = template or config.get("grpo", {}).get("template", "qwen-math")
    source = Path(str(config.get("pipeline", {}).get("train_data") or "saerl")).name
    problems = load_problems(run_dir / "problems.jsonl", verbose=False)
    rows = export_rows(problems, read_schedule(run_dir / "schedule.jsonl"), fmt, template, data_source=source)
    out = run_dir / "export" / f"{fmt}.jsonl"
    write_jsonl(out, rows)
    written = [out]
    if fmt == "verl":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            print(f"[export] pyarrow is not installed: wrote {out} only (verl reads .jsonl too; pip install "
                  "pyarrow for .parquet)", file=sys.stderr)
        else:
            with atomic_path(out.with_suffix(".parquet")) as tmp:
                pq.write_table(pa.Table.from_pylist(rows), tmp)
            written.append(out.with_suffix(".parquet"))
    return written


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="export.py", description="A SAERL run's engineered order as a TRL or verl "
                                 "dataset, rows in training order (written to RUN_DIR/export/).")
    ap.add_argument("run_dir", help="a saerl.py run folder holding problems.jsonl and schedule.jsonl")
    ap.add_argument("--format", required=True, choices=FORMATS, help="the trainer whose dataset format to write")
    ap.add_argument("--template", default=None, help="prompt template (default: the run's, from its config.json)")
    args = ap.parse_args(argv)
    for path in export_run(args.run_dir, args.format, template=args.template):
        print(path)


if __name__ == "__main__":
    main()
