"""Specification of SAELens interop (issue 23): hook names mapped to the decoder layer SAERL encodes,
the cfg.json layouts of SAELens 6, of older SAELens and of older save_sae, refusals that name the hook,
--sae-id, and the check every loaded SAE gets on the model's own residuals. The tests marked
`needs_sae_lens` write and read files with SAELens itself and skip where it is not installed
(python -m venv --system-site-packages V && V/bin/pip install sae-lens; V/bin/python -m pytest ...)."""
import json
import types
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import sae as SAEPY
import sae_formats as S
from test_sae import char_tokenizer, tiny_model
from test_sae_formats import rng_arrays as arrays  # the same random SAE weights and inputs

D_IN, D_SAE = 8, 24

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def write_cfg(d, cfg, a=None, d_in=D_IN, d_sae=D_SAE):
    a = a or arrays(d_in=d_in, d_sae=d_sae)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.from_numpy(a[k]) for k in ("W_enc", "b_enc", "W_dec", "b_dec")},
              d / "sae_weights.safetensors")
    (d / "cfg.json").write_text(json.dumps({"d_in": d_in, "d_sae": d_sae, "architecture": "standard", **cfg}))
    return d


# --- hook names -> the decoder layer whose output is encoded ---------------------------------

@pytest.mark.parametrize("hook,layer", [("blocks.12.hook_resid_post", 12), ("blocks.12.hook_resid_pre", 11),
                                        ("blocks.1.hook_resid_pre", 0), ("model.layers.5", 5),
                                        ("model.layers.5.output", 5), ("layers.3", 3)])
def test_residual_hooks_map_to_the_block_whose_output_they_are(hook, layer):
    assert S.residual_layer(hook) == layer


@pytest.mark.parametrize("hook", ["blocks.12.hook_mlp_out", "blocks.12.hook_attn_out", "blocks.12.attn.hook_z",
                                  "blocks.12.hook_resid_mid", "blocks.12.ln2.hook_normalized",
                                  "model.layers.12.mlp", "blocks.0.hook_resid_pre", "hook_embed"])
def test_other_sites_are_refused_naming_the_hook_and_what_is_accepted(hook):
    with pytest.raises(ValueError, match="hook_resid_post") as err:
        S.residual_layer(hook)
    assert repr(hook) in str(err.value)


def test_pre_and_post_hooks_capture_the_hf_hidden_states_they_name():
    """resid_pre of block L is HF hidden_states[L], resid_post hidden_states[L + 1] (output_hidden_states
    is the independent reference; the last block's HF entry is after the final norm, so blocks 0..1)."""
    tok = char_tokenizer()
    model = tiny_model(len(tok), layers=3)
    batch = tok(["x + 1 = 2", "solve it"], return_tensors="pt", padding=True)
    hidden = model(**batch, output_hidden_states=True).hidden_states
    for hook, index in [("blocks.1.hook_resid_pre", 1), ("blocks.2.hook_resid_pre", 2),
                        ("blocks.0.hook_resid_post", 1), ("blocks.1.hook_resid_post", 2)]:
        got = SAEPY.capture_residuals(model, batch["input_ids"], batch["attention_mask"], SAEPY.hook_layer(hook))
        torch.testing.assert_close(got, hidden[index], rtol=1e-5, atol=1e-5, msg=hook)


def test_sae_layer_follows_the_loaded_hook_and_refuses_a_contrary_flag(tmp_path):
    tok = char_tokenizer()
    model = tiny_model(len(tok), layers=3)
    sae = S.load_sae(write_cfg(tmp_path, {"metadata": {"sae_lens_version": "6.1.0",
                                                       "hook_name": "blocks.2.hook_resid_pre"}}, d_in=32, d_sae=64))
    assert SAEPY.sae_layer(model, sae) == 1
    with pytest.raises(SystemExit, match="--sae-layer 2.*trained on layer 1"):
        SAEPY.sae_layer(model, sae, 2)


def test_an_sae_without_a_hook_warns_that_the_middle_layer_is_used(tmp_path):
    tok = char_tokenizer()
    model = tiny_model(len(tok), layers=3)
    sae = S.load_sae(write_cfg(tmp_path, {}, d_in=32, d_sae=64))
    with pytest.warns(UserWarning, match="names no hook or layer; encoding the middle layer 1"):
        assert SAEPY.sae_layer(model, sae) == 1


