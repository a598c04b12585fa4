"""Specification of sae_formats.py. SAEs are written in each library's on-disk layout (file names,
tensor names, shapes, cfg keys) and encode() is checked against the library's formula written out
here in numpy."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import sae_formats as S
from conftest import assert_close_to_scale

D_IN, D_SAE = 8, 24
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

def rng_arrays(seed=0, d_in=D_IN, d_sae=D_SAE):
    r = np.random.default_rng(seed)
    return dict(W_enc=r.normal(size=(d_in, d_sae)).astype(np.float32),
                b_enc=r.normal(size=d_sae).astype(np.float32) * 0.5,
                W_dec=r.normal(size=(d_sae, d_in)).astype(np.float32),
                b_dec=r.normal(size=d_in).astype(np.float32),
                threshold=np.abs(r.normal(size=d_sae)).astype(np.float32),
                x=r.normal(size=(7, d_in)).astype(np.float32) * 3)


def relu(a):
    return np.maximum(a, 0)


def topk_np(pre, k):
    out = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=1)[:, :k]
    np.put_along_axis(out, idx, relu(np.take_along_axis(pre, idx, 1)), 1)
    return out


def st(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def encode(sae, x):
    return sae.encode(st(x)).numpy()




# --- SAELens ------------------------------------------------------------------------------

def write_saelens(d, a, cfg, keys=("W_enc", "b_enc", "W_dec", "b_dec")):
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: st(a[k]) for k in keys}, d / "sae_weights.safetensors")
    (d / "cfg.json").write_text(json.dumps({"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", **cfg}))


def test_saelens_standard_subtracts_b_dec_then_relu(tmp_path):
    a = rng_arrays()
    write_saelens(tmp_path, a, {"architecture": "standard", "apply_b_dec_to_input": True})
    sae = S.load_sae(tmp_path)
    expected = relu((a["x"] - a["b_dec"]) @ a["W_enc"] + a["b_enc"])
    np.testing.assert_allclose(encode(sae, a["x"]), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sae.decode(st(expected)).numpy(), expected @ a["W_dec"] + a["b_dec"],
                               rtol=1e-5, atol=1e-4)


def test_saelens_topk_v6_and_pre_v6_configs(tmp_path):
    a = rng_arrays(1)
    write_saelens(tmp_path / "v6", a, {"architecture": "topk", "k": 5, "apply_b_dec_to_input": False})
    write_saelens(tmp_path / "old", a, {"architecture": "standard", "activation_fn_str": "topk",
                                        "activation_fn_kwargs": {"k": 5}, "apply_b_dec_to_input": False})
    expected = topk_np(a["x"] @ a["W_enc"] + a["b_enc"], 5)
    for name in ("v6", "old"):
        codes = encode(S.load_sae(tmp_path / name), a["x"])
        np.testing.assert_allclose(codes, expected, rtol=1e-5, atol=1e-5)
        assert ((codes > 0).sum(1) <= 5).all()


def test_saelens_jumprelu_needs_threshold(tmp_path):
    a = rng_arrays(2)
    write_saelens(tmp_path / "ok", a, {"architecture": "jumprelu", "apply_b_dec_to_input": False},
                  keys=("W_enc", "b_enc", "W_dec", "b_dec", "threshold"))
    pre = a["x"] @ a["W_enc"] + a["b_enc"]
    np.testing.assert_allclose(encode(S.load_sae(tmp_path / "ok"), a["x"]),
                               relu(pre) * (pre > a["threshold"]), rtol=1e-5, atol=1e-5)
    write_saelens(tmp_path / "bad", a, {"architecture": "jumprelu"})
    with pytest.raises(ValueError, match="threshold"):
        S.load_sae(tmp_path / "bad")


def test_saelens_transposed_encoder_is_rejected(tmp_path):
    a = rng_arrays(3)
    a["W_enc"] = a["W_enc"].T.copy()
    write_saelens(tmp_path, a, {"architecture": "standard"})
    with pytest.raises(ValueError, match="W_enc.*sae_weights.safetensors|sae_weights.safetensors.*W_enc"):
        S.load_sae(tmp_path)


def test_saelens_normalisations(tmp_path):
    a = rng_arrays(4)
    # an unfolded expected_average_only_in checkpoint: the scaler file holds s
    write_saelens(tmp_path / "avg", a, {"architecture": "standard", "normalize_activations": "expected_average_only_in"})
    (tmp_path / "avg" / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 0.25}))
    sae = S.load_sae(tmp_path / "avg")
    x = a["x"]
    codes = relu((0.25 * x - a["b_dec"]) @ a["W_enc"] + a["b_enc"])
    np.testing.assert_allclose(encode(sae, x), codes, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sae.decode(st(codes)).numpy(), (codes @ a["W_dec"] + a["b_dec"]) / 0.25,
                               rtol=1e-4, atol=1e-3)
    # constant_norm_rescale: each token rescaled to norm sqrt(d_in), undone on the way out
    write_saelens(tmp_path / "tok", a, {"architecture": "standard", "normalize_activations": "constant_norm_rescale"})
    sae = S.load_sae(tmp_path / "tok")
    c = math.sqrt(D_IN) / np.linalg.norm(x, axis=1, keepdims=True)
    codes = relu((x * c - a["b_dec"]) @ a["W_enc"] + a["b_enc"])
    np.testing.assert_allclose(encode(sae, x), codes, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sae(st(x)).detach().numpy(), (codes @ a["W_dec"] + a["b_dec"]) / c,
                               rtol=1e-4, atol=1e-3)


# --- sparsify -----------------------------------------------------------------------------

def write_sparsify(d, a, k, encoder_weight):
    d.mkdir(parents=True, exist_ok=True)
    save_file({"encoder.weight": st(encoder_weight), "encoder.bias": st(a["b_enc"]),
               "W_dec": st(a["W_dec"]), "b_dec": st(a["b_dec"])}, d / "sae.safetensors")
    (d / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": 3, "normalize_decoder": True,
                                            "num_latents": D_SAE, "k": k, "multi_topk": False,
                                            "skip_connection": False, "transcode": False, "d_in": D_IN}))


def test_sparsify_topk_of_relu_after_b_dec(tmp_path):
    a = rng_arrays(5)
    write_sparsify(tmp_path / "layers.3", a, 4, a["W_enc"].T)  # sparsify stores [d_sae, d_in]
    sae = S.load_sae(tmp_path, subfolder="layers.3")
    expected = topk_np(relu((a["x"] - a["b_dec"]) @ a["W_enc"] + a["b_enc"]), 4)
    np.testing.assert_allclose(encode(sae, a["x"]), expected, rtol=1e-5, atol=1e-5)


def test_sparsify_wrong_orientation_is_rejected(tmp_path):
    a = rng_arrays(5)
    write_sparsify(tmp_path, a, 4, a["W_enc"])  # [d_in, d_sae]: the transposed layout
    with pytest.raises(ValueError, match="encoder.weight"):
        S.load_sae(tmp_path)


# --- dictionary_learning ------------------------------------------------------------------

def write_dl(d, state, dict_class):
    d.mkdir(parents=True, exist_ok=True)
    torch.save({k: (st(v) if isinstance(v, np.ndarray) else v) for k, v in state.items()}, d / "ae.pt")
    (d / "config.json").write_text(json.dumps({"trainer": {"dict_class": dict_class, "activation_dim": D_IN,
                                                           "dict_size": D_SAE, "layer": 3, "lm_name": "m"},
                                               "buffer": {"ctx_len": 128}}))


def test_dictionary_learning_classes(tmp_path):
    a = rng_arrays(6)
    x = a["x"]
    linear = {"encoder.weight": a["W_enc"].T, "encoder.bias": a["b_enc"], "decoder.weight": a["W_dec"].T}
    write_dl(tmp_path / "ae", {**linear, "bias": a["b_dec"]}, "AutoEncoder")
    write_dl(tmp_path / "topk", {**linear, "b_dec": a["b_dec"], "k": torch.tensor(3, dtype=torch.int),
                                 "threshold": torch.tensor(-1.0)}, "AutoEncoderTopK")
    write_dl(tmp_path / "batch", {**linear, "b_dec": a["b_dec"], "k": torch.tensor(3, dtype=torch.int),
                                  "threshold": torch.tensor(0.7)}, "BatchTopKSAE")
    write_dl(tmp_path / "jump", {k: a[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")},
             "JumpReluAutoEncoder")
    post = relu((x - a["b_dec"]) @ a["W_enc"] + a["b_enc"])
    pre_raw = x @ a["W_enc"] + a["b_enc"]
    expected = {"ae": post, "topk": topk_np(post, 3), "batch": post * (post > 0.7),
                "jump": relu(pre_raw * (pre_raw > a["threshold"]))}
    for name, want in expected.items():
        sae = S.load_sae(tmp_path / name)
        np.testing.assert_allclose(encode(sae, x), want, rtol=1e-5, atol=1e-5, err_msg=name)
    ae = S.load_sae(tmp_path / "ae")
    np.testing.assert_allclose(ae.decode(st(post)).numpy(), post @ a["W_dec"] + a["b_dec"], rtol=1e-4, atol=1e-3)


# --- Llama Scope --------------------------------------------------------------------------

def test_llama_scope_dataset_norm_decoder_norm_threshold(tmp_path):
    a = rng_arrays(7)
    avg_norm, t = 5.5, 0.8
    (tmp_path / "checkpoints").mkdir(parents=True)
    save_file({"encoder.weight": st(a["W_enc"].T), "encoder.bias": st(a["b_enc"]),
               "decoder.weight": st(a["W_dec"].T), "decoder.bias": st(a["b_dec"])},
              tmp_path / "checkpoints" / "final.safetensors")
    (tmp_path / "hyperparams.json").write_text(json.dumps({
        "hook_point_in": "blocks.3.hook_resid_post", "hook_point_out": "blocks.3.hook_resid_post",
        "d_model": D_IN, "d_sae": D_SAE, "expansion_factor": 3, "act_fn": "jumprelu",
        "jump_relu_threshold": t, "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": avg_norm, "out": avg_norm}, "use_decoder_bias": True,
        "apply_decoder_bias_to_pre_encoder": False, "sparsity_include_decoder_norm": True, "top_k": 50}))
    sae = S.load_sae(tmp_path)
    x = a["x"]
    factor = math.sqrt(D_IN) / avg_norm
    pre = (x * factor) @ a["W_enc"] + a["b_enc"]
    col_norm = np.linalg.norm(a["W_dec"], axis=1)  # decoder.weight column i = W_dec row i
    codes = pre * (pre * col_norm > t)
    np.testing.assert_allclose(encode(sae, x), codes, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sae.decode(st(codes)).numpy(), (codes @ a["W_dec"] + a["b_dec"]) / factor,
                               rtol=1e-4, atol=1e-3)


# --- Gemma Scope --------------------------------------------------------------------------

def test_gemma_scope_params_npz(tmp_path):
    a = rng_arrays(8)
    np.savez(tmp_path / "params.npz", **{k: a[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")})
    pre = a["x"] @ a["W_enc"] + a["b_enc"]
    np.testing.assert_allclose(encode(S.load_sae(tmp_path), a["x"]), relu(pre) * (pre > a["threshold"]),
                               rtol=1e-5, atol=1e-5)
    np.savez(tmp_path / "params.npz", **{k: a[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")})
    with pytest.raises(ValueError, match="threshold"):
        S.load_sae(tmp_path)
    np.savez(tmp_path / "params.npz", **{"W_enc": a["W_enc"].T, **{k: a[k] for k in ("b_enc", "W_dec", "b_dec", "threshold")}})
    with pytest.raises(ValueError, match="params.npz.*W_enc|W_enc.*params.npz"):
        S.load_sae(tmp_path)


# --- load_sae errors, save, dtype ---------------------------------------------------------

def test_unknown_layout_lists_files(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"0")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt, weights.bin"):
        S.load_sae(tmp_path)
    (tmp_path / "layer_3").mkdir()
    (tmp_path / "layer_3" / "params.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="subfolder= one of: layer_3"):
        S.load_sae(tmp_path)


def test_hub_id_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="local directory"):
        S.load_sae("nobody-here/no-such-sae-repo", subfolder="layer_3")


def test_save_roundtrip_folds_input_scale(tmp_path):
    a = rng_arrays(9)
    sae = S.SAE(D_IN, D_SAE, activation="jumprelu", threshold=st(a["threshold"]), input_scale=0.3,
                apply_b_dec_to_input=True)
    set_weights(sae, a)
    S.save_sae(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["normalize_activations"] == "none"
    back = S.load_sae(tmp_path)
    x = st(a["x"])
    np.testing.assert_allclose(back.encode(x).numpy(), sae.encode(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(back(x).numpy(), sae(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    assert not list(tmp_path.glob("*.tmp"))


def test_dtype_follows_to_and_inputs_are_cast():
    sae = S.SAE(D_IN, D_SAE).to(torch.float64)
    assert sae.encode(torch.randn(3, D_IN, dtype=torch.bfloat16)).dtype == torch.float64
    with pytest.raises(ValueError, match="d_in=8"):
        sae.encode(torch.randn(3, D_IN + 1))


def set_weights(sae, a):
    """Copy the synthetic arrays W_enc, b_enc, W_dec, b_dec into an SAE."""
    with torch.no_grad():
        for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, n).copy_(st(a[n]))


def test_chunked_encode_equals_one_shot():
    a = rng_arrays(10)
    sae = S.SAE(D_IN, D_SAE, activation="topk", k=4)
    set_weights(sae, a)
    x = torch.randn(2, 50, D_IN, generator=torch.Generator().manual_seed(0))
    # the same codes up to float rounding (a matmul over 7 rows may round differently from one over 100)
    assert_close_to_scale(sae.encode(x, chunk_rows=7), sae.encode(x), rel=1e-5)  # another matmul blocking


def test_sae_check_reports_and_warns():
    a = rng_arrays(11)
    sae = S.SAE(D_IN, D_SAE, activation="topk", k=4)
    set_weights(sae, a)
    x = torch.randn(200, D_IN)
    codes = sae.encode(x)
    fvu = float((x - sae.decode(codes)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    with pytest.warns(UserWarning, match="FVU"):
        report = S.sae_check(sae, x)
    assert report["l0"] == pytest.approx(float((codes > 0).sum(1).float().mean()))
    assert report["fvu"] == pytest.approx(fvu, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Damaged files: named, never a library traceback, never NaN features two stages later
# ---------------------------------------------------------------------------------------------
def saved_sae(tmp_path):
    sae = S.SAE(8, 16, k=4)
    torch.nn.init.normal_(sae.W_enc)
    torch.nn.init.normal_(sae.W_dec)
    S.save_sae(sae, tmp_path)
    return tmp_path


def test_a_truncated_weights_file_is_named(tmp_path):
    weights = saved_sae(tmp_path) / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"SAE {tmp_path}: its files cannot be read .*re-download or re-save"):
        S.load_sae(tmp_path)


def test_a_malformed_cfg_json_is_named(tmp_path):
    (saved_sae(tmp_path) / "cfg.json").write_text('{"d_in": 8, "d_sae":')
    with pytest.raises(ValueError, match=r"cfg.json is not valid JSON"):
        S.load_sae(tmp_path)


def test_nan_weights_are_refused_naming_the_tensor(tmp_path):
    sae = S.SAE(8, 16, k=4)
    with torch.no_grad():
        sae.b_enc[3] = float("nan")
    S.save_sae(sae, tmp_path)
    with pytest.raises(ValueError, match=r"b_enc hold NaN or inf"):
        S.load_sae(tmp_path)
