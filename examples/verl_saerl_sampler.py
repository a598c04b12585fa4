"""examples/verl_saerl_sampler.py -- verl trains in SAERL's engineered order: a sampler, and SAERL's judge.

    python saerl.py --model M --stage schedule --export verl     # runs/<name>/export/verl.parquet (and .jsonl)
    python -m verl.trainer.main_ppo algorithm.adv_estimator=grpo \\
        data.train_files=runs/<name>/export/verl.parquet data.train_batch_size=64 \\
        data.sampler.class_path=examples/verl_saerl_sampler.py data.sampler.class_name=SAERLOrderSampler \\
        data.dataloader_num_workers=0 \\
        custom_reward_function.path=examples/verl_saerl_sampler.py custom_reward_function.name=compute_score \\
        actor_rollout_ref.model.path=M ...

SAERLOrderSampler yields the dataset's row indices ordered by each row's extra_info (step, position), the
order export.py wrote, so a verl batch of data.train_batch_size = B (SAERL's --batch-size) rows is SAERL's
batch of that step. It reads the order from the rows rather than assuming file order, so it holds after
verl drops prompts over data.max_prompt_length (filter_overlong_prompts) or after the rows were reordered.
verl asks for data.dataloader_num_workers=0 with a custom sampler.

The hook `data.sampler.class_path` exists in verl 0.4.1 to 0.7.x (checked in tests/test_export.py against
verl 0.7.1's create_rl_sampler and RLHFDataset); verl 0.8 removed it. There, data.shuffle=False reads the
exported file in its (SAERL's) order, which is the same thing for an unfiltered file.

compute_score is a verl reward function (custom_reward_function) that scores with SAERL's verifier, so verl
and SAERL judge answers alike whatever the rows' data_source.
"""
from __future__ import annotations

import sys
from pathlib import Path

from verl.experimental.dataset.sampler import AbstractSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the SAERL repository: verifier.py

from verifier import math_reward  # noqa: E402


class SAERLOrderSampler(AbstractSampler):
    """Row indices of `data_source` (verl's RLHFDataset) in SAERL's order: by extra_info step, then position."""

    def __init__(self, data_source, data_config):
        rows = data_source.dataframe["extra_info"]  # the rows verl kept, in its own index order
        keys = []
        for i, info in enumerate(rows):
            if not isinstance(info, dict) or not {"step", "position"} <= info.keys():
                raise ValueError(f"row {i} of the training data has no extra_info step/position: SAERLOrderSampler "
                                 "needs the rows of `saerl.py --export verl` (or export.py RUN --format verl)")
            keys.append((int(info["step"]), int(info["position"]), i))
        self.order = [i for _, _, i in sorted(keys)]

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """verl's reward-function signature: 1.0 if the response's final answer equals ground_truth, else 0.0."""
    return math_reward(solution_str, ground_truth)
