"""sae.py -- SAE encoding for SAERL: every training problem becomes a sparse vector of SAE features read
at a middle layer of the LLM; quality, difficulty and diversity are read off those vectors (saerl.py).
Imports: data (prompts), runtime (files, the model loader, CLI flags), sae_formats (the SAE module and
its files) and features (the pooled-feature store and the encoder's caches) -- never saerl.py.

    capture_residuals(...)   output of decoder layer L (= HF hidden_states[L+1]); later layers never run
    encode_problems(...)     masked mean/max pooling of SAE codes per problem, top-m kept (PooledFeatures)
    train_sae(...)           TopK SAE of Gao et al. 2024, "Scaling and evaluating sparse autoencoders"
    check_on_model(...)      a loaded SAE's FVU and L0 on this model's own residuals, warning on a mismatch
    prompt_texts, hook_layer, sae_layer   prompts with the problem's span; which layer to encode
    python sae.py train|encode   the command line (bottom of the file)

Over 600 lines because `python sae.py train|encode` is one tool whose training reads residuals through
the encoder's own batching; the reader's part is the encoding above "Training a TopK SAE".
"""
from __future__ import annotations

import os

# before torch loads OpenMP: waiting threads sleep, not spin; numpy's OpenBLAS spins regardless (docs/measurements.md)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from data import TEMPLATES, format_prompt, load_problems
from features import PooledFeatures, ShardCache, model_fingerprint, sae_fingerprint, text_heads
from runtime import (add_dataclass_args, atomic_path, check, check_device, command_line, dataclass_from_args, flag,
                     load_model, resolve_device, stable_hash)
from sae_formats import DEFAULT_ENCODE_ELEMENTS, SAE, load_sae, residual_layer, sae_check, save_sae, topk_relu


