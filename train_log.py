"""train_log.py -- the GRPO step's statistics and its train_log.jsonl row. Off the reader's path:
what is measured and logged, not what is optimised.

    LOSS_SUMS, LOSS_MAXIMA   what a pass of the loss sums and maximises over a rank's loss tokens
    sampler_gap(logp, sampler_logp, mask)   |logp - sampler_logp| summed and maximised over tokens
    pass_rates(correct, g, share, n_problems, device)   each problem's fraction correct, over all ranks
    log_row(step, batch, sums, maxima, ...)   the row, with TRL's names beside ours (TRL_NAMES)

Imports torch and parallel (the sum over ranks).
"""
from __future__ import annotations

import torch

from parallel import all_reduce_sum

# What grpo.accumulate_policy_gradient sums and maximises over a rank's loss tokens (clip_frac, kl and
# ratio_mean weighted by each micro-batch's token count), before the sum over ranks.
LOSS_SUMS = ("loss", "clip_frac", "kl", "ratio_mean", "entropy", "tokens", "sampler_gap")
LOSS_MAXIMA = ("ratio_max", "sampler_gap")


def sampler_gap(logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Sum and max over the masked tokens of |logp - sampler_logp| ([n, C] each): how far the sampler's
    log-probs (a bf16 copy's, say) are from the trainer's."""
    d = (logp - sampler_logp).abs() * mask  # [n, C]
    return float(d.sum()), float(d.max())


def pass_rates(correct: torch.Tensor, g: int, share: slice, n_problems: int, device) -> list[float]:
    """Each problem's fraction of correct completions, in batch order, over all ranks (each fills its share)."""
    rates = [0.0] * n_problems
    rates[share] = correct.view(-1, g).mean(1).tolist()
    return all_reduce_sum(rates, device)


# Old train_log names kept beside TRL's for the same quantities, for one release.
TRL_NAMES = {"frac_zero_std": "frac_reward_zero_std", "response_len": "completions/mean_length",
             "truncated": "completions/clipped_ratio", "clip_frac": "clip_ratio/region_mean", "lr": "learning_rate",
             "sampler_gap_max": "sampling/sampling_logp_difference/max",
             "sampler_gap_mean": "sampling/sampling_logp_difference/mean"}


def log_row(step: int, batch: list, sums: dict, maxima: dict, *, n_rows: float, grad_norm: float, lr: float,
            t_gen: float, t_train: float, has_sampler_logp: bool, pass_rates: list[float]) -> dict:
    """The step's train_log.jsonl row from the sums and maxima over ranks (grpo_step): rewards and lengths
    per rollout; frac_zero_std and reward_std (the mean within-group standard deviation, as TRL) per group;
    clip_frac, kl, ratios, entropy and the sampler gap per loss token; each problem's pass rate. Where TRL
    logs the same quantity, its name is written too (TRL_NAMES)."""
    n, n_tok = sums["n"], max(sums["tokens"], 1.0)
    row = {
        "step": step, "problem_ids": [p.id for p in batch], "pass_rates": pass_rates,
        "reward": sums["reward"] / n, "reward_std": sums["reward_std"] / sums["groups"], "accuracy": sums["correct"] / n,
        "frac_zero_std": sums["zero_std"] / sums["groups"], "response_len": sums["len"] / n,
        "truncated": sums["truncated"] / n, "n_loss_seqs": int(n_rows),
        "loss": sums["loss"], "clip_frac": sums["clip_frac"] / n_tok, "kl": sums["kl"] / n_tok,
        "ratio_mean": sums["ratio_mean"] / n_tok if sums["tokens"] else 1.0, "ratio_max": maxima["ratio_max"],
        "entropy": sums["entropy"] / n_tok if sums["tokens"] else None,
        "grad_norm": grad_norm, "lr": lr, "gen_s": t_gen, "train_s": t_train,
        "tokens_per_s": sums["len"] / max(t_gen + t_train, 1e-9), "gen_tokens_per_s": sums["len"] / max(t_gen, 1e-9),
        "skipped": n_rows == 0,
    }
    if has_sampler_logp:
        row["sampler_gap_max"] = maxima["sampler_gap"]
        row["sampler_gap_mean"] = sums["sampler_gap"] / n_tok if sums["tokens"] else 0.0
    return row | {trl: row[old] for old, trl in TRL_NAMES.items() if old in row}
