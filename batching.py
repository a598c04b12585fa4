"""batching.py -- how the GRPO step's loss rows go through the model within a memory budget. Off the
reader's path: the loss is the same sum over rows whichever way they are grouped (logprobs.py holds
the log-probs it is computed from, grpo.py the loss).

    micro_batches(lengths, max_rows, max_tokens, packed)   rows grouped under a token budget
    batch_logprobs(model, ids, att, cmask, cfg, device, grad, packed)   one micro-batch's [n, C] log-probs
    packed_logprobs(...)        `sequence_logprobs`'s result, padding-free (positions restart per sequence)
    uses_packing(model, cfg)    whether micro-batches are packed (--packing auto: under flash-attention)
    trim(ids, att, cmask)       a micro-batch without its all-padding columns
    scatter_rows(parts, mbs, like)   micro-batch results back into one [N, C] in row order
    set_activation_checkpointing(model, on)   recompute decoder activations in backward

Imports torch, config (GRPOConfig), logprobs and parallel (an FSDP2 root is called through parallel.call).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

import parallel
from config import GRPOConfig
from logprobs import decoder_and_head, sequence_logprobs, token_logprobs


def uses_packing(model, cfg: GRPOConfig) -> bool:
    """Packed micro-batches pay off only where attention runs per sequence (flash-attention varlen);
    under sdpa/eager a packed row needs a [T, T] block mask, more work than padding similar lengths."""
    if cfg.packing != "auto":
        return cfg.packing == "on"
    return str(getattr(parallel.unwrap(model).config, "_attn_implementation", "")).startswith("flash_attention")


def _autocast(device: torch.device, cfg: GRPOConfig):
    if device.type == "cuda" and cfg.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch_logprobs(model, ids, att, cmask, cfg, device, grad: bool, packed: bool = False) -> torch.Tensor:
    """Log-probs [n, C] of one micro-batch; `model` may be an FSDP2 root (parallel.call)."""
    with torch.set_grad_enabled(grad), _autocast(device, cfg):
        if packed:
            return parallel.call(model, packed_logprobs, ids, att, cmask, temperature=cfg.temperature,
                                 chunk_size=cfg.logprob_chunk)
        ids_t, att_t, cm_t = trim(ids, att, cmask)
        lp = parallel.call(model, sequence_logprobs, ids_t, att_t, cm_t, temperature=cfg.temperature,
                           chunk_size=cfg.logprob_chunk)
    return F.pad(lp, (0, cmask.shape[1] - lp.shape[1]))  # back to [n, C]


def packed_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    completion_mask: torch.Tensor, *, temperature: float = 1.0,
                    chunk_size: int = 1024) -> torch.Tensor:
    """`sequence_logprobs` without padding: the real tokens of all N rows are concatenated into one
    row [1, sum L_i] with positions restarting at 0 for each sequence and no attention mask, so
    transformers attends within each sequence only (flash-attention varlen, or a block-diagonal mask
    for sdpa/eager). Same inputs, same [N, C] result."""
    decoder, head = decoder_and_head(model)
    c = completion_mask.shape[1]
    if not torch.equal(attention_mask[:, -c:].bool(), completion_mask.bool()):
        raise ValueError("packed_logprobs needs the attention mask of the completion columns to equal the "
                         "completion mask (as sample_rollouts builds it)")
    real = attention_mask.bool()  # [N, P + C]: prompt tokens and the completion up to its stop token
    lengths = real.sum(1)  # [N]
    flat = input_ids[real]  # [T] row-major, so each row's tokens stay in order
    starts = lengths.cumsum(0) - lengths  # [N]
    position_ids = torch.arange(len(flat), device=flat.device) - starts.repeat_interleave(lengths)  # [T]
    hidden = decoder(input_ids=flat[None], position_ids=position_ids[None],
                     use_cache=False).last_hidden_state[0]  # [T, H]
    n_comp = completion_mask.sum(1).long()  # [N]
    # completion token j of row i sits at flat index starts_i + L_i - n_comp_i + j; its state one before
    first = (starts + lengths - n_comp).repeat_interleave(n_comp)  # [n_tok]
    within = torch.arange(int(n_comp.sum()), device=flat.device) - (n_comp.cumsum(0) - n_comp).repeat_interleave(n_comp)
    at = first + within  # [n_tok]
    lp = token_logprobs(hidden[at - 1], flat[at], head, temperature=temperature, chunk_size=chunk_size)
    on = torch.arange(c, device=flat.device)[None] < n_comp[:, None]  # [N, C]
    return torch.zeros(on.shape, dtype=torch.float32, device=lp.device).masked_scatter(on, lp)  # [N, C]


def micro_batches(lengths: list[int], *, max_rows: int, max_tokens: int = 0, packed: bool = False) -> list[list[int]]:
    """Split rows into micro-batches of at most `max_rows` rows and `max_tokens` tokens (0: no budget).

    Without a budget the rows stay in order, `max_rows` at a time. With one, rows are sorted by
    length (longest first) and filled greedily: a padded micro-batch costs rows x its longest row, a
    packed one the sum of its lengths; a row longer than the budget goes alone. The step's gradient
    is a sum over rows with one global denominator, so the grouping changes only float rounding.
    """
    if max_tokens <= 0:
        return [list(range(s, min(s + max_rows, len(lengths)))) for s in range(0, len(lengths), max_rows)]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    cur: list[int] = []
    cost = 0
    for i in order:
        new_cost = cost + lengths[i] if packed else (len(cur) + 1) * max(lengths[cur[0]] if cur else 0, lengths[i])
        if cur and (len(cur) >= max_rows or new_cost > max_tokens):
            out.append(cur)
            cur, new_cost = [], lengths[i]
        cur.append(i)
        cost = new_cost
    if cur:
        out.append(cur)
    return out


def trim(ids, att, cmask):
    """Drop columns that are padding for every row of a micro-batch (left of prompts, right of completions)."""
    first = int(att.any(0).long().argmax())
    c_keep = int(cmask.any(0).nonzero().max()) + 1 if cmask.any() else 1
    p = ids.shape[1] - cmask.shape[1]
    cut = p + c_keep
    return ids[:, first:cut], att[:, first:cut], cmask[:, :c_keep]


def scatter_rows(parts: list[torch.Tensor], mbs: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Micro-batch results [n_m, C] back into one [N, C] in the rows' original order."""
    out = torch.zeros(like.shape, dtype=torch.float32, device=parts[0].device)
    for part, m in zip(parts, mbs):
        out[m.to(out.device)] = part
    return out


def set_activation_checkpointing(model, on: bool) -> None:
    """Recompute decoder activations in backward (or stop). transformers 5 calls it activation
    checkpointing and deprecates the gradient_checkpointing_* names that 4.x has."""
    new = hasattr(model, "activation_checkpointing_enable")
    if not on:
        (model.activation_checkpointing_disable if new else model.gradient_checkpointing_disable)()
    elif new:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