# Residual capture
class _StopForward(Exception):
    """Raised by the capture hook once layer L has run, so no later layer computes."""


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of a Qwen2/Llama-style HF model (CausalLM or base model)."""
    for owner in (getattr(model, "model", None), model):
        layers = getattr(owner, "layers", None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ValueError(f"{type(model).__name__} has no model.layers / layers ModuleList of decoder blocks")


@torch.no_grad()
def capture_residuals(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
    """[B, T] ids -> [B, T, d] output of decoder layer `layer` (the residual stream after the block,
    equal to HF hidden_states[layer + 1] for every layer but the last, whose HF entry is after the
    final norm). A forward hook raises once the block has run, so later layers do no work."""
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} out of range: the model has {len(layers)} decoder layers")
    captured = []

    def hook(module, args, output):
        # transformers 5 decoder layers return a tensor; older ones a tuple (hidden, ...)
        captured.append(output[0] if isinstance(output, (tuple, list)) else output)
        raise _StopForward

    handle = layers[layer].register_forward_hook(hook)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"decoder layer {layer} did not run during the forward pass")
    return captured[0]


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _token_batches(tokenizer, texts: Sequence[str], *, batch_size: int, max_length: int,
                   char_spans: Sequence[tuple[int, int]] | None = None, order: Sequence[int] | None = None):
    """Tokenises all texts once and yields (rows, input_ids [B, T], attention_mask [B, T],
    valid [B, T]) in the given order (default: longest first). `valid` excludes padding, special
    tokens, each sequence's first real token (the attention sink) and, when char_spans is given,
    tokens outside the span [start, end) of their text."""
    enc = tokenizer(text_heads(tokenizer, texts, max_length), add_special_tokens=True, truncation=True,
                    max_length=max_length, return_offsets_mapping=char_spans is not None)
    ids = enc["input_ids"]
    special = set(tokenizer.all_special_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("tokenizer has neither a pad nor an eos token to pad with")
    left = getattr(tokenizer, "padding_side", "right") == "left"
    if order is None:
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    for start in range(0, len(order), batch_size):
        rows = list(order[start:start + batch_size])
        width = max(1, max(len(ids[r]) for r in rows))
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        valid = torch.zeros((len(rows), width), dtype=torch.bool)
        for b, r in enumerate(rows):
            seq, n = ids[r], len(ids[r])
            off = width - n if left else 0  # where this row's first real token sits
            input_ids[b, off:off + n] = torch.tensor(seq, dtype=torch.long)
            mask[b, off:off + n] = 1
            keep = [t not in special for t in seq]
            if n:
                keep[0] = False
            if char_spans is not None:
                lo, hi = char_spans[r]
                keep = [kp and s < hi and e > lo and e > s for kp, (s, e) in zip(keep, enc["offset_mapping"][r])]
            valid[b, off:off + n] = torch.tensor(keep, dtype=torch.bool)
        yield rows, input_ids, mask, valid


def _pool_batch(sae: SAE, hidden: torch.Tensor, valid: torch.Tensor, pooling: str) -> torch.Tensor:
    """hidden [B, T, d], valid [B, T] -> [B, d_sae] mean or max of the codes over valid tokens,
    encoded in token chunks so only [chunk, d_sae] codes exist at once."""
    tokens = hidden[valid]  # [n, d]
    owner = torch.nonzero(valid)[:, 0].to(sae.device)  # [n] row of each token
    pooled = torch.zeros(hidden.shape[0], sae.d_sae, dtype=torch.float32, device=sae.device)
    rows = max(1, DEFAULT_ENCODE_ELEMENTS // sae.d_sae)
    for i in range(0, tokens.shape[0], rows):
        codes = sae.encode(tokens[i:i + rows]).float()  # [c, d_sae], all >= 0
        who = owner[i:i + rows]
        if pooling == "mean":
            pooled.index_add_(0, who, codes)
        else:
            pooled.scatter_reduce_(0, who[:, None].expand_as(codes), codes, reduce="amax")
    if pooling == "mean":
        pooled /= valid.sum(1).to(pooled).clamp_min(1)[:, None]  # tokens per row
    return pooled


@torch.no_grad()
def encode_problems(model, tokenizer, texts: Sequence[str], sae: SAE, layer: int, *, pooling: str = "mean",
                    top_m: int = 256, batch_size: int = 16, max_length: int = 512,
                    device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                    cache_dir: str | os.PathLike | None = None, char_spans: Sequence[tuple[int, int]] | None = None,
                    shard_batches: int = 50, cache_key_parts: Sequence = (), progress: bool = True) -> PooledFeatures:
    """Pooled SAE features of each text: residual of decoder layer `layer`, SAE codes per token, masked mean (or
    max) over the text's valid tokens (_token_batches), then the top_m values + indices. With cache_dir a killed
    run resumes from its finished batches (features.ShardCache); `device` / `dtype` move the model and SAE in place."""
    if pooling not in ("mean", "max"):
        raise ValueError(f"pooling={pooling!r}; expected 'mean' or 'max'")
    device = torch.device(device) if device is not None else _model_device(model)
    if dtype is not None:
        model.to(dtype=dtype)
    model.to(device).eval()
    sae = sae.to(device)
    hidden_size = getattr(model.config, "hidden_size", sae.d_in)
    if hidden_size != sae.d_in:
        raise ValueError(f"SAE d_in={sae.d_in} but layer {layer} of "
                         f"{getattr(model.config, '_name_or_path', 'the model')} has hidden size {hidden_size}")
    m = min(top_m, sae.d_sae)
    N = len(texts)
    n_batches = math.ceil(N / batch_size)
    cache = None
    if cache_dir is not None:
        cache = ShardCache(cache_dir, (model_fingerprint(model, tokenizer), sae_fingerprint(sae), layer, pooling, m,
                                       max_length, list(texts), [list(s) for s in char_spans] if char_spans else None,
                                       list(map(str, cache_key_parts))), n_batches, shard_batches)
        if (done := cache.finished()) is not None:
            return done
    values, indices = torch.zeros(N, m), torch.zeros(N, m, dtype=torch.long)
    batches = _token_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length, char_spans=char_spans)
    bar = tqdm(total=n_batches, desc=f"SAE features (layer {layer})", disable=not progress)
    empty = 0
    for b, (rows, input_ids, mask, valid) in enumerate(batches):
        if cache is None or not cache.restore(b, values, indices):  # a batch of a written shard is skipped
            hidden = capture_residuals(model, input_ids.to(device), mask.to(device), layer)
            pooled = _pool_batch(sae, hidden, valid.to(device), pooling)  # [B, d_sae]
            empty += int((valid.sum(1) == 0).sum())
            top = pooled.topk(m, dim=-1)
            v, i = top.values.cpu(), top.indices.cpu()
            values[rows], indices[rows] = v, i
            if cache is not None:
                cache.add(b, rows, v, i)
        bar.update(1)
    bar.close()
    if empty:
        warnings.warn(f"{empty} of {N} texts had no token left after masking; their features are 0")
    features = PooledFeatures(values, indices, sae.d_sae)
    if cache is not None:
        cache.finish(features, {"layer": layer, "pooling": pooling})
    return features


# Training a TopK SAE (Gao et al. 2024)
def _activation_stream(model, tokenizer, texts: Sequence[str], layer: int, *, batch_size: int,
                       max_length: int, seed: int, device, skip: int = 0) -> Iterator[torch.Tensor]:
    """Endless stream of [n, d] residual tokens (valid positions only, as in pooling), epoch after
    epoch over the texts in a seeded random order, sorted by length inside windows of 32 batches
    so that batches carry little padding (the shuffle buffer downstream mixes the tokens again);
    nothing beyond one model batch is held. `skip` drops the first items without running the model
    (a resumed SAE run continues where the interrupted one stopped)."""
    gen = torch.Generator().manual_seed(seed)
    texts = text_heads(tokenizer, texts, max_length)
    lengths = [len(x) for x in tokenizer(texts, add_special_tokens=True, truncation=True,
                                         max_length=max_length)["input_ids"]]
    window = 32 * batch_size  # sort by length inside random windows: little padding, still random
    while True:
        order = torch.randperm(len(texts), generator=gen).tolist()
        order = [i for w in range(0, len(order), window)
                 for i in sorted(order[w:w + window], key=lambda i: -lengths[i])]
        for _, ids, mask, valid in _token_batches(tokenizer, texts, batch_size=batch_size,
                                                  max_length=max_length, order=order):
            if not valid.any():
                continue
            if skip:
                skip -= 1
                continue
            hidden = capture_residuals(model, ids.to(device), mask.to(device), layer)
            yield hidden[valid.to(device)].float()


def _shuffled_batches(stream: Iterator[torch.Tensor], batch_tokens: int, buffer_tokens: int,
                      gen: torch.Generator, state: dict | None = None) -> Iterator[torch.Tensor]:
    """Mixes tokens of several model batches (a shuffle buffer) and yields [batch_tokens, d]: the
    buffer fills to buffer_tokens, is permuted, and is drained down to buffer_tokens - batch_tokens.
    `state` ({buffer, draining, consumed}: the buffer, whether it is being drained, how many stream
    items were read) is kept current at every yield, so a saved copy resumes the same sequence."""
    state = state if state is not None else {}
    buffer = state.get("buffer", torch.empty(0))
    state.setdefault("consumed", 0)
    while True:
        while state.get("draining") and buffer.shape[0] >= max(batch_tokens, buffer_tokens - batch_tokens):
            out, buffer = buffer[:batch_tokens], buffer[batch_tokens:]
            state["buffer"] = buffer
            yield out
        state["draining"] = False
        tokens = next(stream, None)
        if tokens is None:
            return
        state["consumed"] += 1
        buffer = torch.cat([buffer.to(tokens), tokens]) if buffer.numel() else tokens
        if buffer.shape[0] >= buffer_tokens:
            buffer = buffer[torch.randperm(buffer.shape[0], generator=gen).to(buffer.device)]
            state["draining"] = True
        state["buffer"] = buffer


@torch.no_grad()
def geometric_median(points: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """argmin_m sum_i ||p_i - m|| by Weiszfeld's iteration, started at the mean."""
    guess = points.mean(0)
    for _ in range(iters):
        w = 1.0 / (points - guess).norm(dim=1).clamp_min(1e-8)
        new = (w[:, None] * points).sum(0) / w.sum()
        if (new - guess).norm() < tol * (1 + guess.norm()):
            return new
        guess = new
    return guess


