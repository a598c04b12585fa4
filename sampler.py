"""sampler.py -- the one sampler: every completion in SAERL (GRPO rollouts, benchmark evaluation,
rollout difficulty/quality labels, the toy world's greedy answers) is decoded here.

    rollout_model(policy, dtype)   the copy that generates (bf16 on CUDA); refresh_rollout_model after each update
    sample_rollouts(model, tok, prompts, group_size=G, ...) -> Rollouts   (the GRPO step's input)
    complete(model, tok, prompts, n=..., temperature=...) -> texts        (evaluation, labels, toy)

Sampling is softmax(logits / temperature) with optional top-p; temperature 0 is greedy. Every decoding knob
a model's generation_config may carry (top-k 20, repetition penalty 1.05 on Qwen) is switched off, so the
distribution is exactly the one `logprobs.sequence_logprobs` scores. The engines (`engine=`: compact, our
loop with a preallocated KV cache, the default; hf, transformers' `generate`; graph, CUDA graphs) live off the
reader's path in decode_engines.py and graph_decode.py. Imports torch, data (stop tokens), runtime, those two.
"""
from __future__ import annotations

import copy
import functools
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import graph_decode
from data import stop_token_ids
from decode_engines import decode, decode_hf
from runtime import pad_safe_attention

ENGINES = ("compact", "hf", "graph")


@dataclass
class Rollouts:
    """B x G completions, rows prompt-major (row b * G + g)."""
    input_ids: torch.Tensor        # [N, P + C] left-padded prompt + right-padded completion
    attention_mask: torch.Tensor   # [N, P + C]
    completion_mask: torch.Tensor  # [N, C] 1 up to and including the first stop token
    truncated: torch.Tensor        # [N] bool: no stop token within max_new_tokens
    texts: list[str]               # decoded completions, special tokens skipped
    sampler_logprobs: torch.Tensor | None = None  # [N, C] log-prob of each token when it was sampled

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(1)  # [N]


# The rollout copy of the policy
def rollout_model(policy, dtype: str = "auto"):
    """The model that generates. dtype "auto": a bf16 copy on CUDA, the policy itself elsewhere;
    "policy": the policy itself (fp32 weights, generation under bf16 autocast on CUDA);
    "bfloat16" / "float16" / "float32": a frozen copy in that dtype (~2 bytes/param in bf16)."""
    device = next(policy.parameters()).device
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "policy"
    if dtype == "policy":
        return policy
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"rollout dtype {dtype!r}; expected auto, policy, bfloat16, float16 or float32")
    return copy.deepcopy(policy).to(getattr(torch, dtype)).eval().requires_grad_(False)


@torch.no_grad()
def refresh_rollout_model(rollout, policy) -> None:
    """Copy the policy's (just updated) weights into the rollout copy, casting to its dtype. Under
    FSDP2 every rank calls it: each parameter is all-gathered once per update, not per token."""
    if rollout is policy:
        return
    for dst, src in zip(rollout.parameters(), policy.parameters(), strict=True):
        dst.copy_(src.full_tensor() if hasattr(src, "full_tensor") else src)  # an FSDP2 shard: gather it


def context_length(model) -> int | None:
    """Positions the model was trained for (max_position_embeddings), None when its config has none."""
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


# Texts in, texts out (evaluation, rollout labels, the toy)
def complete(model, tokenizer, prompts: list[str], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
             max_new_tokens: int = 1024, batch_size: int = 8, seed: int = 0, engine: str = "compact",
             stop_ids: list[int] | None = None) -> list[list[str]]:
    """n completions per prompt, decoded without the prompt and the stop token. Greedy (temperature
    0) decodes once and repeats it n times; sampling is seeded by `seed` alone."""
    stop_ids = stop_ids or stop_token_ids(model, tokenizer)
    per_prompt = n if temperature > 0 else 1
    context = context_length(model)
    out: list[list[str]] = []
    cut = []  # (first prompt of a call, its budget) where prompt + max_new_tokens would pass the context
    for s in range(0, len(prompts), batch_size):
        budget = max_new_tokens
        if context is not None:
            longest = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts[s:s + batch_size])
            if longest >= context:
                raise ValueError(f"prompt {s}..{s + batch_size - 1} of {len(prompts)}: {longest} tokens, the "
                                 f"model's whole context ({context} positions) or more")
            budget = min(max_new_tokens, context - longest)
            if budget < max_new_tokens:
                cut.append((s, budget))
        roll = sample_rollouts(model, tokenizer, prompts[s:s + batch_size], group_size=per_prompt,
                               temperature=temperature, top_p=top_p, max_new_tokens=budget,
                               gen_batch_size=batch_size, seed=seed + s, stop_ids=stop_ids, engine=engine)
        for i in range(0, len(roll.texts), per_prompt):
            group = roll.texts[i:i + per_prompt]
            out.append(group if per_prompt == n else group * n)
    if cut:
        print(f"sampler.complete: {len(cut)} of {-(-len(prompts) // batch_size)} generate calls had their "
              f"completion budget cut below max_new_tokens {max_new_tokens} to fit the model's context of "
              f"{context} positions (first: prompts from {cut[0][0]}, budget {cut[0][1]})", file=sys.stderr)
    return out


