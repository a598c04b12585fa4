"""sae_formats.py -- the SAE itself (one internal layout, the SAE module) and the files it lives in.
Imports: runtime (atomic file writes) from this project; sae.py builds on this file, never the reverse.

    SAE                      one internal layout (below); encode / decode / forward
    topk_relu(pre, k)        the TopK activation, shared by encoding and SAE training
    load_sae(path_or_repo)   read SAELens, sparsify, dictionary_learning, Llama Scope, Gemma Scope
    save_sae(sae, dir)       write SAELens 6 files (cfg.json with "metadata" + sae_weights.safetensors)
    residual_layer(hook)     the decoder layer whose output a residual hook name reads
    sae_check(sae, acts)     mean L0 and fraction of variance unexplained, with warnings

Internal layout. W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], optional
threshold [d_sae] (a scalar threshold is stored expanded), activation in {relu, topk, jumprelu},
k, apply_b_dec_to_input, and an input normalisation: a constant scale s (dataset-wise norm) or
per-token rescaling to norm sqrt(d_in). With x the raw residual:

    x'   = s * x                      (input_norm="scale"; s = 1 means none)
    x'   = x * sqrt(d_in) / ||x||     (input_norm="token")
    pre  = (x' - [apply_b_dec_to_input] * b_dec) @ W_enc + b_enc
    relu:     f = max(pre, 0)
    topk:     f = max(pre, 0) on the k largest entries of pre, 0 elsewhere
    jumprelu: f = max(pre, 0) * [pre > threshold]
    x_hat = (f @ W_dec + b_dec) / s   (token mode: times ||x|| / sqrt(d_in))

On-disk formats (SAELens, sparsify, dictionary_learning, Llama Scope, Gemma Scope), how each maps
onto this layout, and which hooks are accepted: docs/sae_formats.md.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from runtime import atomic_path, atomic_write_text

ACTIVATIONS = ("relu", "topk", "jumprelu")
INPUT_NORMS = ("scale", "token")
# Rows encoded at once: bounds the [rows, d_sae] pre-activation buffer (~64 MiB at d_sae = 65k).
DEFAULT_ENCODE_ELEMENTS = 1 << 24


# The SAE
def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """The TopK activation (Gao et al. 2024): relu of the k largest entries of each row, 0 elsewhere.
    [n, d_sae] -> [n, d_sae]; differentiable (SAE training) as well as used for encoding."""
    top = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())


class SAE(torch.nn.Module):
    """One SAE in the internal layout of the module docstring. Parameters are plain tensors so
    that every format maps onto them; inputs are cast to the SAE's dtype and device."""

    def __init__(self, d_in: int, d_sae: int, *, activation: str = "relu", k: int | None = None,
                 threshold: float | torch.Tensor | None = None, apply_b_dec_to_input: bool = True,
                 input_norm: str = "scale", input_scale: float = 1.0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device | None = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; expected one of {ACTIVATIONS}")
        if activation == "topk" and (k is None or not 0 < k <= d_sae):
            raise ValueError(f"topk SAE needs 0 < k <= d_sae={d_sae}, got k={k}")
        if activation == "jumprelu" and threshold is None:
            raise ValueError("jumprelu SAE needs a threshold (scalar or per feature)")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm={input_norm!r}; expected one of {INPUT_NORMS}")
        kw = dict(dtype=dtype, device=device)
        # inference objects by default; train_sae switches gradients on for its own run
        self.W_enc = torch.nn.Parameter(torch.zeros(d_in, d_sae, **kw), requires_grad=False)
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae, **kw), requires_grad=False)
        self.W_dec = torch.nn.Parameter(torch.zeros(d_sae, d_in, **kw), requires_grad=False)
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in, **kw), requires_grad=False)
        if threshold is not None:
            threshold = torch.as_tensor(threshold, **kw).expand(d_sae).clone()
        self.register_buffer("threshold", threshold)
        self.register_buffer("input_scale", torch.tensor(float(input_scale), **kw))
        self.activation, self.k = activation, k
        self.apply_b_dec_to_input, self.input_norm = apply_b_dec_to_input, input_norm
        self.meta: dict = {}  # provenance (format, source, hook layer); saved into cfg.json

    d_in = property(lambda self: self.W_enc.shape[0])
    d_sae = property(lambda self: self.W_enc.shape[1])
    dtype = property(lambda self: self.W_enc.dtype)
    device = property(lambda self: self.W_enc.device)

    def _normalise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the SAE-space input and the factor that took it there ([..., 1] or scalar)."""
        x = x.to(dtype=self.dtype, device=self.device)
        if self.input_norm == "token":
            factor = math.sqrt(self.d_in) / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        else:
            factor = self.input_scale
        return x * factor, factor

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:  # [n, d_sae] -> [n, d_sae]
        if self.activation == "relu":
            return pre.relu()
        if self.activation == "jumprelu":
            return pre.relu() * (pre > self.threshold)
        return topk_relu(pre, self.k)

    def pre_activation(self, x_normalised: torch.Tensor) -> torch.Tensor:
        if self.apply_b_dec_to_input:
            x_normalised = x_normalised - self.b_dec
        return x_normalised @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor, *, chunk_rows: int | None = None) -> torch.Tensor:
        """[..., d_in] raw activations -> [..., d_sae] codes, computed in row chunks so the
        pre-activation buffer stays bounded whatever the number of tokens."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [n, d_in]
        if shape[-1] != self.d_in:
            raise ValueError(f"SAE d_in={self.d_in} but the input has last dimension {shape[-1]}")
        rows = chunk_rows or max(1, DEFAULT_ENCODE_ELEMENTS // self.d_sae)
        out = torch.empty(flat.shape[0], self.d_sae, dtype=self.dtype, device=self.device)
        for i in range(0, flat.shape[0], rows):
            x_n, _ = self._normalise(flat[i:i + rows])
            out[i:i + rows] = self._activate(self.pre_activation(x_n))
        return out.reshape(*shape[:-1], self.d_sae)

    def decode(self, codes: torch.Tensor, *, input_norms: torch.Tensor | None = None) -> torch.Tensor:
        """[..., d_sae] -> [..., d_in] in raw activation space. In token-norm mode the per-token
        input norms ([..., 1], from the encoded x) are needed to undo the rescaling."""
        x_hat = codes.to(self.dtype) @ self.W_dec + self.b_dec
        if self.input_norm == "token":
            if input_norms is None:
                raise ValueError("token-normalised SAE: decode needs input_norms=x.norm(dim=-1, keepdim=True)")
            return x_hat * input_norms.to(x_hat) / math.sqrt(self.d_in)
        return x_hat / self.input_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype=self.dtype, device=self.device)
        return self.decode(self.encode(x), input_norms=x.norm(dim=-1, keepdim=True))

    def extra_repr(self) -> str:
        return (f"d_in={self.d_in}, d_sae={self.d_sae}, activation={self.activation}, k={self.k}, "
                f"apply_b_dec_to_input={self.apply_b_dec_to_input}, input_norm={self.input_norm}")