def train_sae(model, tokenizer, texts: Sequence[str], layer: int, *, d_sae: int, k: int,
              tokens: int = 2_000_000, batch_tokens: int = 4096, lr: float | None = None,
              seed: int = 0, device: str | torch.device | None = None, aux_k: int | None = None,
              aux_coef: float = 1 / 32, dead_steps: int | None = None, batch_size: int = 16,
              max_length: int = 512, init_tokens: int = 8192, progress: bool = True,
              state_path: str | Path | None = None, save_every: int = 200) -> SAE:
    """TopK SAE on the residual of decoder layer `layer` (Gao et al. 2024, sections 2-3 and
    appendix A-B). Loss per batch, on inputs x' = s x scaled so that E||x'|| = sqrt(d_in):

        L = ||x' - x_hat'||^2 / ||x' - mean x'||^2  +  aux_coef * ||e - e_hat_aux||^2 / ||x' - mean x'||^2

    with x_hat' = topk(W_enc^T (x' - b_dec) + b_enc) W_dec + b_dec, e = x' - x_hat' and e_hat_aux
    the reconstruction of e by the aux_k (default d_in / 2) largest pre-activations among dead
    latents (no fire for dead_steps steps). Decoder rows are kept unit-norm: the gradient component
    parallel to each row is removed before the Adam step and rows are renormalised after it.
    b_dec starts at the geometric median of init_tokens scaled activations, W_enc at W_dec^T.
    lr defaults to 2e-4 / sqrt(d_sae / 2^14) (the paper's scaling). s is stored as the SAE's input
    scale, so encode() takes raw activations. Deterministic for a seed on CPU. The loop itself is
    `fit_sae`, which takes any stream of activations; with `state_path` an interrupted run resumes
    (see fit_sae) and skips the texts it has read without running the model on them again."""
    device = torch.device(device) if device is not None else _model_device(model)
    model.to(device).eval()

    def stream(skip: int = 0):
        return _activation_stream(model, tokenizer, texts, layer, batch_size=batch_size,
                                  max_length=max_length, seed=seed, device=device, skip=skip)

    return fit_sae(stream, model.config.hidden_size, d_sae=d_sae, k=k, tokens=tokens, batch_tokens=batch_tokens,
                   lr=lr, seed=seed, device=device, aux_k=aux_k, aux_coef=aux_coef, dead_steps=dead_steps,
                   init_tokens=init_tokens, progress=progress, layer=layer,
                   model_name=getattr(model.config, "_name_or_path", None), state_path=state_path,
                   save_every=save_every, stream_key=stable_hash(model_fingerprint(model, tokenizer), list(texts),
                                                                 batch_size, max_length))


