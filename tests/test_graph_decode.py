"""Specification of graph_decode.py, the `graph` rollout engine: its greedy tokens are the compact
engine's, its sampled tokens follow the exact tempered / top-p distribution (computed here by hand),
it is reproducible from its seed, and between two checks it never makes the host wait."""
import numpy as np
import pytest
import torch

import decode_engines
import graph_decode
import sampler
from conftest import assert_close_to_scale
from test_grpo import chatml, tiny_model, tiny_problems, tiny_tokenizer

PROMPTS = [chatml(p.problem) for p in tiny_problems(6)] + [chatml("a much longer prompt 12+34=?")]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    """A random tiny Qwen2 whose greedy rows stop at different steps (the stop token's embedding is
    scaled up, so its logit wins for some hidden states only)."""
    m = tiny_model(seed=3).eval()
    with torch.no_grad():
        m.get_input_embeddings().weight[tok.convert_tokens_to_ids("<|im_end|>")] *= 2.5
    return m


def batch(tok, prompts=PROMPTS):
    return sampler._left_pad([tok(p, add_special_tokens=False)["input_ids"] for p in prompts], tok.pad_token_id)


def decode_kwargs(tok, **kw):
    return dict(group_size=2, temperature=0.0, top_p=1.0, max_new_tokens=24, pad_id=tok.pad_token_id, seed=0,
                stop_ids=[tok.convert_tokens_to_ids("<|im_end|>")]) | kw


@pytest.mark.parametrize("check_every", [1, 5, 32])
def test_greedy_tokens_equal_the_compact_engines(model, tok, check_every):
    ids, att = batch(tok)
    kw = decode_kwargs(tok)
    want, want_lp = decode_engines.decode(model, ids, att, **kw)
    got, got_lp = graph_decode.decode(model, ids, att, check_every=check_every, **kw)
    assert torch.equal(got, want)
    ends = {int((row == kw["stop_ids"][0]).nonzero()[0]) if (row == kw["stop_ids"][0]).any() else -1 for row in want}
    assert len(ends) >= 3, f"the case needs rows that stop at different steps (compaction); ends {ends}"
    assert_close_to_scale(got_lp, want_lp, rel=1e-5)


def test_rollouts_through_the_sampler_match_in_layout(model, tok):
    a = sampler.sample_rollouts(model, tok, PROMPTS, group_size=2, temperature=0.0, max_new_tokens=20,
                                gen_batch_size=4, seed=0, engine="compact")
    b = sampler.sample_rollouts(model, tok, PROMPTS, group_size=2, temperature=0.0, max_new_tokens=20,
                                gen_batch_size=4, seed=0, engine="graph", check_every=3)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.completion_mask, b.completion_mask)
    assert a.texts == b.texts and torch.equal(a.truncated, b.truncated)


def nucleus_by_hand(p: np.ndarray, top_p: float) -> np.ndarray:
    """The smallest set of most likely tokens whose mass reaches top_p, renormalised (a loop)."""
    order = sorted(range(len(p)), key=lambda i: -p[i])
    kept, mass = [], 0.0
    for i in order:
        if mass >= top_p:
            break
        kept.append(i)
        mass += p[i]
    q = np.zeros_like(p)
    q[kept] = p[kept] / p[kept].sum()
    return q


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.85)])
def test_the_exponential_race_draws_the_tempered_nucleus(temperature, top_p):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 20_000
    gen = torch.Generator().manual_seed(5)
    noise = torch.rand((n, len(logits)), generator=gen)
    token, lp, finite = graph_decode.sample_token(logits.repeat(n, 1), temperature, top_p, noise)
    p = np.exp(logits.double().numpy() / temperature)
    p /= p.sum()
    exact = nucleus_by_hand(p, top_p)
    empirical = np.bincount(token.numpy(), minlength=len(p)) / n
    tv = 0.5 * np.abs(empirical - exact).sum()
    assert tv < 0.05, tv  # the expected total variation at this n is about 0.01
    assert (empirical[exact == 0] == 0).all()  # nothing outside the nucleus, ever
    assert finite.all()
    assert_close_to_scale(lp, torch.tensor(np.log(p)[token.numpy()], dtype=torch.float32), rel=1e-6)