def _make_sae(tensors: dict, source: str, *, d_in: int, d_sae: int, **kwargs) -> SAE:
    """Builds an SAE from internal-layout tensors, asserting each shape against d_in / d_sae."""
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, shape in expected.items():
        got = tuple(tensors[name].shape)
        if got != shape:
            raise ValueError(f"{source}: {name} has shape {got}, expected {shape} "
                             f"(d_in={d_in}, d_sae={d_sae}); wrong orientation or wrong file?")
    threshold = kwargs.pop("threshold", None)
    if threshold is not None:
        threshold = torch.as_tensor(threshold, dtype=torch.float32)
        if threshold.dim() > 0 and tuple(threshold.shape) != (d_sae,):
            raise ValueError(f"{source}: threshold has shape {tuple(threshold.shape)}, expected "
                             f"({d_sae},) or a scalar")
    sae = SAE(d_in, d_sae, threshold=threshold, **kwargs)
    with torch.no_grad():
        for name in expected:
            getattr(sae, name).copy_(torch.as_tensor(tensors[name], dtype=torch.float32))
    return sae


# Loading and saving
def load_sae(path_or_repo: str | os.PathLike, *, subfolder: str | None = None,
             device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SAE:
    """Loads an SAE from a local directory or a Hugging Face Hub repo id (+ subfolder), detecting
    the format from the files present (docs/sae_formats.md: each format's semantics)."""
    path = Path(path_or_repo)
    if not path.exists():
        path = _download(str(path_or_repo), subfolder)
    elif subfolder:
        path = path / subfolder
    if not path.is_dir():
        raise FileNotFoundError(f"SAE path {path} is not a directory")
    names = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}
    if "params.npz" in names:
        loader = _load_gemma_scope
    elif "sae.safetensors" in names and "cfg.json" in names:
        loader = _load_sparsify
    elif "sae_weights.safetensors" in names and "cfg.json" in names:
        loader = _load_saelens
    elif "hyperparams.json" in names or ("sae_weights.safetensors" in names and "config.json" in names):
        loader = _load_llama_scope
    elif "ae.pt" in names:
        loader = _load_dictionary_learning
    else:
        found = ", ".join(sorted(names)[:30]) or "no files"
        markers = {"params.npz", "sae.safetensors", "sae_weights.safetensors", "hyperparams.json", "ae.pt"}
        nested = sorted({str(Path(n).parent) for n in names if Path(n).name in markers} - {"."})
        hint = f" Pass subfolder= one of: {', '.join(nested[:20])}." if nested else ""
        raise ValueError(
            f"unknown SAE layout in {path}: found {found}.{hint} Expected one of: cfg.json + "
            "sae_weights.safetensors (SAELens), cfg.json + sae.safetensors (sparsify), ae.pt + "
            "config.json (dictionary_learning), hyperparams.json + checkpoints/final.safetensors "
            "(Llama Scope), params.npz (Gemma Scope)")
    try:
        sae = loader(path)
    except (ValueError, FileNotFoundError) as e:
        if isinstance(e, json.JSONDecodeError):
            raise ValueError(f"SAE {path}: a JSON config is malformed ({e}); re-download or re-save the SAE") from e
        raise  # our own messages already name the file and what was expected
    except Exception as e:  # safetensors, numpy, torch and pickle each raise their own kinds on a damaged file
        raise ValueError(f"SAE {path}: its files cannot be read ({type(e).__name__}: {str(e)[:200]}); a truncated or "
                         "corrupt download? re-download or re-save the SAE") from e
    bad = [name for name, t in sae.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"SAE {path}: {', '.join(bad)} hold NaN or inf values; its features would be NaN")
    sae.meta["source"] = str(path)
    if sae.meta.get("hook_name") is not None:  # the file's hook decides the layer; other sites refused here
        sae.meta["layer"] = residual_layer(sae.meta["hook_name"], source=f"SAE {path}")
    return sae.to(device=device or "cpu", dtype=dtype or torch.float32)


