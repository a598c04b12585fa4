"""sampler.py -- the one sampler: every completion in SAERL (GRPO rollouts, benchmark evaluation,
rollout difficulty/quality labels, the toy world's greedy answers) is decoded here.

Owns: the rollout copy of the policy, the decoding engines, and `Rollouts`. Imports only
torch, transformers, `data` (stop tokens) and `runtime` (the pad-safe attention); nothing imports it back but grpo/evaluate/toy.

    rollout_model(policy, dtype)        the copy that generates (bf16 on CUDA: both KV caches bf16,
                                        no per-step autocast); refresh_rollout_model after each update
    decode(model, prompt_ids, ...)      token ids in, (tokens, sampler log-probs, truncated) out
    sample_rollouts(model, tok, prompts, group_size=G, ...) -> Rollouts   (the GRPO step's input)
    complete(model, tok, prompts, n=..., temperature=...) -> texts        (evaluation, labels, toy)

Engines (`engine=`):
    compact  our decode loop (default). The KV cache is preallocated once per call (no per-token
             concatenation: `DynamicCache` re-copies the whole cache every token) and rows that have
             finished leave the batch: when at most 3/4 of the cache rows are still running, the live
             rows are moved to the front and the rest are no longer computed. The log-prob of every
             sampled token under the sampling distribution comes for free (the trainer compares it
             with its own: the sampler/trainer gap, and the truncated importance weight).
    hf       transformers' `generate` (the reference: greedy tokens must equal compact's).
    graph    graph_decode.py: a fixed-shape decode step captured as CUDA graphs, sampling by an
             exponential race, the host looking in every `check_every` tokens (greedy tokens equal
             compact's; sampled tokens follow the same distribution with other draws).
Sampling is softmax(logits / temperature) with optional top-p; temperature 0 is greedy. Every
decoding knob a model's generation_config may carry (top-k 20, repetition penalty 1.05 on Qwen) is
switched off, so the distribution is exactly the one `logprobs.sequence_logprobs` scores.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import graph_decode
from data import stop_token_ids
from runtime import NonFiniteError, cache_kwarg, pad_safe_attention

ENGINES = ("compact", "hf", "graph")
COMPACT_AT = 0.75  # compact the cache when live rows <= this fraction of its rows


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


# ----------------------------------------------------------------------------------------------
# The rollout copy of the policy
# ----------------------------------------------------------------------------------------------
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


def autocast_for(model):
    """bf16 autocast for an fp32 model on CUDA (the `policy` rollout dtype); a no-op otherwise."""
    p = next(model.parameters())
    if p.device.type == "cuda" and p.dtype == torch.float32:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# Texts in, texts out (evaluation, rollout labels, the toy)
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Prompts in, rollouts out (the GRPO step)
# ----------------------------------------------------------------------------------------------
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
    """Sample `group_size` completions per prompt on token ids (never re-tokenising decoded text).

    Prompts go to the engine `gen_batch_size` at a time (each expanded to G rows). The result
    depends only on (weights, prompts, seed, engine): the global RNG is neither read nor moved.
    """
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
    stop = torch.tensor(stop_ids, device=comp.device)
    is_stop = torch.isin(comp, stop).long()
    cmask = ((is_stop.cumsum(1) - is_stop) == 0).long()  # up to and including the first stop token
    truncated = ~(is_stop.bool() & cmask.bool()).any(1)  # [N]
    sampler_lp = None
    if all(x is not None for x in logps):
        sampler_lp = torch.cat([F.pad(x, (0, c - x.shape[1])) for x in logps]) * cmask  # [N, C]
    prompt_ids = prompt_ids.repeat_interleave(group_size, 0).to(comp.device)
    prompt_att = prompt_att.repeat_interleave(group_size, 0).to(comp.device)
    texts = tokenizer.batch_decode([row[m.bool()].tolist() for row, m in zip(comp, cmask)],
                                   skip_special_tokens=True)
    return Rollouts(input_ids=torch.cat([prompt_ids, comp], 1), attention_mask=torch.cat([prompt_att, cmask], 1),
                    completion_mask=cmask, truncated=truncated, texts=texts, sampler_logprobs=sampler_lp)


# ----------------------------------------------------------------------------------------------
# Engine "compact": our decode loop
# ----------------------------------------------------------------------------------------------
def _next_token(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator):
    """logits [n, V] -> (token [n], its log-prob [n]) under softmax(logits / T) (T=1 when greedy)."""
    logp = (logits.float() / (temperature if temperature > 0 else 1.0)).log_softmax(-1)  # [n, V] fp32
    if temperature <= 0:
        token = logp.argmax(-1)
    else:
        probs = logp.exp()
        if top_p < 1.0:  # nucleus: keep the smallest prefix of the sorted distribution that reaches top_p
            sorted_p, order = probs.sort(-1, descending=True)
            drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        if not torch.isfinite(probs).all() or (probs.sum(-1) <= 0).any():
            raise NonFiniteError("sampling failed: the next-token probabilities are non-finite (NaN/inf weights?)")
        token = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    return token, logp.gather(-1, token[:, None]).squeeze(1)


def _slab_cache(model, rows: int, capacity: int):
    """A KV cache whose layers write into buffers preallocated for `capacity` positions."""
    try:
        from transformers.cache_utils import Cache, DynamicLayer
    except ImportError as e:  # transformers before the layered Cache API
        raise RuntimeError("the compact rollout engine needs a transformers with the layered KV-cache API "
                           "(transformers.cache_utils.DynamicLayer): upgrade transformers, or pass "
                           "--rollout-engine hf") from e

    class SlabLayer(DynamicLayer):
        """One layer's keys/values in [rows, kv_heads, capacity, head_dim] buffers; `keys` is the
        filled prefix (a view, so attention reads only real positions and nothing is re-copied)."""

        def lazy_initialization(self, key_states, value_states):
            self.device = key_states.device
            shape = (rows, key_states.shape[1], capacity, key_states.shape[3])
            self.k_buf = key_states.new_empty(shape)
            self.v_buf = value_states.new_empty(shape[:3] + (value_states.shape[3],))
            self.rows, self.length, self.is_initialized = key_states.shape[0], 0, True  # rows in use

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[2]
            self.k_buf[:self.rows, :, self.length:end] = key_states
            self.v_buf[:self.rows, :, self.length:end] = value_states
            self.length = end
            self.keys, self.values = self.k_buf[:self.rows, :, :end], self.v_buf[:self.rows, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def repeat_rows(self, n: int, repeats: int) -> None:
            """Rows 0..n-1 -> each repeated `repeats` times (row i to rows i*r..i*r+r-1), in place,
            from the last row down so that no row is overwritten before it is copied."""
            for buf in (self.k_buf, self.v_buf):
                for i in range(n - 1, -1, -1):
                    buf[i * repeats:(i + 1) * repeats, :, :self.length] = buf[i:i + 1, :, :self.length]
            self.rows = n * repeats
            self.keys, self.values = self.k_buf[:self.rows, :, :self.length], self.v_buf[:self.rows, :, :self.length]

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            """Keep rows `indices` (ascending), moved to the front in place, 64 rows at a time:
            row j is written from row indices[j] >= j, so nothing is overwritten before it is read."""
            for buf in (self.k_buf, self.v_buf):
                for s in range(0, len(indices), 64):
                    idx = indices[s:s + 64]
                    buf[s:s + len(idx), :, :self.length] = buf[idx, :, :self.length]
            self.rows = len(indices)
            self.keys, self.values = self.k_buf[:self.rows, :, :self.length], self.v_buf[:self.rows, :, :self.length]

    n_layers = model.config.get_text_config().num_hidden_layers
    return Cache(layers=[SlabLayer() for _ in range(n_layers)])


def _generator(device: torch.device, seed: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed % (2 ** 63))
    return gen


@torch.no_grad()
def decode(model, ids: torch.Tensor, att: torch.Tensor, *, group_size: int = 1, temperature: float,
           top_p: float, max_new_tokens: int, stop_ids: list[int], pad_id: int,
           seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The compact engine. ids, att [b, P] left-padded -> (tokens [b * G, C], log-probs [b * G, C]),
    rows prompt-major; a row's tokens after its first stop token are `pad_id` (log-prob 0).

    Each prompt is prefilled once and its cache rows copied G times (the G completions share it).
    """
    b, p = ids.shape
    n = b * group_size
    device = ids.device
    gen = _generator(device, seed)
    stop = torch.tensor(stop_ids, device=device)
    cache = _slab_cache(model, n, p + max_new_tokens)
    with_cache = {cache_kwarg(model): cache, "use_cache": True}
    tokens = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=device)  # [n, C]
    logps = torch.zeros((n, max_new_tokens), dtype=torch.float32, device=device)       # [n, C]
    rows = torch.arange(n, device=device)  # cache row i holds original row rows[i]
    live = torch.ones(n, dtype=torch.bool, device=device)  # [rows in cache] still generating
    positions = (att.cumsum(-1) - 1).clamp(min=0)  # [b, P], positions follow the mask as in `generate`
    with autocast_for(model):
        logits = model(input_ids=ids, attention_mask=att, position_ids=positions,
                       logits_to_keep=1, **with_cache).logits[:, -1]  # [b, V]
    if group_size > 1:
        for layer in cache.layers:
            layer.repeat_rows(b, group_size)
        logits, positions, att = (x.repeat_interleave(group_size, 0) for x in (logits, positions, att))
    att = torch.cat([att, att.new_ones(n, max_new_tokens)], 1)  # [n, P + C]; step t reads its first P + t + 1
    next_pos = positions[:, -1] + 1  # [n]
    steps = 0
    for t in range(max_new_tokens):
        token, lp = _next_token(logits, temperature, top_p, gen)  # [rows]
        tokens[rows[live], t] = token[live]
        logps[rows[live], t] = lp[live]
        steps = t + 1
        live &= ~torch.isin(token, stop)
        n_live = int(live.sum())
        if n_live == 0 or t == max_new_tokens - 1:
            break
        if n_live <= COMPACT_AT * len(rows):  # drop finished rows from the batch and the cache
            keep = live.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, token, next_pos, att = rows[keep], token[keep], next_pos[keep], att[keep]
            live = live[keep]
        with autocast_for(model):
            logits = model(input_ids=token[:, None], attention_mask=att[:, :p + t + 1], position_ids=next_pos[:, None],
                           **with_cache).logits[:, -1]  # [rows, V]
        next_pos = next_pos + 1
    return tokens[:, :steps], logps[:, :steps]


