"""graph_decode.py -- the `graph` rollout engine: a fixed-shape decode step with no host syncs,
captured once per shape as a CUDA graph and replayed for the rest of the run.

Why: generation is most of a GRPO step, and an eager decode loop is bound by the CPU, not the GPU.
Per decoded token transformers' forward launches ~1,000 small kernels and the compact engine waits
on the GPU about ten times (`.item()`, boolean masks, `nonzero`, multinomial's checks), so a 1.5B
policy's decode step costs 15-30 ms of launches and syncs for 3-5 ms of GPU work. gpt-fast showed
the way out in native PyTorch: a static KV cache and a decode step whose shapes never change, so
that the whole step is one CUDA graph replay.

    decode(model, ids, att, *, group_size, temperature, top_p, max_new_tokens, stop_ids, pad_id,
           seed, check_every=32, capture=None) -> (tokens [b*G, C], log-probs [b*G, C])
    decode_step(model, kv, state, rows, keys) -> (token, log-prob, finite)   one step, the captured part
    sample_token(logits, temperature, top_p, noise) -> (token, log-prob, finite)   the exponential race

How (Qwen2 / Llama-family decoders: each layer an RMSNorm, q/k/v/o projections with RoPE, an MLP):
- Prefill runs through the model's own forward (left-padded, pad-safe attention), once per prompt;
  its keys and values are copied G times into static buffers [rows, kv_heads, capacity, head_dim].
- A decode step is written out here from the model's modules (embedding, norms, projections,
  rotary embedding, MLP, lm head): the new key/value is written at one column of the buffers
  (`index_copy_`, the same column for every row: prompts are left-padded to a common width), and
  attention reads the first `keys` columns (a multiple of KEY_BUCKET) under a boolean key mask,
  the query heads that share a KV head stacked as that head's queries (no `repeat_kv` copies).
- Shapes come from two ladders: rows in use are a power of two (finished rows leave at the checks,
  below) and key columns a multiple of KEY_BUCKET, so a 3000-token rollout meets a few dozen shapes,
  each captured once (CUDA) and replayed; on a CPU the same step runs eagerly.
- Sampling is an exponential race: token = argmax_i (log p_i - log E_i), E_i ~ Exp(1) i.i.d., draws
  exactly from p (tempered, top-p truncated) with no multinomial, no `.item()`, no boolean indexing.
  The noise comes from the engine's own generator, so the result depends on (weights, prompts,
  seed) alone, as for the other engines (the draws differ from the compact engine's multinomial).
- The host looks at the GPU once every `check_every` tokens: are the logits finite, is any row
  still running, and should the rows be compacted (moved to the front and the row count dropped to
  the next power of two). Between checks nothing waits on the GPU.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from runtime import NonFiniteError, cache_kwarg, pad_safe_attention

KEY_BUCKET = 256  # attention reads the cache in multiples of this many columns
SUPPORTED = ("qwen2", "llama", "mistral", "qwen3")


def _text_model(model):
    """(decoder, config) of a *ForCausalLM whose layers this engine can run, else a clear error."""
    config = model.config.get_text_config()
    kind = getattr(config, "model_type", "")
    decoder = getattr(model, "model", None)
    layer = decoder.layers[0] if decoder is not None and hasattr(decoder, "layers") else None
    names = ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")
    if kind not in SUPPORTED or layer is None or not all(hasattr(layer, n) for n in names):
        raise ValueError(f"the graph rollout engine runs Qwen2 / Llama-family decoders ({', '.join(SUPPORTED)}); "
                         f"{type(model).__name__} ({kind!r}) is not one: pass --rollout-engine compact")
    if "sliding_attention" in (getattr(config, "layer_types", None) or []):
        raise ValueError("the graph rollout engine has no sliding-window attention: pass --rollout-engine compact")
    if hasattr(layer.self_attn, "q_norm"):  # Qwen3 normalises q and k per head, which this step does not
        raise ValueError("the graph rollout engine does not run per-head q/k norms (Qwen3): pass "
                         "--rollout-engine compact")
    return decoder, config


# ----------------------------------------------------------------------------------------------
# Sampling: the exponential race
# ----------------------------------------------------------------------------------------------
def sample_token(logits: torch.Tensor, temperature: float, top_p: float, noise: torch.Tensor | None):
    """logits [R, V] -> (token [R], its log-prob [R] under softmax(logits / T), finite [R] bool).

    Greedy when temperature <= 0 (noise unused). Otherwise `noise` [R, V] holds uniforms U in [0, 1)
    and the token is argmax_i (log p_i - log E_i) with E_i = -log U_i ~ Exp(1): the index of the first
    arrival among independent exponential clocks of rates p_i, which is i with probability p_i (the
    Gumbel-max trick in another form). Top-p sets log p_i = -inf outside the nucleus first. The
    reported log-prob is under the whole tempered distribution, as the trainer scores it.
    """
    logp = (logits.float() / (temperature if temperature > 0 else 1.0)).log_softmax(-1)  # [R, V]
    finite = torch.isfinite(logp).all(-1)  # [R]
    if temperature <= 0:
        token = logp.argmax(-1)
    else:
        scores = logp
        if top_p < 1.0:  # nucleus: keep the smallest prefix of the sorted distribution that reaches top_p
            sorted_logp, order = logp.sort(-1, descending=True)
            sorted_p = sorted_logp.exp()
            drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
            scores = logp.scatter(-1, order, sorted_logp.masked_fill(drop, float("-inf")))
        token = (scores - (-noise.log()).log()).argmax(-1)  # log E = log(-log U)
    return token, logp.gather(-1, token[:, None]).squeeze(1), finite


# ----------------------------------------------------------------------------------------------
# One decode step: fixed shapes, in-place cache writes, nothing read back by the host
# ----------------------------------------------------------------------------------------------
class StaticKV:
    """Per layer, keys and values in [max_rows, kv_heads, capacity, head_dim] buffers, a boolean key
    mask [max_rows, capacity] (True: a real token that may be attended), and the step's inputs as
    tensors at fixed addresses (the CUDA graphs read them there)."""

    def __init__(self, model, max_rows: int, capacity: int, vocab: int, device, dtype):
        _, config = _text_model(model)
        kv_heads = config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (max_rows, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.key_ok = torch.zeros((max_rows, capacity), dtype=torch.bool, device=device)
        self.token = torch.zeros(max_rows, dtype=torch.long, device=device)     # the token fed in
        self.position = torch.zeros(max_rows, dtype=torch.long, device=device)  # its position id
        self.column = torch.zeros(1, dtype=torch.long, device=device)           # its cache column
        self.noise = torch.zeros((max_rows, vocab), dtype=torch.float32, device=device)
        self.max_rows, self.capacity = max_rows, capacity

    def fits(self, rows: int, capacity: int, vocab: int) -> bool:
        return rows <= self.max_rows and capacity <= self.capacity and self.noise.shape[1] == vocab


def decode_step(model, kv: StaticKV, temperature: float, top_p: float, rows: int, keys: int):
    """The next token of the first `rows` rows, attending to the first `keys` cache columns.

    Reads kv.token / position / column / noise, writes the new keys and values at kv.column and marks
    that column attendable; returns (token [rows], log-prob [rows], finite [rows]). Every shape is
    fixed by (rows, keys), so the step can be captured as one CUDA graph.
    """
    decoder, _ = _text_model(model)
    h = decoder.embed_tokens(kv.token[:rows])[:, None]  # [R, 1, H]
    cos, sin = decoder.rotary_emb(h, kv.position[:rows, None])  # [R, 1, hd] each
    cos, sin = cos[:, None], sin[:, None]  # [R, 1, 1, hd]: broadcast over heads
    kv.key_ok[:rows].index_fill_(1, kv.column, True)
    mask = kv.key_ok[:rows, None, None, :keys]  # [R, 1, 1, K]
    for layer, k_buf, v_buf in zip(decoder.layers, kv.keys, kv.values):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        q = attn.q_proj(x).view(rows, 1, -1, attn.head_dim).transpose(1, 2)  # [R, heads, 1, hd]
        k = attn.k_proj(x).view(rows, 1, -1, attn.head_dim).transpose(1, 2)  # [R, kv_heads, 1, hd]
        v = attn.v_proj(x).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        k_buf[:rows].index_copy_(2, kv.column, k.to(k_buf.dtype))
        v_buf[:rows].index_copy_(2, kv.column, v.to(v_buf.dtype))
        out = _attend(q, k_buf[:rows, :, :keys], v_buf[:rows, :, :keys], mask, attn.scaling)  # [R, heads, 1, hd]
        h = h + attn.o_proj(out.transpose(1, 2).reshape(rows, 1, -1))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    logits = model.lm_head(decoder.norm(h))[:, 0]  # [R, V]
    return sample_token(logits, temperature, top_p, kv.noise[:rows])


def _rope(x, cos, sin):
    """Rotary position embedding (rotate-half form, as transformers' Llama / Qwen2)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), -1)
    return x * cos + rotated * sin


def _attend(q, k, v, mask, scale):
    """Attention of one new token per row, q [R, heads, 1, hd], over k, v [R, kv_heads, K, hd] with
    grouped KV heads and no copies: the heads that share a KV head become that head's "query
    positions" ([R, kv_heads, heads / kv_heads, hd]), so one SDPA call reads each key once (head h
    uses KV head h // (heads / kv_heads), as transformers' repeat_kv pairs them)."""
    rows, heads, _, head_dim = q.shape
    grouped = q.reshape(rows, k.shape[1], heads // k.shape[1], head_dim)
    out = F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask, scale=scale)  # mask [R, 1, 1, K]
    return out.reshape(rows, heads, 1, head_dim)


# ----------------------------------------------------------------------------------------------
# The loop: steps replayed, the host looking in every `check_every` tokens
# ----------------------------------------------------------------------------------------------
class _Graphs:
    """CUDA graphs of decode_step, one per (rows, keys), over one StaticKV, in one memory pool."""

    def __init__(self, model, kv: StaticKV, temperature: float, top_p: float):
        self.model, self.kv, self.temperature, self.top_p = model, kv, temperature, top_p
        self.graphs: dict = {}
        self.pool = torch.cuda.graph_pool_handle()

    def step(self, rows: int, keys: int):
        key = (rows, keys)
        if key not in self.graphs:
            run = lambda: decode_step(self.model, self.kv, self.temperature, self.top_p, rows, keys)  # noqa: E731
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the graph (lazy inits, autotuning)
                run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = run()
            self.graphs[key] = (graph, out)
        graph, out = self.graphs[key]
        graph.replay()
        return out


# A rollout model keeps its buffers and graphs between generate calls (its weights are refreshed in
# place after each update, so the graphs stay valid); they are dropped with the model.
_ENGINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _engine_state(model, rows: int, capacity: int, vocab: int, device, dtype, temperature, top_p, capture):
    state = _ENGINES.get(model)
    if (state is None or not state["kv"].fits(rows, capacity, vocab)
            or (state["temperature"], state["top_p"]) != (temperature, top_p)):
        if state is not None:
            del _ENGINES[model]
        kv = StaticKV(model, _pow2(rows), capacity, vocab, device, dtype)
        state = {"kv": kv, "temperature": temperature, "top_p": top_p,
                 "graphs": _Graphs(model, kv, temperature, top_p) if capture else None}
        _ENGINES[model] = state
    return state


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@torch.no_grad()
def decode(model, ids: torch.Tensor, att: torch.Tensor, *, group_size: int = 1, temperature: float,
           top_p: float, max_new_tokens: int, stop_ids: list[int], pad_id: int, seed: int,
           check_every: int = 32, capture: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The graph engine. ids, att [b, P] left-padded -> (tokens [b * G, C], log-probs [b * G, C]),
    rows prompt-major; a row's tokens after its first stop token are `pad_id` (log-prob 0).

    capture: CUDA graphs (default: on CUDA); otherwise the same step runs eagerly.
    """
    if check_every < 1:
        raise ValueError(f"check_every={check_every}; expected an integer >= 1")
    decoder, config = _text_model(model)
    b, p = ids.shape
    n = b * group_size
    device = ids.device
    capture = device.type == "cuda" if capture is None else capture
    vocab = model.get_output_embeddings().weight.shape[0]
    dtype = next(model.parameters()).dtype
    gen = torch.Generator(device=device)
    gen.manual_seed(seed % (2 ** 63))
    stop = torch.tensor(stop_ids, device=device)

    # Prefill: the model's own forward, each prompt once; keys and values copied G times.
    from transformers import DynamicCache

    pad_safe_attention(model)
    cache = DynamicCache()
    positions = (att.cumsum(-1) - 1).clamp(min=0)  # [b, P]
    logits = model(input_ids=ids, attention_mask=att, position_ids=positions, logits_to_keep=1, use_cache=True,
                   **{cache_kwarg(model): cache}).logits[:, -1]  # [b, V]
    state = _engine_state(model, n, p + max_new_tokens, vocab, device, dtype, temperature, top_p, capture)
    kv, graphs = state["kv"], state["graphs"]
    for layer, k_buf, v_buf in zip(cache.layers, kv.keys, kv.values):
        k_buf[:n, :, :p] = layer.keys.repeat_interleave(group_size, 0)
        v_buf[:n, :, :p] = layer.values.repeat_interleave(group_size, 0)
    kv.key_ok.zero_()
    kv.key_ok[:n, :p] = att.bool().repeat_interleave(group_size, 0)
    kv.key_ok[n:, 0] = True  # rows beyond n are padding: they attend to something, and are never read
    del cache

    rows = _pow2(n)  # rows computed per step; cache row i holds original row row_of[i] (n: none)
    row_of = torch.arange(rows, device=device).clamp(max=n)  # [R]
    alive = row_of < n  # [R] still generating
    tokens = torch.full((n + 1, max_new_tokens), pad_id, dtype=torch.long, device=device)  # row n: scratch
    logps = torch.zeros((n + 1, max_new_tokens), dtype=torch.float32, device=device)
    ended = torch.full((n + 1,), max_new_tokens, dtype=torch.long, device=device)  # steps each row ran
    bad = torch.zeros((), dtype=torch.bool, device=device)  # a live row's distribution was not finite
    kv.position[:rows] = torch.cat([positions[:, -1].repeat_interleave(group_size, 0),
                                    positions.new_zeros(rows - n)]) + 1
    first = logits.repeat_interleave(group_size, 0)  # [n, V]
    first = torch.cat([first, first[:1].expand(rows - n, -1)])  # [R, V]
    for t in range(max_new_tokens):
        if temperature > 0:
            torch.rand(kv.noise[:rows].shape, generator=gen, device=device, out=kv.noise[:rows])
        if t == 0:
            token, lp, finite = sample_token(first, temperature, top_p, kv.noise[:rows])
        else:
            keys = min(kv.capacity, -(-(p + t) // KEY_BUCKET) * KEY_BUCKET)
            if graphs is not None:
                token, lp, finite = graphs.step(rows, keys)
            else:
                token, lp, finite = decode_step(model, kv, temperature, top_p, rows, keys)
        tokens[:, t].index_copy_(0, row_of, torch.where(alive, token, pad_id))
        logps[:, t].index_copy_(0, row_of, torch.where(alive, lp, 0.0))
        bad |= (alive & ~finite).any()
        stopping = alive & torch.isin(token, stop)
        ended.index_copy_(0, row_of, torch.where(stopping, t + 1, ended[row_of]))
        alive &= ~stopping
        kv.token[:rows].copy_(token)  # step t + 1 feeds token t, at column p + t, one position further
        kv.column.fill_(p + t)
        if t > 0:
            kv.position[:rows] += 1
        if (t + 1) % check_every == 0 or t == max_new_tokens - 1:  # the host looks, once
            any_bad, n_alive = torch.stack([bad.long(), alive.sum()]).tolist()
            if any_bad:
                raise NonFiniteError("sampling failed: the next-token probabilities are non-finite (NaN/inf weights?)")
            if n_alive == 0:
                break
            if _pow2(n_alive) < rows:  # finished rows leave: live rows to the front, fewer rows computed
                rows, row_of, alive = _compact(kv, alive, row_of, n, _pow2(n_alive))
    steps = int(ended[:n].max())
    return tokens[:n, :steps], logps[:n, :steps]


def _compact(kv: StaticKV, alive, row_of, n: int, new_rows: int):
    """Move the live cache rows to the front (in order) and keep `new_rows` rows; the rest are padding
    rows mapped to the scratch row n. Called at a check, where the host may look."""
    keep = alive.nonzero().squeeze(1)  # [n_alive], ascending
    fill = torch.full((new_rows - len(keep),), int(keep[0]) if len(keep) else 0, device=keep.device)
    order = torch.cat([keep, fill])  # [new_rows]
    for buf in (*kv.keys, *kv.values):
        buf[:new_rows] = buf[order]
    for buf in (kv.key_ok, kv.token, kv.position):
        buf[:new_rows] = buf[order]
    new_row_of = torch.cat([row_of[keep], row_of.new_full((new_rows - len(keep),), n)])
    return new_rows, new_row_of, new_row_of < n

