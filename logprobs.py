"""logprobs.py -- the token log-probs of sampled completions under a model: what the GRPO loss, the
importance weight and the sampler/trainer gap are computed from.

    token_logprobs(hidden, targets, head, temperature, chunk_size)   lm head + log-softmax, chunked
    sequence_logprobs(model, input_ids, attention_mask, completion_mask, ...)   padded rows -> [N, C]

Imports: runtime (pad-safe attention). sampler.py's log-probs must equal `sequence_logprobs`
(tests/test_sampler.py); batching.py holds its padding-free twin and the micro-batches.
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
    softmax temporary) exists at any time, whatever the sequence lengths."""
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


def decoder_and_head(model):
    decoder, head = getattr(model, "base_model", model), getattr(model, "get_output_embeddings", lambda: None)()
    if decoder is model or head is None:
        raise TypeError(f"{type(model).__name__} needs a base model and an output embedding (a *ForCausalLM)")
    return decoder, head


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor, *,
                      temperature: float = 1.0, chunk_size: int = 1024) -> torch.Tensor:
    """Log-probs of the completion tokens under `model`, padded layout: [N, C], 0 where completion_mask is 0.

    input_ids, attention_mask: [N, P + C], prompts left-padded, completions in the last C columns;
    completion_mask: [N, C]. Positions follow the attention mask (as in `generate`), so left padding
    does not shift them. The decoder runs once; the lm head and the float32 log-softmax run only on
    the real completion positions (`token_logprobs`)."""
    n, width = input_ids.shape
    c = completion_mask.shape[1]
    if completion_mask.shape[0] != n or c >= width:
        raise ValueError(f"completion_mask {tuple(completion_mask.shape)} does not fit input_ids "
                         f"{tuple(input_ids.shape)}: expected [N, C] with C < sequence length")
    decoder, head = decoder_and_head(pad_safe_attention(model))  # padding rows attend to something: no NaN on CUDA
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [N, P + C]
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     use_cache=False).last_hidden_state  # [N, P + C, H]
    p = width - c
    on = completion_mask.bool()  # [N, C]
    # the state at t predicts token t + 1: completion token j of a row is read from column p - 1 + j
    lp = token_logprobs(hidden[:, p - 1: width - 1][on], input_ids[:, p:][on], head,
                        temperature=temperature, chunk_size=chunk_size)  # [n_tok]
    return torch.zeros(on.shape, dtype=torch.float32, device=lp.device).masked_scatter(on, lp)  # [N, C]
