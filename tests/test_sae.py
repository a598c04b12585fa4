"""Specification of sae.py. SAEs are written in each library's on-disk layout (file names, tensor
names, shapes, cfg keys) and encode() is checked against the library's formula written out here
in numpy; models are tiny random Qwen2s with a character tokenizer built in this file."""
import json
import math
import string

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import sae as S

D_IN, D_SAE = 8, 24
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(autouse=True)
def one_thread():
    # other suites share the 2 cores; one thread avoids oversubscription and keeps CPU runs exact
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def char_tokenizer(padding_side="right"):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    chars = list(string.ascii_letters + string.digits + string.punctuation + " \n")
    vocab = {c: i for i, c in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"], padding_side=padding_side)


def tiny_model(vocab, layers=3, seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return Qwen2ForCausalLM(cfg).eval()


def rng_arrays(seed=0):
    r = np.random.default_rng(seed)
    return dict(W_enc=r.normal(size=(D_IN, D_SAE)).astype(np.float32),
                b_enc=r.normal(size=D_SAE).astype(np.float32) * 0.5,
                W_dec=r.normal(size=(D_SAE, D_IN)).astype(np.float32),
                b_dec=r.normal(size=D_IN).astype(np.float32),
                threshold=np.abs(r.normal(size=D_SAE)).astype(np.float32),
                x=r.normal(size=(7, D_IN)).astype(np.float32) * 3)


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
    x = torch.randn(2, 50, D_IN)
    assert torch.equal(sae.encode(x, chunk_rows=7), sae.encode(x))


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


# --- residual capture ---------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_capture_equals_hidden_states_and_skips_later_layers(arch):
    tok = char_tokenizer()
    if arch == "qwen2":
        model = tiny_model(len(tok), layers=3)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=3, num_attention_heads=4,
                                             num_key_value_heads=2)).eval()
    batch = tok(["What is 2+3?", "hi"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch, output_hidden_states=True).hidden_states
    calls = {i: 0 for i in range(3)}
    layers = S.decoder_layers(model)
    handles = [layers[i].register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
               for i in range(3)]
    norm_calls = []
    handles.append(model.model.norm.register_forward_pre_hook(lambda m, a: norm_calls.append(1)))
    got = S.capture_residuals(model, batch["input_ids"], batch["attention_mask"], 1)
    for h in handles:
        h.remove()
    torch.testing.assert_close(got, ref[2])
    assert calls == {0: 1, 1: 1, 2: 0} and not norm_calls


# --- pooled features ----------------------------------------------------------------------

def random_sae(d_in, d_sae=40, seed=0, k=None):
    g = torch.Generator().manual_seed(seed)
    sae = S.SAE(d_in, d_sae, activation="topk" if k else "relu", k=k)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g))
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g))
    return sae