RESIDUAL_HOOKS = ("blocks.L.hook_resid_post, blocks.L.hook_resid_pre (L >= 1) or an HF decoder block's "
                  "output (model.layers.L)")


def residual_layer(hook_name: str, *, source: str = "SAE") -> int:
    """The decoder layer L whose output is the residual `hook_name` reads (sae.py encodes the output of
    layer L, HF hidden_states[L + 1]): blocks.L.hook_resid_post -> L; blocks.L.hook_resid_pre, the input
    of block L = hidden_states[L] = the output of block L - 1 -> L - 1; model.layers.L (optionally
    ".output") -> L. Any other hook raises ValueError naming it and what is accepted."""
    parts = str(hook_name).split(".")
    if parts[-1] == "output":
        parts = parts[:-1]
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] in ("hook_resid_post",
                                                                                       "hook_resid_pre"):
        block = int(parts[1])
        if parts[2] == "hook_resid_post":
            return block
        if block >= 1:
            return block - 1
        raise ValueError(f"{source}: hook {hook_name!r} reads the token embeddings (hidden_states[0]), "
                         f"which SAERL does not encode; expected {RESIDUAL_HOOKS}")
    if len(parts) >= 2 and parts[-2] == "layers" and parts[-1].isdigit():
        return int(parts[-1])
    raise ValueError(f"{source}: hook {hook_name!r} is not the residual stream between decoder blocks "
                     f"(SAERL encodes only that); expected {RESIDUAL_HOOKS}")