# ----------------------------------------------------------------------------------------------
# Engine "hf": transformers' generate, the reference
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def decode_hf(model, ids: torch.Tensor, att: torch.Tensor, *, group_size: int = 1, temperature: float,
              top_p: float, max_new_tokens: int, stop_ids: list[int], pad_id: int,
              seed: int) -> tuple[torch.Tensor, None]:
    """`model.generate` on every prompt repeated G times, with every other decoding knob off. It
    reports no per-token log-probs."""
    from transformers import GenerationConfig

    ids, att = ids.repeat_interleave(group_size, 0), att.repeat_interleave(group_size, 0)  # [b * G, P]
    sample = temperature > 0
    cfg = GenerationConfig(
        do_sample=sample, temperature=temperature if sample else 1.0, top_p=top_p if sample else 1.0, top_k=0,
        min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0,
        no_repeat_ngram_size=0, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0,
        eos_token_id=stop_ids, pad_token_id=pad_id)
    devices = [ids.device] if ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed % (2 ** 63))
        try:
            with autocast_for(model):
                out = model.generate(input_ids=ids, attention_mask=att, generation_config=cfg)
        except RuntimeError as e:
            if "probability tensor" not in str(e):
                raise
            raise NonFiniteError(f"sampling failed: the policy's next-token probabilities are non-finite "
                                 f"(NaN/inf weights?) ({e})") from e
    return out[:, ids.shape[1]:], None