def fit_sae(stream, d_in: int, *, d_sae: int, k: int, tokens: int, layer: int,
            batch_tokens: int = 4096, lr: float | None = None, seed: int = 0, device="cpu",
            aux_k: int | None = None, aux_coef: float = 1 / 32, dead_steps: int | None = None,
            init_tokens: int = 8192, progress: bool = True, model_name: str | None = None,
            curve: list | None = None, state_path: str | Path | None = None, save_every: int = 200,
            stream_key: str = "") -> SAE:
    """`train_sae`'s loop on an endless stream of raw [n, d_in] activations of decoder layer `layer`
    (bench/feature_quality.py feeds it cached ones). `stream` is an iterator, or a function
    skip -> iterator that starts after its first `skip` items. `curve`, when given, receives a row
    {step, tokens, fvu, l0, dead_fraction} every 20 steps and at the end.

    Resuming: with `state_path`, every `save_every` steps the whole training state (SAE, Adam
    moments, dead-latent counters, the shuffle buffer, the random generator, the curve and how many
    stream items were read) is written there atomically. A later call with the same settings loads
    it, restarts the stream after the items already read (a function skips them; an iterator is
    read and discarded) and continues: the result is bitwise the uninterrupted one. The file is
    removed when training ends; one written with other settings or another `stream_key` (what
    identifies the stream: train_sae hashes the model, the tokenizer and the texts) is ignored,
    with a warning."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    aux_k = aux_k or d_in // 2
    dead_steps = dead_steps or max(1, 1_000_000 // batch_tokens)
    lr = lr or 2e-4 / math.sqrt(d_sae / 2 ** 14)
    n_steps = max(1, tokens // batch_tokens)
    settings = dict(d_in=d_in, d_sae=d_sae, k=k, tokens=tokens, layer=layer, batch_tokens=batch_tokens, lr=lr,
                    seed=seed, aux_k=aux_k, aux_coef=aux_coef, dead_steps=dead_steps, init_tokens=init_tokens,
                    stream_key=stream_key)
    saved = None
    if state_path is not None and Path(state_path).exists():
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        if saved.get("settings") != settings:
            warnings.warn(f"{state_path}: an SAE training state with other settings ({saved.get('settings')}); "
                          f"starting afresh")
            saved = None
    skip = saved["shuffle"]["consumed"] if saved else 0
    if callable(stream):
        stream = stream(skip)
    else:
        stream = iter(stream)
        for _ in range(skip):
            next(stream)
    if saved:
        scale, init = saved["scale"], []
    else:
        init, n = [], 0
        while n < init_tokens:  # these tokens also go to training, through the shuffle buffer
            init.append(next(stream))
            n += init[-1].shape[0]
        sample = torch.cat(init)
        scale = math.sqrt(d_in) / float(sample.norm(dim=-1).mean())

    def replay():
        yield from init
        yield from stream

    sae = SAE(d_in, d_sae, activation="topk", k=k, apply_b_dec_to_input=True, input_scale=scale,
              device=device)
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=6.25e-10)
    steps_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
    curve = [] if curve is None else curve
    with torch.no_grad():
        if saved:  # everything the loop below reads, as it was after step saved["step"]
            for p, v in zip(params, saved["params"]):
                p.copy_(v)
            opt.load_state_dict(saved["optimizer"])
            steps_since_fired.copy_(saved["steps_since_fired"])
            gen.set_state(saved["generator"])
            shuffle = {**saved["shuffle"], "buffer": saved["shuffle"]["buffer"].to(device)}
            start = saved["step"]
            curve[:] = saved["curve"]
        else:
            w_dec = torch.randn(d_sae, d_in, generator=gen)
            sae.W_dec.copy_(w_dec / w_dec.norm(dim=1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.T)
            sae.b_dec.copy_(geometric_median(sample * scale))
            shuffle, start = {}, 0
    sae.requires_grad_(True)
    batches = _shuffled_batches(replay(), batch_tokens, 4 * batch_tokens, gen, shuffle)
    bar = tqdm(range(start, n_steps), desc=f"train SAE (layer {layer}, k={k})", disable=not progress,
               initial=start, total=n_steps)
    for step in bar:
        x = next(batches) * scale  # [n, d_in] in SAE space
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc  # [n, d_sae]
        codes = topk_relu(pre, k)  # [n, d_sae]
        x_hat = codes @ sae.W_dec + sae.b_dec
        total_var = (x - x.mean(0)).pow(2).sum()
        e = x - x_hat
        fvu = e.pow(2).sum() / total_var
        fired = (codes > 0).any(0)  # [d_sae]
        steps_since_fired = torch.where(fired, 0, steps_since_fired + 1)
        dead = steps_since_fired > dead_steps
        aux = x.new_zeros(())
        if dead.any():
            k_aux = min(aux_k, int(dead.sum()))
            aux_codes = topk_relu(pre.masked_fill(~dead, -torch.inf), k_aux)
            aux = (e.detach() - aux_codes @ sae.W_dec).pow(2).sum() / total_var
        loss = fvu + aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            rows = sae.W_dec.data
            sae.W_dec.grad -= (sae.W_dec.grad * rows).sum(1, keepdim=True) * rows
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            sae.W_dec.data /= sae.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)
        if step % 20 == 0 or step == n_steps - 1:
            bar.set_postfix(fvu=f"{fvu.item():.3f}", dead=int(dead.sum()))
            curve.append({"step": step + 1, "tokens": (step + 1) * batch_tokens, "fvu": fvu.item(),
                          "l0": float((codes > 0).sum(1).float().mean()),
                          "dead_fraction": float(dead.float().mean())})
        if state_path is not None and (step + 1) % save_every == 0 and step + 1 < n_steps:
            with atomic_path(state_path) as tmp:
                torch.save({"settings": settings, "step": step + 1, "scale": scale,
                            "params": [p.detach().cpu() for p in params], "optimizer": opt.state_dict(),
                            "steps_since_fired": steps_since_fired.cpu(), "generator": gen.get_state(),
                            "shuffle": {**shuffle, "buffer": shuffle["buffer"].cpu()}, "curve": curve}, tmp)
    bar.close()
    sae.meta.update(format="saerl", hook_name=f"blocks.{layer}.hook_resid_post", layer=layer,
                    model_name=model_name)
    sae.requires_grad_(False)
    # the check reads batches the optimiser has not stepped on (later in the stream)
    held_out = torch.cat([next(batches) for _ in range(max(1, 4096 // batch_tokens))])
    sae.meta["check"] = sae_check(sae, held_out, verbose=progress)
    if state_path is not None:
        Path(state_path).unlink(missing_ok=True)
    return sae


# A loaded SAE on this model; the prompts and the layer to encode
def check_on_model(model, tokenizer, texts: Sequence[str], sae: SAE, layer: int, *, tokens: int = 4096,
                   batch_size: int = 16, max_length: int = 512, device=None, fvu_warn: float = 0.5,
                   model_name: str = "the model", sae_name: str = "the SAE") -> dict:
    """sae_check (FVU, L0) of a loaded SAE on about `tokens` residual tokens of decoder layer `layer`
    of this model on these texts (a seeded sample, one pass over the texts at most). An SAE read at
    the layer and on the model it was trained for reconstructs most of the variance; FVU above
    fvu_warn warns that the layer, the hook or the model does not match."""
    device = torch.device(device) if device is not None else _model_device(model)
    batches = max(1, math.ceil(len(texts) / batch_size))
    stream = _activation_stream(model, tokenizer, texts, layer, batch_size=batch_size, max_length=max_length,
                                seed=0, device=device)
    acts, n = [], 0
    while n < tokens and len(acts) < batches:
        acts.append(next(stream))
        n += acts[-1].shape[0]
    report = sae_check(sae, torch.cat(acts), fvu_warn=math.inf, verbose=True)
    if report["fvu"] > fvu_warn:
        warnings.warn(f"SAE {sae_name} explains little of layer {layer} of {model_name}: FVU {report['fvu']:.3f} > "
                      f"{fvu_warn} on {report['n_tokens']} tokens; it was made for hook "
                      f"{sae.meta.get('hook_name')!r} of model {sae.meta.get('model_name')!r}: wrong layer "
                      "(--sae-layer) or another model (--sae-model)?")
    return report


def prompt_texts(problems, tokenizer, template: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Each problem rendered with the prompt template the policy sees, plus the character span of
    the problem statement inside it: features pool over the problem's own tokens only, so the
    template's fixed tokens do not dilute them."""
    texts, spans = [], []
    for p in problems:
        text = format_prompt(p.problem, tokenizer, template=template)
        start = text.find(p.problem)
        texts.append(text)
        spans.append((start, start + len(p.problem)) if start >= 0 else (0, len(text)))
    return texts, spans


