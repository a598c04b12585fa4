"""grpo.py -- a plain PyTorch GRPO / DAPO / Dr. GRPO trainer that follows a batch schedule.

SAERL decides *which* problems go into *which* step (schedule.jsonl, one batch of problem ids per
line); this file turns each scheduled batch into one policy update, in five stages (`grpo_step`):

    sample    B prompts x G completions by sampler.sample_rollouts (the bf16 rollout copy on CUDA)
    score     reward = verifier.math_reward(completion text, gold answer)  (1.0 / 0.0)
    advantage group-relative: (r - mean_g) / (std_g + eps)  or  r - mean_g
    loss      clipped surrogate on token log-probs, aggregated per `loss_type`
    update    the gradient accumulated over micro-batches, clipped; AdamW

Objective (per token t of completion i, ratio rho = exp(logp - old_logp)):

    l_it = -min(rho * A_i, clip(rho, 1 - eps_low, 1 + eps_high) * A_i) + beta * k3_it
    k3_it = exp(ref - logp) - (ref - logp) - 1                         (>= 0, Schulman's k3)

    grpo    : mean_i [ sum_t m_it l_it / sum_t m_it ]       DeepSeekMath (Shao et al. 2024, §4.1, eq. 3)
    dapo    : sum_it m_it l_it / sum_it m_it                 DAPO (Yu et al. 2025, token-level loss)
    dr_grpo : sum_it m_it l_it / (N * max_len)               Dr. GRPO (Liu et al. 2025, "Understanding
                                                             R1-Zero-Like Training"), with A = r - mean

DAPO extras: clip-higher (eps_high = 0.28), zero-variance groups dropped from the loss (a "lite"
dynamic sampling: the batch is not refilled), overlong filtering (truncated completions dropped from
the loss) or the soft overlong punishment added to the reward (DAPO §3.4).

    python grpo.py --model M --train-data FILE [--schedule schedule.jsonl] [--out DIR] [--preset toy]
    python grpo.py --model M --plan [--gpu-memory 80]          the memory plan, nothing loaded
    torchrun --nproc_per_node N grpo.py ... [--parallel fsdp2]  data parallel / sharded (parallel.py)

Top-down: the math, the step (`grpo_step`, then its helpers in call order), the run (`train`), the CLI; one
file (~600 lines) so that GRPO runs end to end from it. Elsewhere: micro-batches and packing (batching.py), the
collectives (parallel.py), the log row (train_log.py), every knob (config.py); how and why: docs/design.md.
"""
from __future__ import annotations

import os

# before torch loads OpenMP: waiting threads sleep, not spin; numpy's OpenBLAS spins regardless (docs/measurements.md)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import contextlib
import copy
import dataclasses
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch

import parallel
import plan
from batching import batch_logprobs, micro_batches, scatter_rows, set_activation_checkpointing, uses_packing
from checkpoint import latest_checkpoint, resume_latest, save_checkpoint
from config import ADV_SCALES, LOSS_TYPES, GRPOConfig
from data import format_prompt, load_problems, prompt_lengths, stop_token_ids
from parallel import (all_gather, all_reduce_stats, all_reduce_sum, barrier, dist_info, even_micro_batches,
                      init_distributed, rank_slice, reduce_and_clip_gradients)
from plan import oom_phase
from runtime import (ConfigError, Interrupted, NonFiniteError, add_dataclass_args, append_jsonl, atomic_write_text,
                     Tracker, check, command_line, folder_lock, load_model, read_jsonl, stable_hash, write_jsonl)
from sampler import Rollouts, context_length, refresh_rollout_model, rollout_model, sample_rollouts
from schedule import random_schedule, read_schedule, write_schedule
from train_log import LOSS_MAXIMA, LOSS_SUMS, log_row, pass_rates, sampler_gap
from verifier import math_reward