def _download(repo_id: str, subfolder: str | None) -> Path:
    """The local copy of Hub repo `repo_id` (only `subfolder` of it when given); owner/name/sub/dir
    names the same as owner/name with subfolder sub/dir (SAELens releases nest one SAE per folder)."""
    if repo_id.count("/") < 1 or repo_id.startswith((".", "/")) or "" in repo_id.split("/"):
        raise FileNotFoundError(f"SAE path {repo_id} does not exist and is not a Hub repo id (owner/name)")
    owner, name, *nested = repo_id.split("/")
    repo_id, subfolder = f"{owner}/{name}", "/".join(nested + [subfolder] if subfolder else nested) or None
    try:
        from huggingface_hub import snapshot_download
        root = snapshot_download(repo_id, allow_patterns=[f"{subfolder}/*"] if subfolder else None)
    except Exception as err:  # offline, unknown repo, no access: all end the same way for the user
        raise FileNotFoundError(
            f"could not fetch SAE repo {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: "
            f"{err}); with no network, download it elsewhere and pass the local directory") from err
    return Path(root) / subfolder if subfolder else Path(root)


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-download or re-save the SAE") from e


# TransformerLens from_pretrained settings that leave the residual stream as HF computes it: folding
# LayerNorm weights and value biases, re-centring the unembedding, refactoring attention matrices only
# rewrite weights that read from or sit inside a block; the rest say where and how the model loads.
RESIDUAL_PRESERVING_KWARGS = {"fold_ln", "center_unembed", "fold_value_biases", "refactor_factored_attn_matrices",
                              "dtype", "torch_dtype", "device", "n_devices", "move_to_device", "first_n_layers",
                              "default_prepend_bos", "default_padding_side", "trust_remote_code", "revision",
                              "attn_implementation"}


def _check_model_kwargs(kwargs: dict, cfg_path: Path) -> None:
    """Refuses model settings under which the SAE saw another residual than the HF model's.
    center_writing_weights=True removes each token's mean over d_model from every write to the residual
    (TransformerLens does it on LayerNorm models, where the norms hide it): the SAE then reads a
    centred residual that SAERL's capture does not produce, and its reconstruction misses the mean."""
    if kwargs.get("center_writing_weights"):
        raise ValueError(f"{cfg_path}: model_from_pretrained_kwargs center_writing_weights=True: the SAE was "
                         "trained on a TransformerLens residual with each token's mean removed, not the HF "
                         "residual SAERL encodes; use an SAE trained with center_writing_weights=False")
    unknown = sorted(set(kwargs) - RESIDUAL_PRESERVING_KWARGS - {"center_writing_weights"})
    if unknown:
        warnings.warn(f"{cfg_path}: model_from_pretrained_kwargs {unknown} are not known to leave the residual "
                      "unchanged; the SAE check (FVU) will tell whether the SAE fits the model")