def hook_layer(hook) -> int | None:
    """The decoder layer whose output a residual hook reads (sae_formats.residual_layer:
    "blocks.12.hook_resid_post" -> 12, "blocks.12.hook_resid_pre" -> 11), an int as is, None for None;
    a hook on another site raises ValueError naming it."""
    if hook is None or isinstance(hook, int):
        return hook
    return residual_layer(hook)


def sae_layer(model, sae: SAE | None = None, layer: int | None = None, *, model_name="the model",
              sae_name="the SAE") -> int:
    """The decoder layer to encode: `layer` if given, else a given SAE's hook layer, else the middle
    one; checked against the model (and a given SAE's d_in against the model's hidden size)."""
    n_layers = model.config.num_hidden_layers
    trained_on = None
    if sae is not None:
        trained_on = sae.meta.get("layer")
        trained_on = hook_layer(sae.meta.get("hook_name")) if trained_on is None else trained_on
        if trained_on is None and layer is None:
            warnings.warn(f"SAE {sae_name} names no hook or layer; encoding the middle layer {n_layers // 2} of "
                          f"{model_name} (pass --sae-layer to choose)")
    if layer is not None and trained_on is not None and layer != trained_on:
        raise SystemExit(f"--sae-layer {layer}, but SAE {sae_name} was trained on layer {trained_on} "
                         f"({sae.meta.get('hook_name')}); drop --sae-layer or pass {trained_on}")
    layer = next(x for x in (layer, trained_on, n_layers // 2) if x is not None)
    if not 0 <= layer < n_layers:
        raise SystemExit(f"--sae-layer {layer}: {model_name} has decoder layers 0..{n_layers - 1}")
    if sae is not None and sae.d_in != model.config.hidden_size:
        raise SystemExit(f"SAE {sae_name} has d_in={sae.d_in} but layer {layer} of {model_name} "
                         f"has hidden size {model.config.hidden_size}; pass the SAE trained on that model")
    return layer


# Command line
@dataclass
class InputArgs:
    """Flags of both subcommands: the model and the problems it reads."""
    model: str = flag(None, "HF model id or directory", required=True)
    data: str = flag(None, "problems file (jsonl/json/parquet) or Hub dataset", required=True)
    template: str = flag("qwen-math", "prompt template (data.format_prompt)")
    limit: int | None = flag(None, "use only the first N problems")
    batch_size: int = flag(16, "texts per model forward")
    max_length: int = flag(512, "tokens per text")
    device: str = flag("auto", "auto, cpu or cuda (auto: cuda if available)")

    def validate(self) -> None:
        """Ranges before the model loads: ConfigError, one line naming the flag, its value and what is allowed."""
        check(self.template in TEMPLATES, {"template": self.template}, f"one of {', '.join(TEMPLATES)}")
        check(self.limit is None or self.limit >= 1, {"limit": self.limit}, "an integer >= 1")
        for name in ("batch_size", "max_length"):
            check(getattr(self, name) >= 1, {name: getattr(self, name)}, "an integer >= 1")
        check_device(self.device)


@dataclass
class TrainArgs:
    """`python sae.py train`: a TopK SAE on one layer's residuals."""
    layer: int = flag(None, "decoder layer whose output is read", required=True)
    out: str = flag(None, "output directory (SAELens format)", required=True)
    d_sae: int | None = flag(None, "number of latents (default 16 x hidden)")
    k: int = flag(32, "active latents per token")
    tokens: int = flag(2_000_000, "training tokens")
    batch_tokens: int = flag(4096, "tokens per SAE step")
    lr: float | None = flag(None, "Adam lr (default 2e-4/sqrt(d_sae/16384))")
    seed: int = flag(0, "random seed")

    def validate(self) -> None:
        """Ranges and k <= d_sae before the model loads (with d_sae left out, k is checked against 16 x hidden
        once the model is read): ConfigError, one line naming the flag, its value and what is allowed."""
        check(self.layer >= 0, {"layer": self.layer}, "a decoder layer index >= 0")
        for name in ("k", "tokens", "batch_tokens"):
            check(getattr(self, name) >= 1, {name: getattr(self, name)}, "an integer >= 1")
        check(self.d_sae is None or self.d_sae >= 1, {"d_sae": self.d_sae}, "an integer >= 1")
        check(self.d_sae is None or self.k <= self.d_sae, {"k": self.k, "d_sae": self.d_sae},
              "--k at most --d-sae (a TopK SAE keeps k of its latents)")
        check(self.lr is None or 0 < self.lr < math.inf, {"lr": self.lr}, "a number > 0")
        check(self.seed >= 0, {"seed": self.seed}, "an integer >= 0")


@dataclass
class EncodeArgs:
    """`python sae.py encode`: pooled SAE features of every problem."""
    sae: str = flag(None, "SAE directory or Hub repo id", required=True)
    sae_subfolder: str | None = flag(None, "folder inside the SAE repo")
    layer: int | None = flag(None, "decoder layer (default: from the SAE's hook)")
    out: str = flag(None, "features .safetensors file", required=True)
    pooling: str = flag("mean", "pooling over tokens", choices=("mean", "max"))
    top_m: int = flag(256, "features kept per problem")
    cache_dir: str | None = flag(None, "resumable shard cache directory")

    def validate(self) -> None:
        """Ranges before the model loads: ConfigError, one line naming the flag, its value and what is allowed."""
        check(self.layer is None or self.layer >= 0, {"layer": self.layer}, "a decoder layer index >= 0")
        check(self.top_m >= 1, {"top_m": self.top_m}, "an integer >= 1")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SAERL sparse autoencoders: train one, or encode problems")
    sub = parser.add_subparsers(dest="command", required=True)
    common = add_dataclass_args(argparse.ArgumentParser(add_help=False), InputArgs)
    add_dataclass_args(sub.add_parser("train", parents=[common], help=TrainArgs.__doc__.split(": ")[1]), TrainArgs)
    add_dataclass_args(sub.add_parser("encode", parents=[common], help=EncodeArgs.__doc__.split(": ")[1]), EncodeArgs)
    args = parser.parse_args(argv)
    with command_line("sae.py"):  # a bad flag: one line before the model loads, no traceback
        dataclass_from_args(InputArgs, args).validate()
        dataclass_from_args(TrainArgs if args.command == "train" else EncodeArgs, args).validate()
        run_command(args)


def run_command(args) -> None:
    """`train` or `encode`, with flags already checked."""
    device = resolve_device(args.device)
    model, tokenizer = load_model(args.model, device=device)
    model.eval()
    texts, spans = prompt_texts(load_problems(args.data, limit=args.limit), tokenizer, args.template)
    n_layers = len(decoder_layers(model))
    if args.command == "train":
        d_sae = args.d_sae or 16 * model.config.hidden_size
        check(args.k <= d_sae, {"k": args.k}, f"at most d_sae = 16 x hidden size = {d_sae} (or pass --d-sae)")
        check(args.layer < n_layers, {"layer": args.layer}, f"a decoder layer of {args.model}: 0..{n_layers - 1}")
        sae = train_sae(model, tokenizer, texts, args.layer, d_sae=d_sae,
                        k=args.k, tokens=args.tokens, batch_tokens=args.batch_tokens, lr=args.lr,
                        seed=args.seed, device=device, batch_size=args.batch_size, max_length=args.max_length)
        print(f"saved {save_sae(sae, args.out)}")
        return
    sae = load_sae(args.sae, subfolder=args.sae_subfolder, device=device)
    layer = args.layer if args.layer is not None else sae.meta.get("layer")  # load_sae: from the hook name
    if layer is None:
        raise SystemExit(f"sae.py: --layer not given and the SAE's hook name {sae.meta.get('hook_name')!r} names "
                         "no layer")
    check(layer < n_layers, {"layer": layer}, f"a decoder layer of {args.model}: 0..{n_layers - 1}")
    features = encode_problems(model, tokenizer, texts, sae, layer, pooling=args.pooling,
                               top_m=args.top_m, batch_size=args.batch_size, max_length=args.max_length,
                               device=device, cache_dir=args.cache_dir, char_spans=spans)
    features.save(args.out, {"layer": layer, "model": args.model, "sae": args.sae})
    print(f"saved {len(features)} problems x top-{features.values.shape[1]} features to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
