"""decode_engines.py -- the `compact` and `hf` rollout engines that sampler.sample_rollouts calls
(graph_decode.py is the third). Off the reader's path: how tokens are decoded fast, not what is sampled.

    decode(model, ids, att, ...)      the compact engine: token ids in, (tokens, sampler log-probs) out
    decode_hf(model, ids, att, ...)   transformers' `generate`, the reference (no log-probs)
    autocast_for(model)               bf16 autocast for an fp32 model on CUDA

compact: the KV cache is preallocated once per call (no per-token concatenation: `DynamicCache`
re-copies the whole cache every token) and rows that have finished leave the batch: when at most
3/4 of the cache rows are still running, the live rows are moved to the front and the rest are no
longer computed. The log-prob of every sampled token under the sampling distribution comes for free
(the trainer compares it with its own: the sampler/trainer gap, and the truncated importance weight).
hf: `model.generate` with every decoding knob off (greedy tokens must equal compact's).
Imports torch, transformers and runtime (NonFiniteError, cache_kwarg).
"""
from __future__ import annotations

import contextlib

import torch

from runtime import NonFiniteError, cache_kwarg

COMPACT_AT = 0.75  # compact the cache when live rows <= this fraction of its rows


def autocast_for(model):
    """bf16 autocast for an fp32 model on CUDA (the `policy` rollout dtype); a no-op otherwise."""
    p = next(model.parameters())
    if p.device.type == "cuda" and p.dtype == torch.float32:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