def _load_saelens(path: Path) -> SAE:
    cfg = _read_json(path / "cfg.json")
    source = str(path / "sae_weights.safetensors")
    # provenance: SAELens >= 6 "metadata"; files save_sae wrote before that "meta"; older SAELens the top level
    meta = cfg.get("metadata") or cfg.get("meta") or {}
    info = {name: next((v for v in (meta.get(name), cfg.get(name)) if v is not None), None)
            for name in ("model_name", "hook_name", "hook_head_index", "model_from_pretrained_kwargs")}
    hook = info["hook_name"] or cfg.get("hook_point")  # the oldest SAELens configs
    if info["hook_head_index"] is not None:
        raise ValueError(f"{path / 'cfg.json'}: hook {hook!r} with hook_head_index={info['hook_head_index']} reads "
                         f"one attention head, not the residual stream; expected {RESIDUAL_HOOKS}")
    _check_model_kwargs(info["model_from_pretrained_kwargs"] or {}, path / "cfg.json")
    w = load_file(source)
    arch = cfg.get("architecture", "standard")
    act = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if arch == "standard" and act == "topk":  # pre-6.0 configs spell TopK this way
        arch = "topk"
    activation = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}.get(arch)
    if activation is None:
        raise ValueError(f"{path / 'cfg.json'}: SAELens architecture {arch!r} is not supported "
                         "(standard, topk, jumprelu)")
    if activation == "relu" and act != "relu":
        raise ValueError(f"{path / 'cfg.json'}: activation_fn {act!r} is not supported")
    if activation == "jumprelu" and "threshold" not in w:
        raise ValueError(f"{source}: jumprelu SAE without a 'threshold' tensor")
    scale, norm = 1.0, "scale"
    mode = cfg.get("normalize_activations") or "none"
    if mode == "constant_norm_rescale":
        norm = "token"
    elif mode == "expected_average_only_in":
        scaler = path / "activation_scaler.json"
        factor = _read_json(scaler).get("scaling_factor") if scaler.exists() else None
        if factor is not None:
            scale = float(factor)
        else:
            warnings.warn(f"{path}: normalize_activations='expected_average_only_in' with no "
                          "scaling factor on disk; assuming it is folded into the weights, as "
                          "SAELens's trainer does before its final save")
    elif mode not in ("none", False):
        raise ValueError(f"{path / 'cfg.json'}: normalize_activations={mode!r} is not supported")
    missing = [n for n in ("W_enc", "b_enc", "W_dec", "b_dec") if n not in w]
    if missing:
        raise ValueError(f"{source}: missing tensors {missing}; found {sorted(w)}")
    if "scaling_factor" in w:  # finetuning scaling: decode used (f * s) @ W_dec
        w["W_dec"] = w["W_dec"] * w["scaling_factor"][:, None]
    if activation == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        # codes = topk(pre * n), x_hat = (codes / n) @ W_dec with n the W_dec row norms: fold n in
        n = w["W_dec"].float().norm(dim=1)  # [d_sae]
        w["W_enc"], w["b_enc"], w["W_dec"] = w["W_enc"] * n, w["b_enc"] * n, w["W_dec"] / n[:, None]
    sae = _make_sae(w, source, d_in=cfg["d_in"], d_sae=cfg["d_sae"], activation=activation, k=k,
                    threshold=w.get("threshold"),
                    apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", True),
                    input_norm=norm, input_scale=scale)
    sae.meta.update(format="saelens", hook_name=hook, model_name=info["model_name"])
    return sae