# The math: advantages and the clipped surrogate
def group_advantages(rewards: torch.Tensor, *, scale: str = "std", eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages. rewards [B, G] -> [B, G].

    scale="std":  (r - mean_g) / (std_g + eps), std the *unbiased* (G - 1) sample std, as torch.std
                  and TRL; GRPO (DeepSeekMath §4.1.2).
    scale="none": r - mean_g (Dr. GRPO: the std division over-weights near-solved / near-failed groups).
    A group with equal rewards gets advantage 0 either way."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G]; got shape {tuple(rewards.shape)}")
    if scale not in ADV_SCALES:
        raise ValueError(f"scale={scale!r}; expected one of {ADV_SCALES}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # [B, G]
    if scale == "none":
        return centred
    if rewards.shape[1] < 2:
        raise ValueError("scale='std' needs group size >= 2 (the unbiased std of one sample is undefined)")
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def loss_normalizer(mask: torch.Tensor, loss_type: str, max_len: int | None = None) -> float:
    """The denominator of the step's loss, from the step's completion mask [N, T] (max_len defaults
    to T); `normalizer_from_counts` of its row and token counts."""
    n_rows, width = mask.shape
    return normalizer_from_counts(n_rows, mask.sum().item(), loss_type, width if max_len is None else max_len)


def normalizer_from_counts(n_rows: float, n_tokens: float, loss_type: str, max_len: int) -> float:
    """The denominator of the step's loss from its counts (under torchrun, summed over ranks): grpo, n_rows
    sequences (each contributes its own token mean); dapo, n_tokens completion tokens; dr_grpo, n_rows * max_len.
    Computed once per step and passed to every micro-batch, so that accumulated micro-batch gradients equal the
    full-batch gradient."""
    if loss_type == "grpo":
        return float(n_rows)
    if loss_type == "dapo":
        return float(max(n_tokens, 1.0))
    if loss_type == "dr_grpo":
        return float(n_rows * max_len)
    raise ValueError(f"loss_type={loss_type!r}; expected one of {LOSS_TYPES}")


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *,
                loss_type: str = "grpo", eps_low: float = 0.2, eps_high: float = 0.2,
                ref_logp: torch.Tensor | None = None, beta: float = 0.0, max_len: int | None = None,
                normalizer: float | None = None, is_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate + k3 KL, aggregated per `loss_type` (see the module docstring).

    logp, old_logp, ref_logp, mask: [N, T]; adv: [N]; is_weight [N, T] (optional, no gradient): per-token weights
    on the surrogate (importance_weights). `normalizer` is the step's denominator (`loss_normalizer` of the whole
    step's mask); None computes it from this call's mask, i.e. the call is the whole step. Returns (scalar loss,
    stats) where stats are detached token means over this call's mask: clip_frac (tokens whose gradient is zeroed
    by the clip), kl (k3; 0 without a reference), ratio_mean, ratio_max, entropy (mean -old_logp) and tokens (the
    count the means are over)."""
    if not (logp.shape == old_logp.shape == mask.shape) or adv.shape != logp.shape[:1]:
        raise ValueError(f"shape mismatch: logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)}, "
                         f"mask {tuple(mask.shape)} must be [N, T] and adv {tuple(adv.shape)} must be [N]")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}; expected one of {LOSS_TYPES}")
    mask = mask.to(logp.dtype)
    a = adv.to(logp.dtype).unsqueeze(1)  # [N, 1]
    ratio = torch.exp(logp - old_logp)  # [N, T]
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)  # [N, T]
    per_token = -torch.minimum(ratio * a, clipped * a)  # [N, T]
    if is_weight is not None:
        per_token = per_token * is_weight.detach().to(logp.dtype)
    if beta != 0.0 and ref_logp is None:
        raise ValueError("beta != 0 needs ref_logp (log-probs of the reference policy)")
    kl = torch.zeros_like(logp) if ref_logp is None else k3_kl(logp, ref_logp)  # [N, T]; reported when beta = 0
    if beta != 0.0:
        per_token = per_token + beta * kl

    if normalizer is None:
        normalizer = loss_normalizer(mask, loss_type, max_len)
    if loss_type == "grpo":
        per_seq = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [N]
        loss = per_seq.sum() / normalizer
    else:  # dapo and dr_grpo differ only in the denominator
        loss = (per_token * mask).sum() / normalizer

    with torch.no_grad():
        n_tok = mask.sum().clamp(min=1.0)
        # The clip bites (zero gradient) where the clipped branch is the smaller one and differs:
        # ratio above the band with A > 0, or below it with A < 0.
        bites = ((ratio > 1 + eps_high) & (a > 0)) | ((ratio < 1 - eps_low) & (a < 0))
        on = mask > 0
        stats = {
            "clip_frac": float((bites.to(mask.dtype) * mask).sum() / n_tok),
            "kl": float((kl * mask).sum() / n_tok),
            "ratio_mean": float((ratio * mask).sum() / n_tok),
            "ratio_max": float(ratio[on].max()) if on.any() else 1.0,
            # mean -log pi_old(y_t) of the sampled tokens: an unbiased estimate of the sampling policy's
            # per-token entropy (tempered as sampled; exact with top_p = 1)
            "entropy": float(-(old_logp * mask).sum() / n_tok),
            "tokens": float(mask.sum()),
        }
    return loss, stats


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int) -> torch.Tensor:
    """DAPO soft overlong punishment (§3.4): 0 up to max_len - buffer, then a linear ramp to -1 at max_len."""
    start = max_len - buffer
    return torch.clamp((start - lengths.to(torch.float32)) / buffer, min=-1.0, max=0.0)


# One step: sample -> score -> advantage -> loss -> update
def step_seed(seed: int, step: int) -> int:
    """Sampling seed of schedule step `step`: a function of (seed, step) only, so resume is exact."""
    return (seed * 1_000_003 + step * 7_919 + 1) % (2 ** 63)


def grpo_step(policy, tokenizer, batch: list, cfg: GRPOConfig, optimizer, *, step: int,
              reward_fn: Callable[[str, str], float], ref_model=None, stop_ids=None, rollout=None) -> dict:
    """One scheduled batch -> cfg.num_iterations optimizer updates; returns the step's log row. `rollout` samples
    (`sampler.rollout_model`: the policy itself, or a bf16 copy that this function refreshes after each update;
    None: the policy). Under FSDP2 `policy` is the sharded root (parallel.fsdp2) and `rollout` its unsharded
    copy. Under torchrun each rank samples its share."""
    device = next(policy.parameters()).device
    rollout = policy if rollout is None else rollout
    g = cfg.group_size
    t0 = time.perf_counter()
    share = rank_slice(len(batch), cfg.gen_batch_size, *dist_info())  # this rank's prompts (all in one process)
    mine = batch[share]

    # 1. sample: B prompts x G completions; generate call k of the global batch is seeded step_seed + 7919 k
    prompts = [format_prompt(p.problem, tokenizer, cfg.template) for p in mine]
    with oom_phase("generation", f" at step {step} ({len(mine)} x {g} rows)"):
        roll = sample_rollouts(rollout, tokenizer, prompts, group_size=g, temperature=cfg.temperature,
                               top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, gen_batch_size=cfg.gen_batch_size,
                               seed=step_seed(cfg.seed, step) + 7_919 * (share.start // cfg.gen_batch_size),
                               stop_ids=stop_ids, engine=cfg.rollout_engine,
                               check_every=cfg.sync_every)  # row b * G + j: completion j of prompt b
    t_gen = time.perf_counter() - t0

    # 2. score
    correct = torch.tensor([float(reward_fn(text, mine[i // g].answer)) for i, text in enumerate(roll.texts)])  # [B*G]
    _check_rewards(correct, mine, g, step)
    lengths = roll.lengths.cpu()  # [B*G] completion tokens
    rewards = correct  # [B*G]
    if cfg.overlong == "soft":  # DAPO soft overlong punishment
        rewards = correct + overlong_penalty(lengths, cfg.max_new_tokens, cfg.overlong_buffer)

    # 3. advantage, and the rows that enter the loss
    groups = rewards.view(-1, g)  # [B, G]
    zero_std = groups.max(1).values == groups.min(1).values  # [B]
    adv = group_advantages(groups, scale=cfg.adv_scale).view(-1)  # [B*G]
    keep = torch.ones_like(adv, dtype=torch.bool)  # [B*G]
    if cfg.skip_zero_std:  # DAPO-lite dynamic sampling: a group with equal rewards has no signal
        keep &= ~zero_std.repeat_interleave(g)
    if cfg.overlong == "mask":  # DAPO overlong filtering
        keep &= ~roll.truncated.cpu()
    rows = keep.nonzero().squeeze(1).to(roll.input_ids.device)  # [N]
    cmask = roll.completion_mask[rows].float()  # [N, C]

    # 4. loss, its gradient accumulated over micro-batches -> 5. update; cfg.num_iterations passes
    t1 = time.perf_counter()
    lr = set_learning_rate(optimizer, cfg, step)
    n_rows, n_tokens = all_reduce_sum([float(len(rows)), float(cmask.sum())], device)  # over all ranks
    loss_sums, loss_maxima, grad_norm = dict.fromkeys(LOSS_SUMS, 0.0), dict.fromkeys(LOSS_MAXIMA, 0.0), 0.0
    if n_rows:  # a rank may have no rows in the loss (it still takes part), the step may not
        norm = normalizer_from_counts(n_rows, n_tokens, cfg.loss_type, cfg.max_new_tokens)  # the step's denominator
        with oom_phase("training", f" at step {step}"):
            loss_batch = build_loss_batch(policy, ref_model, rollout, roll, rows, adv, cmask, cfg)
            policy.train()
            for _ in range(cfg.num_iterations):
                optimizer.zero_grad(set_to_none=True)
                loss_sums, loss_maxima = accumulate_policy_gradient(policy, loss_batch, norm, cfg, step)
                grad_norm = reduce_and_clip_gradients(policy, cfg.max_grad_norm, step)  # summed over ranks, clipped
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        refresh_rollout_model(rollout, policy)
    t_train = time.perf_counter() - t1

    # the log row: every mean is over the whole step (all ranks)
    sums, maxima = all_reduce_stats(
        {"n": len(rewards), "groups": len(zero_std), "reward": float(rewards.sum()), "correct": float(correct.sum()),
         "zero_std": float(zero_std.sum()), "reward_std": float(groups.std(1).sum()), "len": float(lengths.sum()),
         "truncated": float(roll.truncated.sum()), **loss_sums}, loss_maxima, device)
    return log_row(step, batch, sums, maxima, n_rows=n_rows, grad_norm=grad_norm, lr=lr, t_gen=t_gen,
                   t_train=t_train, has_sampler_logp=roll.sampler_logprobs is not None,
                   pass_rates=pass_rates(correct, g, share, len(batch), device))


def _check_rewards(correct: torch.Tensor, problems: list, group_size: int, step: int) -> None:
    """The reward function is the user's: a non-finite reward stops the run naming its problem."""
    bad = (~torch.isfinite(correct)).nonzero()
    if len(bad):
        raise NonFiniteError(f"step {step}: reward {correct[bad[0, 0]].item()} for problem "
                             f"{problems[int(bad[0, 0]) // group_size].id!r}; the reward function must return a "
                             "finite number")