# Prompts in, rollouts out (the GRPO step)
def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        att[i, width - len(r):] = 1
    return ids, att


@torch.no_grad()
def sample_rollouts(model, tokenizer, prompts: list[str], *, group_size: int, temperature: float = 1.0,
                    top_p: float = 1.0, max_new_tokens: int, gen_batch_size: int, seed: int,
                    stop_ids: list[int] | None = None, engine: str = "compact", check_every: int = 32) -> Rollouts:
    """Sample `group_size` completions per prompt on token ids (never re-tokenising decoded text). Prompts go
    to the engine `gen_batch_size` at a time (each expanded to G rows). The result depends only on (weights,
    prompts, seed, engine): the global RNG is neither read nor moved."""
    if engine not in ENGINES:
        raise ValueError(f"rollout engine {engine!r}; expected one of {ENGINES}")
    stop_ids = stop_ids or stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if any(len(e) == 0 for e in encoded):
        raise ValueError("an empty prompt was given to sample_rollouts")
    context = context_length(model)
    longest = max(len(e) for e in encoded)
    if context is not None and longest + max_new_tokens > context:
        raise ValueError(f"a prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the model's "
                         f"context of {context} positions (max_position_embeddings); skip longer prompts "
                         "(grpo.train and evaluate do) or lower the completion budget")
    pad_safe_attention(model)  # the prefill's left-padding rows must not be fully masked (NaN on CUDA)
    device = next(model.parameters()).device
    prompt_ids, prompt_att = _left_pad(encoded, pad_id)  # [B, P]
    comps, logps = [], []
    was_training = model.training
    model.eval()
    try:
        for k, s in enumerate(range(0, len(prompts), gen_batch_size)):
            ids = prompt_ids[s:s + gen_batch_size].to(device)  # [b, P]
            att = prompt_att[s:s + gen_batch_size].to(device)
            run = {"hf": decode_hf, "compact": decode,
                   "graph": functools.partial(graph_decode.decode, check_every=check_every)}[engine]
            tokens, lp = run(model, ids, att, group_size=group_size, temperature=temperature, top_p=top_p,
                             max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id,
                             seed=seed + 7_919 * k)  # [b * G, C]
            comps.append(tokens)
            logps.append(lp)
    finally:
        model.train(was_training)
    c = max(x.shape[1] for x in comps)
    comp = torch.cat([F.pad(x, (0, c - x.shape[1]), value=pad_id) for x in comps])  # [N, C]
    is_stop = torch.isin(comp, torch.tensor(stop_ids, device=comp.device)).long()
    cmask = ((is_stop.cumsum(1) - is_stop) == 0).long()  # up to and including the first stop token
    truncated = ~(is_stop.bool() & cmask.bool()).any(1)  # [N]
    sampler_lp = None
    if all(x is not None for x in logps):
        sampler_lp = torch.cat([F.pad(x, (0, c - x.shape[1])) for x in logps]) * cmask  # [N, C]
    prompt_ids = prompt_ids.repeat_interleave(group_size, 0).to(comp.device)
    prompt_att = prompt_att.repeat_interleave(group_size, 0).to(comp.device)
    texts = tokenizer.batch_decode([row[m.bool()].tolist() for row, m in zip(comp, cmask)], skip_special_tokens=True)
    return Rollouts(input_ids=torch.cat([prompt_ids, comp], 1), attention_mask=torch.cat([prompt_att, cmask], 1),
                    completion_mask=cmask, truncated=truncated, texts=texts, sampler_logprobs=sampler_lp)