def _load_sparsify(path: Path) -> SAE:
    cfg = _read_json(path / "cfg.json")
    source = str(path / "sae.safetensors")
    if cfg.get("transcode") or cfg.get("skip_connection"):
        raise ValueError(f"{path / 'cfg.json'}: sparsify transcoders / skip connections are not SAEs of one site")
    if cfg.get("activation", "topk") != "topk":
        raise ValueError(f"{path / 'cfg.json'}: sparsify activation {cfg['activation']!r} is not supported (topk)")
    w = load_file(source)
    d_in = cfg["d_in"]
    d_sae = w["encoder.bias"].shape[0]
    enc = w["encoder.weight"]  # [d_sae, d_in]
    if tuple(enc.shape) != (d_sae, d_in):
        raise ValueError(f"{source}: encoder.weight has shape {tuple(enc.shape)}, expected ({d_sae}, {d_in})")
    tensors = {"W_enc": enc.T, "b_enc": w["encoder.bias"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    sae = _make_sae(tensors, source, d_in=d_in, d_sae=d_sae, activation="topk", k=cfg["k"],
                    apply_b_dec_to_input=True)
    sae.meta.update(format="sparsify")
    return sae


def _load_dictionary_learning(path: Path) -> SAE:
    source = str(path / "ae.pt")
    w = torch.load(source, map_location="cpu", weights_only=True)
    cfg_path = path / "config.json"
    trainer = _read_json(cfg_path).get("trainer", {}) if cfg_path.exists() else {}
    cls = trainer.get("dict_class")
    if cls is None:  # no config: only the unambiguous layouts can be told apart by their keys
        cls = ("JumpReluAutoEncoder" if "W_enc" in w else "AutoEncoder" if "bias" in w else None)
        if cls is None:
            raise ValueError(f"{source}: keys {sorted(w)} fit several dictionary_learning classes; "
                             "config.json with trainer.dict_class is needed")
    if cls == "JumpReluAutoEncoder":
        d_in, d_sae = w["W_enc"].shape
        sae = _make_sae(w, source, d_in=d_in, d_sae=d_sae, activation="jumprelu",
                        threshold=w["threshold"],
                        apply_b_dec_to_input=trainer.get("apply_b_dec_to_input", False))
    elif cls in ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE"):
        d_sae, d_in = w["encoder.weight"].shape
        b_dec = w["bias"] if cls == "AutoEncoder" else w["b_dec"]
        tensors = {"W_enc": w["encoder.weight"].T, "b_enc": w["encoder.bias"],
                   "W_dec": w["decoder.weight"].T, "b_dec": b_dec}
        if tuple(w["decoder.weight"].shape) != (d_in, d_sae):
            raise ValueError(f"{source}: decoder.weight has shape {tuple(w['decoder.weight'].shape)}, "
                             f"expected ({d_in}, {d_sae})")
        if cls == "AutoEncoder":
            kw = dict(activation="relu")
        elif cls == "AutoEncoderTopK":
            kw = dict(activation="topk", k=int(w["k"]))
        else:  # inference path of BatchTopKSAE: relu(pre) * [relu(pre) > threshold], threshold scalar
            if "threshold" not in w:
                raise ValueError(f"{source}: BatchTopKSAE without a 'threshold' buffer")
            kw = dict(activation="jumprelu", threshold=float(w["threshold"]), k=int(w["k"]))
        sae = _make_sae(tensors, source, d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=True, **kw)
    else:
        raise ValueError(f"{cfg_path}: dictionary_learning class {cls!r} is not supported "
                         "(AutoEncoder, AutoEncoderTopK, BatchTopKSAE, JumpReluAutoEncoder)")
    sae.meta.update(format="dictionary_learning", layer=trainer.get("layer"))
    return sae


def _load_llama_scope(path: Path) -> SAE:
    hp_path = path / "hyperparams.json" if (path / "hyperparams.json").exists() else path / "config.json"
    hp = _read_json(hp_path)
    weights = next((path / n for n in ("checkpoints/final.safetensors", "sae_weights.safetensors")
                    if (path / n).exists()), None)
    if weights is None:
        raise ValueError(f"{path}: Llama Scope layout without checkpoints/final.safetensors")
    w = load_file(str(weights))
    source = str(weights)
    d_in = hp["d_model"]
    d_sae = hp.get("d_sae") or d_in * hp["expansion_factor"]
    enc, dec = w["encoder.weight"], w["decoder.weight"]
    if tuple(enc.shape) != (d_sae, d_in) or tuple(dec.shape) != (d_in, d_sae):
        raise ValueError(f"{source}: encoder.weight {tuple(enc.shape)} / decoder.weight "
                         f"{tuple(dec.shape)}, expected ({d_sae}, {d_in}) / ({d_in}, {d_sae})")
    tensors = {"W_enc": enc.T, "b_enc": w["encoder.bias"], "W_dec": dec.T,
               "b_dec": w.get("decoder.bias", torch.zeros(d_in))}
    act = hp.get("act_fn", "relu").lower()
    dec_norm = dec.float().norm(dim=0)  # [d_sae]: norm of each feature's decoder column
    include_norm = hp.get("sparsity_include_decoder_norm", True)
    kw: dict = {}
    if act == "jumprelu":
        if "log_jumprelu_threshold" in w:
            threshold = w["log_jumprelu_threshold"].float().exp()
        elif "jump_relu_threshold" in hp:
            threshold = torch.full((d_sae,), float(hp["jump_relu_threshold"]))
        else:
            raise ValueError(f"{hp_path}: jumprelu SAE without jump_relu_threshold (and no "
                             f"log_jumprelu_threshold in {source})")
        # their test is pre * ||col|| > t; for a positive norm that is pre > t / ||col||
        kw = dict(activation="jumprelu", threshold=threshold / dec_norm if include_norm else threshold)
    elif act == "topk":
        if include_norm:  # selection on pre * ||col||: fold the norms so plain top-k selects alike
            tensors["W_enc"] = tensors["W_enc"] * dec_norm
            tensors["b_enc"] = tensors["b_enc"] * dec_norm
            tensors["W_dec"] = tensors["W_dec"] / dec_norm[:, None]
        kw = dict(activation="topk", k=hp.get("top_k", 50))
    elif act == "relu":
        kw = dict(activation="relu")
    else:
        raise ValueError(f"{hp_path}: act_fn {act!r} is not supported (relu, topk, jumprelu)")
    norm, scale = "scale", 1.0
    mode = hp.get("norm_activation", "token-wise")
    if mode == "dataset-wise":
        avg = hp.get("dataset_average_activation_norm") or {
            k.split(".", 1)[1]: float(v) for k, v in w.items() if k.startswith("dataset_average_activation_norm.")}
        if not avg:
            raise ValueError(f"{hp_path}: norm_activation='dataset-wise' without dataset_average_activation_norm")
        n_in, n_out = avg.get("in"), avg.get("out", avg.get("in"))
        if n_in is None or abs(n_in - n_out) > 1e-6 * n_in:
            raise ValueError(f"{hp_path}: dataset_average_activation_norm {avg}: only SAEs with "
                             "equal in/out norms are supported (not transcoders)")
        scale = math.sqrt(d_in) / n_in
    elif mode == "token-wise":
        norm = "token"
    elif mode != "inference":
        raise ValueError(f"{hp_path}: norm_activation={mode!r} is not supported")
    sae = _make_sae(tensors, source, d_in=d_in, d_sae=d_sae, input_norm=norm, input_scale=scale,
                    apply_b_dec_to_input=hp.get("apply_decoder_bias_to_pre_encoder", True), **kw)
    sae.meta.update(format="llama_scope", hook_name=hp.get("hook_point_in"))
    return sae


def _load_gemma_scope(path: Path) -> SAE:
    source = str(path / "params.npz")
    with np.load(source) as data:
        # some releases spell the matrices w_enc / w_dec
        w = {("W_" + k[2:] if k.startswith("w_") else k): torch.from_numpy(np.array(data[k], dtype=np.float32))
             for k in data.files}
    missing = [n for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold") if n not in w]
    if missing:
        raise ValueError(f"{source}: missing arrays {missing}; found {sorted(w)}")
    sae = _make_sae(w, source, d_in=w["b_dec"].shape[0], d_sae=w["b_enc"].shape[0],
                    activation="jumprelu", threshold=w["threshold"], apply_b_dec_to_input=False)
    sae.meta.update(format="gemma_scope")
    return sae


def save_safetensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """tensors to a safetensors file, atomically (a killed run leaves the old file or none)."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


def save_sae(sae: SAE, out_dir: str | os.PathLike) -> Path:
    """Writes cfg.json + sae_weights.safetensors as SAELens >= 6 writes them (SAE.load_from_disk reads
    them back with their model_name and hook_name, which live in the cfg's "metadata" block).
    A constant input scale is folded into the weights the way SAELens folds its own
    (W_enc * s, W_dec / s, b_dec / s; thresholds unchanged since pre-activations are), so the files
    take raw activations with normalize_activations = "none". The residual is HF's own, which a
    TransformerLens model gives with center_writing_weights=False: the metadata says so."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = float(sae.input_scale) if sae.input_norm == "scale" else 1.0
    tensors = {"W_enc": sae.W_enc * s, "b_enc": sae.b_enc, "W_dec": sae.W_dec / s, "b_dec": sae.b_dec / s}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold
    tensors = {k: v.detach().to("cpu", torch.float32) for k, v in tensors.items()}
    cfg = {
        "architecture": {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[sae.activation],
        "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "constant_norm_rescale" if sae.input_norm == "token" else "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.0.0", "sae_lens_training_version": None,
                     "model_name": sae.meta.get("model_name"), "hook_name": sae.meta.get("hook_name"),
                     "hook_head_index": None, "model_from_pretrained_kwargs": {"center_writing_weights": False}},
    }
    if sae.activation == "topk":
        cfg["k"] = sae.k
    save_safetensors(tensors, out / "sae_weights.safetensors")
    atomic_write_text(out / "cfg.json", json.dumps(cfg, indent=2))
    return out


# Self-check
@torch.no_grad()
def sae_check(sae: SAE, activations: torch.Tensor, *, fvu_warn: float = 0.5,
              l0_tolerance: float = 0.5, verbose: bool = False) -> dict:
    """Mean L0 (active features per token) and FVU = sum ||x - x_hat||^2 / sum ||x - mean x||^2 on
    [n, d_in] raw activations. Warns when FVU > fvu_warn or when L0 is off k by more than
    l0_tolerance * k: the symptoms of a wrong hook, a transposed matrix or a missed normalisation."""
    x = activations.reshape(-1, activations.shape[-1]).to(sae.device, torch.float32)
    rows = max(1, DEFAULT_ENCODE_ELEMENTS // sae.d_sae)
    l0 = err = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=sae.device)
    for i in range(0, x.shape[0], rows):
        chunk = x[i:i + rows]
        codes = sae.encode(chunk)
        x_hat = sae.decode(codes, input_norms=chunk.norm(dim=-1, keepdim=True)).float()
        l0 += float((codes > 0).sum())
        fired |= (codes > 0).any(0)
        err += float((chunk - x_hat).pow(2).sum())
    total = float((x - x.mean(0)).pow(2).sum())
    report = {"n_tokens": x.shape[0], "l0": l0 / max(1, x.shape[0]), "fvu": err / max(total, 1e-12),
              "dead_fraction": 1.0 - float(fired.float().mean()), "mean_norm": float(x.norm(dim=-1).mean())}
    if report["fvu"] > fvu_warn:
        warnings.warn(f"SAE check: FVU {report['fvu']:.3f} > {fvu_warn} -- wrong layer/hook, transposed "
                      "weights or missing input normalisation?")
    if sae.k and abs(report["l0"] - sae.k) > l0_tolerance * sae.k:
        warnings.warn(f"SAE check: mean L0 {report['l0']:.1f} is far from k={sae.k}")
    if verbose:
        print("sae_check: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in report.items()))
    return report