def expected_pooled(model, tok, sae, text, layer, pooling="mean"):
    """Slow reference: one unpadded sequence, codes per token, pool over positions 1.. that are
    not special tokens."""
    ids = tok(text)["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[layer + 1][0]
    keep = [i for i in range(1, len(ids)) if ids[i] not in tok.all_special_ids]
    codes = sae.encode(hidden[keep])
    return codes.mean(0) if pooling == "mean" else codes.max(0).values


TEXTS = ["<|im_start|>What is 12+7?<|im_end|>", "Sort 3 1 2", "x", "Reverse abcdef, then add 1",
         "<|im_start|>max of 4 9 2<|im_end|>", "hello there"]


@pytest.mark.parametrize("side,pooling", [("right", "mean"), ("left", "max")])
def test_pooling_ignores_padding_special_tokens_and_position_zero(side, pooling):
    tok = char_tokenizer(padding_side=side)
    model = tiny_model(len(tok), layers=3)
    sae = random_sae(32)

    def poison(module, args, output):  # huge activation wherever pooling must not look
        hidden = output[0] if isinstance(output, tuple) else output
        ids = state["ids"]
        bad = torch.isin(ids, torch.tensor(tok.all_special_ids)) | (state["mask"] == 0)
        first = state["mask"].float().argmax(1)
        bad[torch.arange(len(ids)), first] = True
        return hidden + bad[..., None] * 1e4

    state = {}
    pre = model.register_forward_pre_hook(lambda m, a, kw: state.update(ids=kw["input_ids"], mask=kw["attention_mask"]),
                                          with_kwargs=True)
    handle = model.model.layers[1].register_forward_hook(poison)
    features = S.encode_problems(model, tok, TEXTS, sae, 1, pooling=pooling, top_m=40, batch_size=4,
                                 progress=False)
    handle.remove(), pre.remove()
    for i, text in enumerate(TEXTS):
        want = expected_pooled(model, tok, sae, text, 1, pooling) if i != 2 else torch.zeros(40)
        torch.testing.assert_close(features.dense([i])[0], want, rtol=1e-4, atol=1e-4)


def test_char_spans_restrict_pooling_to_the_problem():
    tok = char_tokenizer()
    model = tiny_model(len(tok), layers=3)
    sae = random_sae(32)
    text = "System: be brief. Problem: 5*6"
    start = text.index("5*6")
    got = S.encode_problems(model, tok, [text], sae, 1, top_m=40, char_spans=[(start, len(text))], progress=False)
    with torch.no_grad():
        hidden = model(input_ids=tok([text], return_tensors="pt")["input_ids"],
                       output_hidden_states=True).hidden_states[2][0]
    want = sae.encode(hidden[start:]).mean(0)  # character tokenizer: token i = character i
    torch.testing.assert_close(got.dense([0])[0], want, rtol=1e-4, atol=1e-4)


def test_cache_resumes_after_interruption(tmp_path):
    tok = char_tokenizer()
    model = tiny_model(len(tok), layers=3)
    sae = random_sae(32, k=5)
    texts = [f"problem {i}: {i * 7} + {i}" for i in range(10)]
    fresh = S.encode_problems(model, tok, texts, sae, 1, top_m=8, batch_size=2, progress=False)
    calls = []

    def crash(module, args, kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt

    handle = model.register_forward_pre_hook(crash, with_kwargs=True)
    with pytest.raises(KeyboardInterrupt):
        S.encode_problems(model, tok, texts, sae, 1, top_m=8, batch_size=2, cache_dir=tmp_path,
                          shard_batches=1, progress=False)
    assert len(list(tmp_path.glob("*/shard_*.safetensors"))) == 3
    calls.clear()
    resumed = S.encode_problems(model, tok, texts, sae, 1, top_m=8, batch_size=2, cache_dir=tmp_path,
                                shard_batches=1, progress=False)
    assert len(calls) == 2  # only the two unfinished batches of five ran
    torch.testing.assert_close(resumed.dense(), fresh.dense())
    calls.clear()
    again = S.encode_problems(model, tok, texts, sae, 1, top_m=8, batch_size=2, cache_dir=tmp_path,
                              progress=False)
    handle.remove()
    assert not calls and torch.equal(again.values, resumed.values)


def test_pooled_features_dense_sparse_and_file(tmp_path):
    values = torch.tensor([[3.0, 1.0, 0.0], [2.0, 0.5, 0.25]])
    indices = torch.tensor([[4, 0, 1], [2, 4, 5]])
    f = S.PooledFeatures(values, indices, d_sae=6)
    want = torch.tensor([[1.0, 0, 0, 0, 3.0, 0], [0, 0, 2.0, 0, 0.5, 0.25]])
    torch.testing.assert_close(f.dense(), want)
    torch.testing.assert_close(f.dense([1]), want[1:])
    sp = f.sparse()
    assert sp.layout == torch.sparse_csr and sp._nnz() == 5
    torch.testing.assert_close(sp.to_dense(), want)
    f.save(tmp_path / "f.safetensors")
    g = S.PooledFeatures.load(tmp_path / "f.safetensors")
    assert len(g) == 2 and g.d_sae == 6 and torch.equal(g.dense(), want)


# --- training -----------------------------------------------------------------------------

def test_train_topk_sae_on_toy_world_reaches_low_fvu_with_k_active():
    # the toy world's tokenizer, model class and problems, rendered as the toy policy sees them;
    # random weights (the warm start takes a minute) still give structured residuals
    import data
    import toy
    tok = toy.char_tokenizer()
    model = toy.tiny_model(tok, seed=0)
    texts = [data.format_prompt(p.problem, tok, "chatml") for p in toy.make_problems(200, seed=0)]
    sae = S.train_sae(model, tok, texts, 0, d_sae=512, k=16, tokens=40_000, batch_tokens=512, seed=0,
                      progress=False)
    check = sae.meta["check"]
    assert check["l0"] == pytest.approx(16.0) and check["fvu"] < 0.3
    # the stored input scale brings raw activations to mean norm ~sqrt(d_in), so encode() takes raw ones
    ids = tok(texts[:16], padding=True, return_tensors="pt")
    hidden = S.capture_residuals(model, ids["input_ids"], ids["attention_mask"], 0)
    special = torch.isin(ids["input_ids"], torch.tensor(tok.all_special_ids))
    raw = hidden[(ids["attention_mask"] == 1) & ~special]
    d_in = model.config.hidden_size
    assert float((raw * sae.input_scale).norm(dim=-1).mean()) == pytest.approx(math.sqrt(d_in), rel=0.2)
    assert S.sae_check(sae, raw)["fvu"] < 0.3
    # unit-norm decoder rows (Gao et al.: the constraint that makes code magnitudes comparable)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(512))


def test_train_is_deterministic_for_a_seed():
    tok = char_tokenizer()
    model = tiny_model(len(tok), layers=2, seed=1)
    texts = [f"{i} + {i * 37 % 101} = ?" for i in range(40)]
    runs = [S.train_sae(model, tok, texts, 0, d_sae=64, k=4, tokens=2_048, batch_tokens=256, seed=3,
                        progress=False) for _ in range(2)]
    assert torch.equal(runs[0].W_dec, runs[1].W_dec) and torch.equal(runs[0].b_dec, runs[1].b_dec)