def set_learning_rate(optimizer, cfg: GRPOConfig, step: int) -> float:
    """Linear warmup from cfg.lr / warmup_steps over cfg.warmup_steps steps, then constant cfg.lr."""
    lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else cfg.lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


@dataclass
class LossBatch:
    """The step's rows that enter the loss (this rank's), on the training device, cut into micro-batches,
    with the log-probs every optimisation pass compares against."""
    input_ids: torch.Tensor            # [N, P + C]
    attention_mask: torch.Tensor       # [N, P + C]
    completion_mask: torch.Tensor      # [N, C] float
    adv: torch.Tensor                  # [N]
    micro_batches: list[torch.Tensor]  # row indices; under FSDP2 those from n_real on are padding
    n_real: int
    packed: bool                       # padding-free micro-batches (uses_packing)
    sampler_logp: torch.Tensor | None  # [N, C] the sampler's log-probs (None: not recorded)
    old_logp: torch.Tensor | None      # [N, C] the policy that sampled; None (one pass): the pass's own, detached
    ref_logp: torch.Tensor | None      # [N, C] the reference policy; None without one
    tis_cap: float                     # cap of the truncated importance weights; 0: no weights


def build_loss_batch(policy, ref_model, rollout, roll: Rollouts, rows: torch.Tensor, adv: torch.Tensor,
                     cmask: torch.Tensor, cfg: GRPOConfig) -> LossBatch:
    """Rows `rows` of `roll` (adv [B*G], cmask [N, C]) as a LossBatch: micro-batches under the token
    budget (padded to every rank's count under FSDP2), the frozen log-probs of the policy that sampled
    (when num_iterations > 1) and of the reference, and whether importance weights apply."""
    device = next(policy.parameters()).device
    packed = uses_packing(policy, cfg)
    ids, att, adv = roll.input_ids[rows], roll.attention_mask[rows], adv[rows.cpu()].to(device)
    s_lp = None if roll.sampler_logprobs is None else roll.sampler_logprobs[rows]
    mbs = [torch.tensor(m, device=ids.device) for m in
           micro_batches(att.sum(1).tolist(), max_rows=cfg.micro_batch_size,  # prompt + completion tokens per row
                         max_tokens=cfg.max_tokens_per_micro_batch, packed=packed)]
    n_real = len(mbs)
    if parallel.is_sharded(policy):
        ids, att, cmask, adv, s_lp, mbs = even_micro_batches(ids, att, cmask, adv, s_lp, mbs, roll, device)

    def frozen_logprobs(model) -> torch.Tensor:  # [N, C]
        return scatter_rows([batch_logprobs(model, ids[m], att[m], cmask[m], cfg, device, False, packed)
                             for m in mbs], mbs, cmask)

    old = frozen_logprobs(policy) if cfg.num_iterations > 1 else None  # the policy that sampled, for every pass
    ref = None if ref_model is None else frozen_logprobs(ref_model)
    # a copy in the policy's own dtype samples the policy's distribution: no correction needed
    other_dtype = next(rollout.parameters()).dtype != next(policy.parameters()).dtype
    tis_cap = cfg.tis_cap if s_lp is not None and other_dtype else 0.0
    return LossBatch(ids, att, cmask, adv, mbs, n_real, packed, s_lp, old, ref, tis_cap)