# --- cfg.json layouts ---------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [
    {"metadata": {"sae_lens_version": "6.3.0", "hook_name": "blocks.4.hook_resid_pre", "model_name": "m"}},  # 6.x
    {"sae_lens_version": "5.9.0", "hook_name": "blocks.4.hook_resid_pre", "model_name": "m"},  # 3.x - 5.x
    {"hook_point": "blocks.4.hook_resid_pre", "model_name": "m"},                           # the oldest
    {"meta": {"hook_name": "blocks.4.hook_resid_pre", "model_name": "m"}},                 # save_sae before 6
], ids=["v6-metadata", "pre6-top-level", "hook_point", "old-save_sae-meta"])
def test_every_saelens_layout_gives_the_hook_the_model_and_the_layer(tmp_path, cfg):
    sae = S.load_sae(write_cfg(tmp_path, cfg))
    assert (sae.meta["hook_name"], sae.meta["model_name"], sae.meta["layer"]) == ("blocks.4.hook_resid_pre", "m", 3)


def test_save_sae_writes_the_saelens6_metadata_block_and_reads_it_back(tmp_path):
    sae = S.SAE(D_IN, D_SAE, activation="topk", k=3)
    sae.meta.update(hook_name="blocks.7.hook_resid_post", model_name="Qwen/Qwen2.5-0.5B")
    S.save_sae(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert "meta" not in cfg and "hook_name" not in cfg
    assert cfg["metadata"]["sae_lens_version"] == "6.0.0"
    assert (cfg["metadata"]["hook_name"], cfg["metadata"]["model_name"]) == ("blocks.7.hook_resid_post",
                                                                               "Qwen/Qwen2.5-0.5B")
    back = S.load_sae(tmp_path)
    assert (back.meta["hook_name"], back.meta["model_name"], back.meta["layer"]) == (
        "blocks.7.hook_resid_post", "Qwen/Qwen2.5-0.5B", 7)


@pytest.mark.parametrize("hook", ["blocks.3.hook_mlp_out", "blocks.3.attn.hook_z", "blocks.3.hook_attn_out"])
def test_a_file_on_another_site_is_refused_when_it_loads(tmp_path, hook):
    with pytest.raises(ValueError, match=f"hook '{hook}' is not the residual stream.*expected blocks.L.hook_resid"):
        S.load_sae(write_cfg(tmp_path, {"metadata": {"sae_lens_version": "6.0.0", "hook_name": hook}}))


def test_a_head_hook_is_refused(tmp_path):
    with pytest.raises(ValueError, match="hook_head_index=2 reads one attention head"):
        S.load_sae(write_cfg(tmp_path, {"hook_point": "blocks.3.hook_resid_post", "hook_point_head_index": 2,
                                        "hook_head_index": 2}))


def test_center_writing_weights_is_refused_and_residual_keeping_settings_load(tmp_path):
    with pytest.raises(ValueError, match="center_writing_weights=True"):
        S.load_sae(write_cfg(tmp_path / "centred", {"metadata": {
            "sae_lens_version": "6.0.0", "hook_name": "blocks.1.hook_resid_post",
            "model_from_pretrained_kwargs": {"center_writing_weights": True}}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        S.load_sae(write_cfg(tmp_path / "kept", {"metadata": {
            "sae_lens_version": "6.0.0", "hook_name": "blocks.1.hook_resid_post",
            "model_from_pretrained_kwargs": {"center_writing_weights": False, "fold_ln": True,
                                             "center_unembed": True, "fold_value_biases": True}}}))
    with pytest.warns(UserWarning, match=r"\['subtract_the_moon'\] are not known"):
        S.load_sae(write_cfg(tmp_path / "odd", {"model_from_pretrained_kwargs": {"subtract_the_moon": 1}}))


def test_topk_rescaled_by_decoder_norm_selects_and_decodes_as_saelens_writes_it(tmp_path):
    """SAELens TopK with rescale_acts_by_decoder_norm: codes = topk(relu) of pre * ||W_dec row||,
    x_hat = (codes / ||W_dec row||) @ W_dec + b_dec (topk_sae.py), written out in numpy."""
    a = arrays(3)
    write_cfg(tmp_path, {"architecture": "topk", "k": 4, "rescale_acts_by_decoder_norm": True}, a)
    sae = S.load_sae(tmp_path)
    norms = np.linalg.norm(a["W_dec"], axis=1)
    pre = ((a["x"] - a["b_dec"]) @ a["W_enc"] + a["b_enc"]) * norms
    codes = np.zeros_like(pre)
    top = np.argsort(-pre, axis=1)[:, :4]
    np.put_along_axis(codes, top, np.maximum(np.take_along_axis(pre, top, 1), 0), 1)
    got = sae.encode(torch.from_numpy(a["x"])).numpy()
    np.testing.assert_allclose(got, codes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(sae.decode(torch.from_numpy(got)).numpy(),
                               (codes / norms) @ a["W_dec"] + a["b_dec"], rtol=1e-4, atol=1e-4)


# --- --sae-id: an SAE nested in a repo or folder ---------------------------------------------------

def test_sae_id_picks_the_nested_folder_locally(tmp_path):
    for layer in (1, 2):
        write_cfg(tmp_path / f"blocks.{layer}.hook_resid_post",
                  {"metadata": {"sae_lens_version": "6.0.0", "hook_name": f"blocks.{layer}.hook_resid_post"}})
    sae = S.load_sae(tmp_path, subfolder="blocks.2.hook_resid_post")
    assert sae.meta["layer"] == 2


def test_a_hub_id_with_sae_id_asks_the_hub_for_that_folder_only(tmp_path, monkeypatch):
    import huggingface_hub
    asked = []

    def fake_snapshot(repo_id, allow_patterns=None):
        asked.append((repo_id, allow_patterns))
        return str(tmp_path)

    write_cfg(tmp_path / "res" / "blocks.3.hook_resid_post", {"hook_name": "blocks.3.hook_resid_post"})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    a = S.load_sae("owner/release", subfolder="res/blocks.3.hook_resid_post")
    b = S.load_sae("owner/release/res", subfolder="blocks.3.hook_resid_post")
    c = S.load_sae("owner/release/res/blocks.3.hook_resid_post")
    assert asked == [("owner/release", ["res/blocks.3.hook_resid_post/*"])] * 3
    assert a.meta["layer"] == b.meta["layer"] == c.meta["layer"] == 3


def test_a_nested_hub_id_offline_fails_fast_saying_to_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="'nobody-here/no-such-release'.*pass the local directory"):
        S.load_sae("nobody-here/no-such-release/blocks.3.hook_resid_post")


# --- a loaded SAE is checked on the model's own residuals ------------------------------------------

def identity_sae(d):
    """relu([x, -x]) decoded by [I; -I] gives x back exactly: FVU 0 at any layer, L0 = d per token
    (every coordinate is nonzero)."""
    sae = S.SAE(d, 2 * d, apply_b_dec_to_input=False)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def test_check_on_model_reads_that_layer_and_warns_on_a_poor_fit():
    tok = char_tokenizer()
    model = tiny_model(len(tok), layers=3)
    texts = ["x + 1 = 2", "solve 3y = 9 for y", "what is 7 * 8?"]
    batch = tok(texts, return_tensors="pt", padding=True)
    valid = batch["attention_mask"].bool()
    valid[:, 0] = False  # the check, like pooling, leaves out each text's first token (the attention sink)
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[2][valid]  # output of layer 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        good = SAEPY.check_on_model(model, tok, texts, identity_sae(32), 1, batch_size=2)
    assert good["n_tokens"] == hidden.shape[0] and good["fvu"] < 1e-6 and good["l0"] == 32
    assert abs(good["mean_norm"] - float(hidden.norm(dim=-1).mean())) < 1e-4 * good["mean_norm"]
    random = S.SAE(32, 64)
    with torch.no_grad():
        random.W_enc.normal_(generator=torch.Generator().manual_seed(0))
        random.W_dec.normal_(generator=torch.Generator().manual_seed(1))
    random.meta.update(hook_name="blocks.9.hook_resid_post", model_name="other")
    with pytest.warns(UserWarning, match=r"explains little of layer 1 of m: FVU .* hook 'blocks.9.hook_resid_post' "
                                         r"of model 'other'"):
        SAEPY.check_on_model(model, tok, texts, random, 1, model_name="m")


def test_the_sae_stage_checks_a_given_sae_read_from_its_sae_id(tmp_path, monkeypatch):
    import config
    import saerl
    from runtime import Stage, Stages

    tok = char_tokenizer()
    model = tiny_model(len(tok), layers=3)
    sae = identity_sae(32)
    sae.meta.update(hook_name="blocks.1.hook_resid_post", model_name="tiny")
    S.save_sae(sae, tmp_path / "release" / "blocks.1.hook_resid_post")
    checked = []
    real_check = saerl.check_on_model
    monkeypatch.setattr(saerl, "check_on_model", lambda *a, **k: checked.append(real_check(*a, **k)))
    cfg = config.Config(sae=str(tmp_path / "release"), sae_id="blocks.1.hook_resid_post", sae_model="tiny")
    stages = Stages(tmp_path / "run", [Stage("sae")], {}, log=lambda _: None)
    problems = [types.SimpleNamespace(problem=p) for p in ("x + 1 = 2", "solve 3y = 9 for y")]
    encoder = saerl.sae_stage(stages, cfg, types.SimpleNamespace(template="plain"), problems,
                              {"tiny": (model, tok)}, "cpu")
    assert encoder.layer == 1 and encoder.sae.meta["source"].endswith("blocks.1.hook_resid_post")
    assert len(checked) == 1 and checked[0]["fvu"] < 1e-6


# --- SAELens itself (skips where it is not installed) ----------------------------------------------

def saelens_sae(kind, hook, **extra):
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.saes.sae import SAEMetadata
    cls, cfg_cls = {"standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
                    "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
                    "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig)}[kind]
    cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=SAEMetadata(hook_name=hook, model_name="gpt2-tiny"), **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae = cls(cfg)
    a = arrays(5)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(torch.from_numpy(a[name]))
        if kind == "jumprelu":
            sae.threshold.copy_(torch.from_numpy(a["threshold"]))
    return sae, torch.from_numpy(a["x"])


@pytest.mark.parametrize("kind,extra,hook,layer", [
    ("standard", {}, "blocks.3.hook_resid_post", 3),
    ("topk", {"k": 4}, "blocks.3.hook_resid_pre", 2),
    ("topk", {"k": 4, "rescale_acts_by_decoder_norm": True}, "blocks.5.hook_resid_post", 5),
    ("jumprelu", {}, "blocks.2.hook_resid_pre", 1),
])
def test_files_saelens_writes_load_with_their_hook_model_layer_and_codes(tmp_path, kind, extra, hook, layer):
    peer, x = saelens_sae(kind, hook, **extra)
    peer.save_model(tmp_path)
    ours = S.load_sae(tmp_path)
    assert (ours.meta["hook_name"], ours.meta["model_name"], ours.meta["layer"]) == (hook, "gpt2-tiny", layer)
    with torch.no_grad():
        want = peer.encode(x)
        torch.testing.assert_close(ours.encode(x), want, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(ours.decode(want), peer.decode(want), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("hook", ["blocks.3.hook_mlp_out", "blocks.3.attn.hook_z"])
def test_files_saelens_writes_on_other_sites_are_refused_naming_the_hook(tmp_path, hook):
    peer, _ = saelens_sae("standard", hook)
    peer.save_model(tmp_path)
    with pytest.raises(ValueError, match=f"hook '{hook}'"):
        S.load_sae(tmp_path)


@pytest.mark.parametrize("activation", ["relu", "topk", "jumprelu"])
def test_saelens_reads_what_save_sae_writes_with_hook_and_model(tmp_path, activation):
    sae_lens = pytest.importorskip("sae_lens")
    a = arrays(7)
    sae = S.SAE(D_IN, D_SAE, activation=activation, k=4 if activation == "topk" else None, input_scale=0.5,
                threshold=torch.from_numpy(a["threshold"]) if activation == "jumprelu" else None)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(torch.from_numpy(a[name]))
    sae.meta.update(hook_name="blocks.6.hook_resid_pre", model_name="Qwen/Qwen2.5-0.5B")
    S.save_sae(sae, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it advises loading the model with our center_writing_weights=False
        peer = sae_lens.SAE.load_from_disk(tmp_path)
    assert (peer.cfg.metadata.hook_name, peer.cfg.metadata.model_name) == ("blocks.6.hook_resid_pre",
                                                                           "Qwen/Qwen2.5-0.5B")
    assert peer.cfg.metadata.model_from_pretrained_kwargs == {"center_writing_weights": False}
    x = torch.from_numpy(a["x"])
    with torch.no_grad():
        torch.testing.assert_close(peer.encode(x), sae.encode(x), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(peer(x), sae(x), rtol=1e-5, atol=1e-4)
    back = S.load_sae(tmp_path)  # and the round trip through our own reader
    assert (back.meta["hook_name"], back.meta["model_name"], back.meta["layer"]) == (
        "blocks.6.hook_resid_pre", "Qwen/Qwen2.5-0.5B", 5)