def test_first_tokens_of_the_engine_follow_the_tempered_softmax(model, tok):
    n, temperature = 20_000, 1.3
    ids, att = batch(tok, PROMPTS[:1])
    tokens, _ = graph_decode.decode(model, ids, att, **decode_kwargs(tok, group_size=n, temperature=temperature,
                                                                     max_new_tokens=1, seed=11))
    with torch.no_grad():
        exact = (model(ids).logits[0, -1].double() / temperature).softmax(-1)
    empirical = torch.bincount(tokens[:, 0], minlength=len(exact)).double() / n
    assert 0.5 * (empirical - exact).abs().sum().item() < 0.05


def test_sampling_is_reproducible_from_the_seed_alone(model, tok):
    ids, att = batch(tok)
    kw = decode_kwargs(tok, temperature=1.0, max_new_tokens=16)
    torch.manual_seed(1)
    a, la = graph_decode.decode(model, ids, att, check_every=4, **kw)
    state = torch.get_rng_state()
    b, lb = graph_decode.decode(model, ids, att, check_every=4, **kw)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is neither read nor moved
    assert torch.equal(a, b) and torch.equal(la, lb)
    c, _ = graph_decode.decode(model, ids, att, check_every=4, **(kw | {"seed": 1}))
    assert not torch.equal(a, c)


class SyncCounter(torch.overrides.TorchFunctionMode):
    """Counts the calls that make a CUDA host wait for the GPU: reading a value back (.item(), int(),
    bool(), .tolist()) and the ops whose output size depends on the data (nonzero, boolean masks)."""
    READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "masked_select"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.READS:
            self.count += 1
        elif name == "__getitem__" and len(args) > 1 and isinstance(args[1], torch.Tensor) \
                and args[1].dtype == torch.bool:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_the_loop_waits_on_the_device_once_per_check(model, tok):
    """No row stops (the stop id is outside the vocabulary), so the loop runs to the cap without
    compacting: 32 more tokens at check_every 16 add exactly 2 host reads; the compact engine adds
    about 2 per token."""
    ids, att = batch(tok)
    never = model.config.vocab_size + 1

    def syncs(engine, n_tokens):
        with SyncCounter() as counter:
            if engine == "graph":
                graph_decode.decode(model, ids, att, check_every=16,
                                    **decode_kwargs(tok, temperature=1.0, max_new_tokens=n_tokens, stop_ids=[never]))
            else:
                decode_engines.decode(model, ids, att,
                               **decode_kwargs(tok, temperature=1.0, max_new_tokens=n_tokens, stop_ids=[never]))
        return counter.count

    assert syncs("graph", 64) - syncs("graph", 32) == 2
    assert syncs("compact", 64) - syncs("compact", 32) >= 32  # the counter does see per-token reads


def test_a_compiled_step_equals_the_eager_one(model, tok):
    ids, att = batch(tok)
    kw = decode_kwargs(tok, max_new_tokens=3)
    graph_decode.decode(model, ids, att, **kw)  # leaves the engine's buffers filled with a real state
    kv = graph_decode._ENGINES[model]["kv"]
    saved = {k: getattr(kv, k).clone() for k in ("key_ok", "token", "position", "column")}
    caches = [b.clone() for b in kv.keys + kv.values]

    def run(step):
        for k, v in saved.items():
            getattr(kv, k).copy_(v)
        for b, c in zip(kv.keys + kv.values, caches):
            b.copy_(c)
        return step(model, kv, 0.0, 1.0, 16, 256)

    eager = run(graph_decode.decode_step)
    # one whole graph (fullgraph: no break, no data-dependent branch), which is what CUDA graph capture
    # needs too; aot_eager traces it as inductor would without generating C++ on this CPU
    compiled = run(torch.compile(graph_decode.decode_step, dynamic=False, fullgraph=True, backend="aot_eager"))
    assert torch.equal(compiled[0], eager[0])
    assert_close_to_scale(compiled[1], eager[1], rel=1e-5)


def test_non_finite_weights_stop_with_a_clear_message(tok):
    m = tiny_model(seed=2).eval()
    with torch.no_grad():
        m.lm_head.weight[5, 0] = float("nan")
    ids, att = batch(tok)
    with pytest.raises(FloatingPointError, match="non-finite"):
        graph_decode.decode(m, ids, att, check_every=4, **decode_kwargs(tok, temperature=1.0))


def test_other_architectures_are_refused_naming_the_way_out():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50))
    with pytest.raises(ValueError, match="--rollout-engine compact"):
        graph_decode.decode(gpt2, torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long),
                            group_size=1, temperature=0.0, top_p=1.0, max_new_tokens=2, stop_ids=[0], pad_id=0, seed=0)