def accumulate_policy_gradient(policy, loss_batch: LossBatch, norm: float, cfg: GRPOConfig,
                               step: int) -> tuple[dict, dict]:
    """One pass of the loss's backward, a micro-batch at a time, each `policy_loss` divided by the step's
    denominator `norm` (normalizer_from_counts). Returns this rank's sums (LOSS_SUMS) and maxima (LOSS_MAXIMA);
    the sampler gap is measured against the frozen old log-probs, so every pass reports the same."""
    device = next(policy.parameters()).device
    sums, maxima = dict.fromkeys(LOSS_SUMS, 0.0), dict.fromkeys(LOSS_MAXIMA, 0.0)
    for j, m in enumerate(loss_batch.micro_batches):
        cm = loss_batch.completion_mask[m]  # [n, C]
        logp = batch_logprobs(policy, loss_batch.input_ids[m], loss_batch.attention_mask[m], cm, cfg, device, True,
                              loss_batch.packed)  # [n, C]
        if j >= loss_batch.n_real:  # an FSDP2 padding micro-batch: only its collectives count
            (logp.sum() * 0.0).backward()
            continue
        old = logp.detach() if loss_batch.old_logp is None else loss_batch.old_logp[m]  # [n, C]
        ref = None if loss_batch.ref_logp is None else loss_batch.ref_logp[m]  # [n, C]
        is_w = None
        if loss_batch.sampler_logp is not None:
            s_lp = loss_batch.sampler_logp[m]  # [n, C]
            gap_sum, gap_max = sampler_gap(old, s_lp, cm)
            sums["sampler_gap"] += gap_sum
            maxima["sampler_gap"] = max(maxima["sampler_gap"], gap_max)
            if loss_batch.tis_cap > 0:
                is_w = importance_weights(old, s_lp, cm, loss_batch.tis_cap)  # [n, C]
        loss, st = policy_loss(logp, old, loss_batch.adv[m], cm, loss_type=cfg.loss_type, eps_low=cfg.eps_low,
                               eps_high=cfg.eps_high, ref_logp=ref, beta=cfg.beta, max_len=cfg.max_new_tokens,
                               normalizer=norm, is_weight=is_w)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"step {step}: loss is {loss.item()} (micro-batch of {len(m)} rows); "
                                 "the update was not applied")
        loss.backward()
        sums["loss"] += loss.item()
        for k in ("clip_frac", "kl", "ratio_mean", "entropy"):
            sums[k] += st[k] * st["tokens"]
        sums["tokens"] += st["tokens"]
        maxima["ratio_max"] = max(maxima["ratio_max"], st["ratio_max"])
    return sums, maxima


