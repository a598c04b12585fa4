"""logprobs.py -- the token log-probs of sampled completions under a model: what the GRPO loss, the
importance weight and the sampler/trainer gap are computed from.

    token_logprobs(hidden, targets, head, temperature, chunk_size)   lm head + log-softmax, chunked
    sequence_logprobs(model, input_ids, attention_mask, completion_mask, ...)   padded rows -> [N, C]
    packed_logprobs(...)        the same result, padding-free (positions restart per sequence)
    micro_batches(lengths, max_rows, max_tokens, packed)   rows grouped under a token budget
    trim(ids, att, cmask)       a micro-batch without its all-padding columns

Imports: runtime (pad-safe attention). grpo.py calls these once per micro-batch; sampler.py's log-probs
must equal `sequence_logprobs` (tests/test_sampler.py).
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from runtime import pad_safe_attention


def token_logprobs(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, *, temperature: float = 1.0,
                   chunk_size: int = 1024) -> torch.Tensor:
    """log softmax(head(hidden) / T)[target] for a flat list of positions: hidden [n, H], targets [n] -> [n].

    logit[target] - logsumexp(logits), in float32, `chunk_size` positions at a time; in backward each
    chunk is recomputed (checkpoint), so at most one [chunk, V] float32 block of logits (plus the
    softmax temporary) exists at any time, whatever the sequence lengths.
    """
    def chunk(h, y):
        logits = head(h).float() / temperature  # [c, V] float32 whatever the autocast dtype
        return logits.gather(-1, y[:, None]).squeeze(-1) - logits.logsumexp(-1)  # [c]

    out = []
    for s in range(0, len(targets), chunk_size):
        h, y = hidden[s:s + chunk_size], targets[s:s + chunk_size]
        if torch.is_grad_enabled() and len(targets) > chunk_size:
            out.append(checkpoint(chunk, h, y, use_reentrant=False))
        else:
            out.append(chunk(h, y))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def _split_model(model):
    decoder, head = model.base_model, model.get_output_embeddings()
    if decoder is model or head is None:
        raise TypeError(f"{type(model).__name__} needs a base model and an output embedding (a *ForCausalLM)")
    return decoder, head


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      completion_mask: torch.Tensor, *, temperature: float = 1.0,
                      chunk_size: int = 1024) -> torch.Tensor:
    """Log-probs of the completion tokens under `model`, padded layout. Returns [N, C], 0 where
    completion_mask is 0.

    input_ids, attention_mask: [N, P + C], prompts left-padded, completions in the last C columns;
    completion_mask: [N, C]. Positions follow the attention mask (as in `generate`), so left padding
    does not shift them. The decoder runs once; the lm head and the float32 log-softmax run only on
    the real completion positions (`token_logprobs`).
    """
    n, width = input_ids.shape
    c = completion_mask.shape[1]
    if completion_mask.shape[0] != n or c >= width:
        raise ValueError(f"completion_mask {tuple(completion_mask.shape)} does not fit input_ids "
                         f"{tuple(input_ids.shape)}: expected [N, C] with C < sequence length")
    decoder, head = _split_model(pad_safe_attention(model))  # padding rows attend to something: no NaN on CUDA
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [N, P + C]
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     use_cache=False).last_hidden_state  # [N, P + C, H]
    p = width - c
    on = completion_mask.bool()  # [N, C]
    # the state at t predicts token t + 1: completion token j of a row is read from column p - 1 + j
    lp = token_logprobs(hidden[:, p - 1: width - 1][on], input_ids[:, p:][on], head,
                        temperature=temperature, chunk_size=chunk_size)  # [n_tok]
    return torch.zeros(on.shape, dtype=torch.float32, device=lp.device).masked_scatter(on, lp)  # [N, C]


def packed_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    completion_mask: torch.Tensor, *, temperature: float = 1.0,
                    chunk_size: int = 1024) -> torch.Tensor:
    """`sequence_logprobs` without padding: the real tokens of all N rows are concatenated into one
    row [1, sum L_i] with positions restarting at 0 for each sequence and no attention mask, so
    transformers attends within each sequence only (flash-attention varlen, or a block-diagonal mask
    for sdpa/eager). Same inputs, same [N, C] result."""
    decoder, head = _split_model(model)
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
