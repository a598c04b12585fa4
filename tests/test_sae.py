"""Specification of sae.py: residual capture, pooled per-problem features (encode_problems and its cache),
TopK SAE training. Models are tiny random Qwen2s with a character tokenizer built in this file."""
import math
import string

import pytest
import torch

import sae as S
import sae_formats

D_IN, D_SAE = 8, 24
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

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
    sae = sae_formats.SAE(d_in, d_sae, activation="topk" if k else "relu", k=k)
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


class CountingTokenizer:
    """A tokenizer that records the longest text it was asked to tokenize."""

    def __init__(self, tok):
        self.tok, self.longest = tok, 0

    def __call__(self, texts, **kw):
        self.longest = max([self.longest] + [len(t) for t in ([texts] if isinstance(texts, str) else texts)])
        return self.tok(texts, **kw)

    def __len__(self):
        return len(self.tok)

    def __getattr__(self, name):
        return getattr(self.tok, name)


HUGE = "What is 12+7? " * 200_000  # 2.8 M characters: tokenized whole, about a gigabyte and seconds of work


def test_a_huge_text_is_cut_to_a_head_before_it_is_tokenized():
    tok = CountingTokenizer(char_tokenizer())
    model = tiny_model(len(tok), layers=3)
    sae = random_sae(32)
    got = S.encode_problems(model, tok, [HUGE, "hi there"], sae, 1, top_m=40, max_length=64, progress=False)
    assert tok.longest < 10_000  # a head of a few thousand characters, never the whole text
    # character tokenizer: the first 64 tokens are the first 64 characters
    torch.testing.assert_close(got.dense([0])[0], expected_pooled(model, tok.tok, sae, HUGE[:64], 1),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.dense([1])[0], expected_pooled(model, tok.tok, sae, "hi there", 1),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:SAE check")  # 1,024 tokens train no good SAE; the test is about tokenizing
def test_train_sae_tokenizes_only_a_head_of_a_huge_text():
    tok = CountingTokenizer(char_tokenizer())
    model = tiny_model(len(tok), layers=2, seed=1)
    texts = [HUGE] + [f"{i} + {i * 37 % 101} = ?" for i in range(20)]
    S.train_sae(model, tok, texts, 0, d_sae=64, k=4, tokens=1_024, batch_tokens=256, max_length=64, seed=0,
                progress=False)
    assert tok.longest < 10_000


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
    assert sae_formats.sae_check(sae, raw)["fvu"] < 0.3
    # unit-norm decoder rows (Gao et al.: the constraint that makes code magnitudes comparable)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(512))


def test_train_is_deterministic_for_a_seed():
    tok = char_tokenizer()
    model = tiny_model(len(tok), layers=2, seed=1)
    texts = [f"{i} + {i * 37 % 101} = ?" for i in range(40)]
    runs = [S.train_sae(model, tok, texts, 0, d_sae=64, k=4, tokens=2_048, batch_tokens=256, seed=3,
                        progress=False) for _ in range(2)]
    assert torch.equal(runs[0].W_dec, runs[1].W_dec) and torch.equal(runs[0].b_dec, runs[1].b_dec)


def _chunks(n=40, rows=300, d=16, seed=0):
    # low-rank activations with noise, like residual tokens: 40 stream items of 300 tokens
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(6, d, generator=g)
    return [torch.randn(rows, 6, generator=g) @ basis + 0.1 * torch.randn(rows, d, generator=g) for _ in range(n)]


def _params(sae):
    return [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]


def test_fit_sae_resumes_bitwise_after_a_kill(tmp_path):
    chunks = _chunks()
    settings = dict(d_sae=64, k=4, tokens=256 * 30, batch_tokens=256, layer=0, init_tokens=512, progress=False)

    def stream(skip=0, die_at=None):
        for i in range(skip, 10**9):
            if i == die_at:
                raise KeyboardInterrupt("killed")
            yield chunks[i % len(chunks)]

    whole_curve = []
    whole = S.fit_sae(stream, 16, curve=whole_curve, **settings)
    state = tmp_path / "sae.state.pt"
    with pytest.raises(KeyboardInterrupt):
        S.fit_sae(lambda skip: stream(skip, die_at=20), 16, state_path=state, save_every=7, **settings)
    saved = torch.load(state, weights_only=False)
    assert saved["step"] % 7 == 0 and 0 < saved["step"] < 30 and saved["shuffle"]["consumed"] <= 20
    # resumed from a plain iterator: the items already read are read again and discarded
    resumed_curve = []
    resumed = S.fit_sae(stream(), 16, state_path=state, save_every=7, curve=resumed_curve, **settings)
    assert all(torch.equal(a, b) for a, b in zip(_params(whole), _params(resumed)))
    assert resumed_curve == whole_curve and resumed.meta["check"] == whole.meta["check"]
    assert not state.exists()  # removed once the SAE is done


def test_fit_sae_ignores_a_state_written_with_other_settings(tmp_path):
    chunks = _chunks(seed=1)
    state = tmp_path / "sae.state.pt"
    base = dict(d_sae=32, tokens=256 * 12, batch_tokens=256, layer=0, init_tokens=512, progress=False)
    with pytest.raises(KeyboardInterrupt):
        def dying():
            for i, c in enumerate(chunks):
                if i == 12:
                    raise KeyboardInterrupt
                yield c
        S.fit_sae(dying(), 16, k=4, state_path=state, save_every=4, **base)
    assert state.exists()
    with pytest.warns(UserWarning, match="other settings"):
        other = S.fit_sae(iter(chunks), 16, k=8, state_path=state, **base)
    fresh = S.fit_sae(iter(chunks), 16, k=8, **base)
    assert all(torch.equal(a, b) for a, b in zip(_params(other), _params(fresh)))


def test_train_sae_resume_skips_the_texts_already_read(tmp_path, monkeypatch):
    # a kill inside the model stream; the resumed run must not run the model on the texts it had read
    tok = char_tokenizer()
    model = tiny_model(len(tok), layers=2, seed=1)
    texts = [f"{i} + {i * 37 % 101} = ?" for i in range(40)]
    kw = dict(d_sae=64, k=4, tokens=256 * 24, batch_tokens=256, seed=3, batch_size=4, progress=False,
              init_tokens=256)
    real = S.capture_residuals
    calls = []

    def counted(*a, **k):
        calls.append(1)
        if die_at is not None and len(calls) == die_at:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(S, "capture_residuals", counted)
    die_at = None
    whole = S.train_sae(model, tok, texts, 0, **kw)
    n_whole = len(calls)
    calls.clear()
    die_at = n_whole // 2
    state = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        S.train_sae(model, tok, texts, 0, state_path=state, save_every=5, **kw)
    read = torch.load(state, weights_only=False)["shuffle"]["consumed"]
    calls.clear()
    die_at = None
    resumed = S.train_sae(model, tok, texts, 0, state_path=state, save_every=5, **kw)
    assert all(torch.equal(a, b) for a, b in zip(_params(whole), _params(resumed)))
    assert len(calls) == n_whole - read  # the skipped batches never reached the model