def importance_weights(logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling for the sampler mismatch (Yao et al. 2025): min(pi_train / pi_sampler,
    cap) per token, 0 off the mask. [n, C]."""
    return torch.exp(logp - sampler_logp).clamp(max=cap) * mask


# The run
def _truncate_log(path: Path, key_ok: Callable[[dict], bool]) -> None:
    """After a resume, drop log rows written after the checkpoint (they will be written again)."""
    if path.exists():
        rows = list(read_jsonl(path))
        kept = [r for r in rows if key_ok(r)]
        if len(kept) != len(rows):
            write_jsonl(path, kept)


def train(policy, tokenizer, problems: list, schedule: list[list[str]], cfg: GRPOConfig, *, out_dir,
          eval_fn: Callable[[int, Any], dict] | None = None, resume: bool = True,
          reward_fn: Callable[[str, str], float] | None = None) -> dict:
    """Train `policy` in place on `schedule`, in order.

    problems: data.Problem list; schedule: list of batches, each a list of problem ids (the rows of
    schedule.jsonl, see `schedule.read_schedule`); step i of train_log.jsonl is schedule[i].
    eval_fn(step, model) is called with the number of completed steps (0 before training when
    starting fresh) every cfg.eval_every steps and at the end, and the model to generate with (the
    policy; under FSDP2 its unsharded rollout copy); on every rank under torchrun
    (evaluate.make_eval_fn shards the problems), rank 0 writes its dict to eval_log.jsonl.
    reward_fn(text, gold) defaults to verifier.math_reward. With resume=True the latest checkpoint
    under out_dir/checkpoints is loaded into `policy` (weights, optimizer, RNG) and the run
    continues after it; resume=False refuses an out_dir that already has checkpoints.
    Under --parallel fsdp2 (world > 1) `policy` is sharded in place; its trained weights are those of
    the last checkpoint. Returns the last step's log row (or {} when nothing was left to do).
    """
    if reward_fn is None:
        reward_fn = math_reward
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    by_id = {p.id: p for p in problems}
    for i, ids in enumerate(schedule):
        if not ids:
            raise ValueError(f"schedule step {i} is an empty batch")
        missing = [pid for pid in ids if pid not in by_id]
        if missing:
            raise KeyError(f"schedule step {i} names problem id {missing[0]!r}, not among the {len(problems)} "
                           "training problems")
    rank, world = dist_info()
    lead = rank == 0  # under torchrun only rank 0 writes files and prints; every rank reads checkpoints
    # every scheduled prompt tokenized once: the context check and --gen-batch-size auto both read it
    lengths = prompt_lengths([by_id[pid] for pid in dict.fromkeys(p for b in schedule for p in b)], tokenizer,
                             cfg.template)
    schedule = plan.fit_to_context(schedule, lengths, cfg, context_length(policy), report=lead)
    if cfg.gen_batch_size == "auto":
        longest = max(lengths[pid] for batch in schedule for pid in batch)
        cfg = dataclasses.replace(cfg, gen_batch_size=plan.gen_batch_size_on_device(policy, longest, cfg, world,
                                                                                  report=lead))
    n_steps = len(schedule) if cfg.max_steps is None else min(cfg.max_steps, len(schedule))
    sched_hash = stable_hash([list(map(str, b)) for b in schedule])
    on_cuda = next(policy.parameters()).device.type == "cuda"
    shard = cfg.parallel == "fsdp2" and world > 1
    # The reference is the policy as given (before any resume), frozen; none at beta = 0.
    ref_model = copy.deepcopy(policy).eval().requires_grad_(False) if cfg.beta > 0 else None
    rollout_dtype = cfg.rollout_dtype
    if shard:  # the shards cannot generate: an unsharded copy does (parallel.py)
        if rollout_dtype == "policy":
            raise ValueError("--rollout-dtype policy needs the whole policy on each rank; under --parallel fsdp2 "
                             "use auto, bfloat16 or float32")
        rollout_dtype = "float32" if rollout_dtype == "auto" and not on_cuda else rollout_dtype
    rollout = rollout_model(policy, rollout_dtype)  # refreshed from the policy after a resume
    if cfg.checkpointing:
        set_activation_checkpointing(policy, True)
    if shard:
        policy = parallel.fsdp2(policy, bf16=on_cuda and cfg.bf16)
        ref_model = None if ref_model is None else parallel.fsdp2(ref_model, bf16=on_cuda and cfg.bf16)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay, fused=True if on_cuda else None)
    train_log, eval_log = out_dir / "train_log.jsonl", out_dir / "eval_log.jsonl"
    hashes = set(all_gather(sched_hash))
    if len(hashes) > 1:
        raise ValueError(f"rank {rank}: the ranks disagree on the schedule (hashes {sorted(hashes)}); "
                         "every rank must read the same schedule")
    start = 0
    last = latest_checkpoint(ckpt_dir)
    if last is not None and not resume:
        raise FileExistsError(f"{ckpt_dir} holds checkpoints ({last.name}); pass resume=True or a new out_dir")
    if last is not None:  # the newest readable one: a damaged newest checkpoint falls back, with a warning
        start, last = resume_latest(ckpt_dir, policy, optimizer, cfg, sched_hash)
        refresh_rollout_model(rollout, policy)
        if lead:
            _truncate_log(train_log, lambda r: r["step"] < start)
            _truncate_log(eval_log, lambda r: r["step"] <= start)
    elif lead:
        for f in (train_log, eval_log):
            f.unlink(missing_ok=True)
    if lead:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "grpo_config.json", json.dumps(asdict(cfg), indent=2) + "\n")
    stop_ids = stop_token_ids(rollout, tokenizer)
    # eval_fn generates with the rollout model, like the rollouts: a bf16 copy on CUDA (the fp32
    # policy under autocast would re-cast every weight for every decoded token), the policy on CPU
    eval_model = rollout

    tracker = Tracker(cfg.report_to if lead else "none", out_dir, config=asdict(cfg))  # --report-to

    def run_eval(done: int):  # every rank evaluates its share (evaluate.evaluate); rank 0 writes
        if eval_fn is not None:
            with oom_phase("evaluation", f" after step {done}"):
                row = {"step": done, **eval_fn(done, eval_model)}
            if lead:
                append_jsonl(eval_log, row)
                tracker.log(row, done, "eval/")
        barrier()

    if start == 0 and cfg.eval_every > 0:
        run_eval(0)
    row: dict = {}
    from tqdm.auto import tqdm

    bar = tqdm(range(start, n_steps), initial=start, total=n_steps, desc="grpo", dynamic_ncols=True, disable=not lead)
    for step in bar:
        batch = [by_id[pid] for pid in schedule[step]]
        try:
            row = grpo_step(policy, tokenizer, batch, cfg, optimizer, step=step, reward_fn=reward_fn,
                            ref_model=ref_model, stop_ids=stop_ids, rollout=rollout)
        except NonFiniteError as e:
            kept = latest_checkpoint(ckpt_dir)
            raise NonFiniteError(f"{e}. Training stopped; last checkpoint kept: {kept or 'none'}") from e
        if lead:
            append_jsonl(train_log, row)
            tracker.log(row, step + 1, "train/")
        bar.set_postfix(reward=f"{row['reward']:.3f}", len=f"{row['response_len']:.0f}",
                        gnorm=f"{row['grad_norm']:.2f}", zero_std=f"{row['frac_zero_std']:.2f}")
        done = step + 1
        if cfg.eval_every > 0 and (done % cfg.eval_every == 0 or done == n_steps):
            run_eval(done)
        if done % cfg.save_every == 0 or done == n_steps:
            save_checkpoint(ckpt_dir, done, policy, optimizer, cfg, sched_hash)  # rank 0 writes
            barrier()
    tracker.close()
    return row


# The CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="GRPO / DAPO / Dr. GRPO on a batch schedule.", parents=[plan.plan_flags()])
    ap.add_argument("--model", required=True, help="policy: HF model id or folder")
    ap.add_argument("--train-data", help="problems: jsonl / json / parquet / Hub id (required unless --plan)")
    ap.add_argument("--schedule", default=None, help="schedule.jsonl to follow (default: random batches)")
    ap.add_argument("--out", default="runs/grpo", help="output folder (logs, checkpoints, final model)")
    ap.add_argument("--preset", default="qwen-math-1.5b", choices=sorted(GRPOConfig.PRESETS))
    ap.add_argument("--limit", type=int, default=None, help="use only the first N training problems")
    ap.add_argument("--plan-prompt-tokens", type=int, default=512, help="longest prompt --plan sizes for")
    ap.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                    help="continue from the latest checkpoint in --out (--no-resume refuses a used --out)")
    cfg_group = ap.add_argument_group("GRPOConfig ([default] of the qwen-math-1.5b preset; --preset changes it)")
    add_dataclass_args(cfg_group, GRPOConfig, unset=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> None:
    with command_line("grpo.py"):  # a bad flag, a folder in use, Ctrl-C: one line, no traceback
        run_cli(build_parser().parse_args(argv))


def check_cli(args) -> None:
    """The flags that are not GRPOConfig fields, and how they combine with it (ConfigError)."""
    check(args.limit is None or args.limit >= 1, {"limit": args.limit}, "an integer >= 1")
    check(args.plan_prompt_tokens >= 1, {"plan_prompt_tokens": args.plan_prompt_tokens}, "an integer >= 1")
    plan.check_plan_flags(args)
    if args.plan:
        return
    if not args.train_data:
        raise ConfigError("--train-data is required (a jsonl / json / parquet file or a Hub dataset id)")
    check(args.schedule is None or Path(args.schedule).is_file(), {"schedule": args.schedule},
          "a schedule.jsonl file (one batch of problem ids per line)")
    # --num-steps sizes the random schedule; a given schedule is cut with --max-steps, never resized
    check(args.schedule is None or not hasattr(args, "num_steps"), {"num_steps": getattr(args, "num_steps", None),
          "schedule": args.schedule}, "--max-steps N to train the first N steps of a given schedule (--num-steps "
          "only sizes the random schedule built without --schedule)")


def run_cli(args) -> None:
    """`python grpo.py ...`: flags checked, the --out folder locked, data read, then the model loaded and trained."""
    overrides = {f.name: getattr(args, f.name) for f in fields(GRPOConfig) if hasattr(args, f.name)}
    cfg = GRPOConfig.preset(args.preset, **overrides)
    check_cli(args)
    if args.plan:
        print(plan.memory_plan_report(args.model, cfg, gpu_gib=args.gpu_memory, prompt_tokens=args.plan_prompt_tokens,
                                      world=args.world_size))
        return
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # before CUDA starts
    rank, _ = init_distributed()  # torchrun --nproc_per_node N grpo.py ...: one process per GPU
    out = Path(args.out)
    with folder_lock(out) if rank == 0 else contextlib.nullcontext():  # one run per --out folder
        problems = load_problems(args.train_data, limit=args.limit)
        if args.schedule:
            schedule = read_schedule(args.schedule)
        else:
            schedule = random_schedule([p.id for p in problems], cfg.batch_size, cfg.num_steps, cfg.seed)
            if rank == 0 and not (out / "schedule.jsonl").exists():
                write_schedule(out / "schedule.jsonl", schedule)
        device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
        policy, tokenizer = load_model(args.model, device, dtype=torch.float32)  # fp32 master weights
        try:
            last = train(policy, tokenizer, problems, schedule, cfg, out_dir=out, resume=args.resume)
        except KeyboardInterrupt as e:
            kept = latest_checkpoint(out / "checkpoints")
            kept = kept.name if kept else "none yet"
            raise Interrupted(f"interrupted during training in {out} (last checkpoint {kept}); run the same command "
                              "to resume") from e
        if rank != 0:
            return
        final = save_final(policy, tokenizer, out)
    print(json.dumps({k: v for k, v in last.items() if k != "problem_ids"}, indent=None))
    print(f"final model: {final}", file=sys.stderr)


def save_final(policy, tokenizer, out_dir) -> Path:
    """out_dir/final: the trained policy as a folder `from_pretrained` loads (config, generation
    config, tokenizer, weights), for lm-eval, lighteval or any other tool; written under a temporary
    name and renamed. A policy sharded by FSDP2 is whole in its last checkpoint, which is copied."""
    out_dir = Path(out_dir)
    final, tmp = out_dir / "final", out_dir / ".tmp_final"
    shutil.rmtree(tmp, ignore_errors=True)
    if parallel.holds_shards(policy):  # saving shards would be a collective that rank 0 runs alone
        tmp.mkdir(parents=True)
        shutil.copy(latest_checkpoint(out_dir / "checkpoints") / "model.safetensors", tmp / "model.safetensors")
        parallel.unwrap(policy).config.save_pretrained(tmp)
        parallel.unwrap(policy).generation_config.save_pretrained(tmp)
    else:
        policy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


if __name__ == "__main__":
    main()
