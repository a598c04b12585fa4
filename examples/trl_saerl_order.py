"""examples/trl_saerl_order.py -- GRPO with TRL's GRPOTrainer on SAERL's engineered order.

    python saerl.py --model M --stage schedule --export trl          # runs/<name>/export/trl.jsonl
    python examples/trl_saerl_order.py runs/<name>/export/trl.jsonl --model M --batch-size 64 --group-size 8

The exported rows are already in SAERL's order (export.py): step s of SAERL is rows [s*B, (s+1)*B).
Two settings keep TRL on that order:
  - GRPOConfig(shuffle_dataset=False): GRPOTrainer's sampler (RepeatSampler) otherwise permutes the rows;
    with it off the rows are read in file order (TRL drops a last batch shorter than B);
  - one generation batch = one optimizer step = B prompts x G completions: per_device_train_batch_size x
    gradient_accumulation_steps x processes = B*G, and steps_per_generation left at its default (the
    accumulation steps), so every step generates for, and learns from, exactly one SAERL batch.
The reward is SAERL's own judge (verifier.math_reward) on each completion against the row's `answer`, so a
TRL run and a SAERL run score alike. Needs `pip install trl` (tested with trl 1.16 in tests/test_export.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the SAERL repository: verifier.py

from verifier import math_reward  # noqa: E402


def saerl_reward(completions, answer, **_columns) -> list[float]:
    """TRL reward function: 1.0 where the completion's final answer equals the row's `answer`, else 0.0.
    TRL passes every extra dataset column by name (answer, id, step, ...); conversational completions are
    one-message lists, standard ones strings."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [math_reward(text, gold) for text, gold in zip(texts, answer)]


def build_trainer(data_path, model, *, batch_size: int, group_size: int, output_dir, reward_funcs=(saerl_reward,),
                  grad_accum: int = 1, **grpo_config):
    """A GRPOTrainer that trains the exported rows in file order, `batch_size` prompts per step."""
    from datasets import load_dataset
    from trl import GRPOConfig, GRPOTrainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    completions = batch_size * group_size
    if completions % (grad_accum * world):
        raise ValueError(f"batch_size x group_size = {completions} completions per step must divide by "
                         f"grad_accum x processes = {grad_accum * world}")
    config = GRPOConfig(**{"shuffle_dataset": False, **grpo_config}, output_dir=str(output_dir),
                        num_generations=group_size, per_device_train_batch_size=completions // (grad_accum * world),
                        gradient_accumulation_steps=grad_accum)
    dataset = load_dataset("json", data_files=str(data_path), split="train")
    return GRPOTrainer(model=model, reward_funcs=list(reward_funcs), args=config, train_dataset=dataset)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", help="export/trl.jsonl of a SAERL run (saerl.py --export trl)")
    ap.add_argument("--model", required=True, help="policy: a local folder or Hub id")
    ap.add_argument("--batch-size", type=int, default=64, help="prompts per step: SAERL's --batch-size")
    ap.add_argument("--group-size", type=int, default=8, help="completions per prompt (G)")
    ap.add_argument("--grad-accum", type=int, default=8, help="micro-batches per step")
    ap.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (-1: one pass)")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--max-completion-length", type=int, default=3000)
    ap.add_argument("--output-dir", default="runs/trl_saerl")
    args = ap.parse_args(argv)
    trainer = build_trainer(args.data, args.model, batch_size=args.batch_size, group_size=args.group_size,
                            grad_accum=args.grad_accum, output_dir=args.output_dir, max_steps=args.max_steps,
                            learning_rate=args.lr, max_completion_length=args.max_completion_length,
                            temperature=1.0, beta=0.0)
    trainer.train()
    trainer.save_model(args.output_dir)


if __name__ == "__main__":
    main()
