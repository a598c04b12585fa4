"""Specification of sampler.py: its rollouts against transformers' `generate` (the reference), against
the exact softmax of a direct forward, and against the trainer's own log-probs. The engines' own
parts (the cache compaction, the top-p draw) are specified in test_decode_engines.py."""
import pytest
import torch

import grpo
import logprobs
import sampler
from conftest import assert_close_to_scale
from test_grpo import chatml, tiny_model, tiny_problems, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    """A random tiny Qwen2 whose rows stop at very different times: the stop token's (tied)
    embedding is scaled up, so its logit is large for some hidden states and never for others."""
    m = tiny_model(seed=3)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        m.get_input_embeddings().weight[eos] *= 6.0
    return m


PROMPTS = [chatml(p.problem) for p in tiny_problems(6)] + [chatml("a much longer prompt 12+34=?")]


def test_compact_greedy_tokens_equal_hf_generate(model, tok):
    a = sampler.sample_rollouts(model, tok, PROMPTS, group_size=2, temperature=0.0, max_new_tokens=24,
                                gen_batch_size=4, seed=0, engine="compact")
    b = sampler.sample_rollouts(model, tok, PROMPTS, group_size=2, temperature=0.0, max_new_tokens=24,
                                gen_batch_size=4, seed=0, engine="hf")
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert a.texts == b.texts


def test_sampler_logprobs_equal_the_trainers(model, tok):
    """The log-prob the sampler reports for each token is the one `sequence_logprobs` computes for it."""
    for temperature in (1.0, 0.7):
        r = sampler.sample_rollouts(model, tok, PROMPTS * 3, group_size=3, temperature=temperature,
                                    max_new_tokens=20, gen_batch_size=7, seed=2)
        trainer = logprobs.sequence_logprobs(model, r.input_ids, r.attention_mask, r.completion_mask,
                                         temperature=temperature)
        assert_close_to_scale(r.sampler_logprobs, trainer, rel=1e-5)
        assert (r.sampler_logprobs[r.completion_mask == 0] == 0).all()


def test_first_tokens_follow_the_tempered_softmax(model, tok):
    n, temperature = 20000, 1.3
    r = sampler.sample_rollouts(model, tok, PROMPTS[:1], group_size=n, temperature=temperature,
                                max_new_tokens=1, gen_batch_size=1, seed=11)
    p_len = r.input_ids.shape[1] - 1
    first = r.input_ids[:, p_len]
    ids = torch.tensor([tok(PROMPTS[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        exact = (model(ids).logits[0, -1].double() / temperature).softmax(-1)
    empirical = torch.bincount(first, minlength=len(exact)).double() / n
    tv = 0.5 * (empirical - exact).abs().sum().item()
    assert tv < 0.05, tv  # the expected total variation at this n is about 0.02


def test_rollouts_depend_only_on_the_seed(model, tok):
    torch.manual_seed(1)
    a = sampler.sample_rollouts(model, tok, PROMPTS, group_size=3, max_new_tokens=16, gen_batch_size=3, seed=4)
    state = torch.get_rng_state()
    b = sampler.sample_rollouts(model, tok, PROMPTS, group_size=3, max_new_tokens=16, gen_batch_size=3, seed=4)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is neither read nor moved
    assert torch.equal(a.input_ids, b.input_ids)


def test_complete_greedy_repeats_and_strips_the_stop_token(model, tok):
    texts = sampler.complete(model, tok, PROMPTS[:3], n=2, temperature=0.0, max_new_tokens=12, batch_size=2)
    assert [len(t) for t in texts] == [2, 2, 2] and all(t[0] == t[1] for t in texts)
    one = sampler.complete(model, tok, PROMPTS[:1], max_new_tokens=12)[0][0]
    assert one == texts[0][0] and "<|im_end|>" not in one


def test_bf16_rollout_copy_is_refreshed_after_each_update(tok):
    policy = tiny_model(seed=1)
    rollout = sampler.rollout_model(policy, "bfloat16")
    assert rollout is not policy and next(rollout.parameters()).dtype == torch.bfloat16
    before = [p.detach().clone() for p in rollout.parameters()]
    cfg = grpo.GRPOConfig(batch_size=4, group_size=4, max_new_tokens=10, gen_batch_size=4, micro_batch_size=8,
                          lr=1e-2, template="plain")
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    from test_grpo import has_e_reward

    row = grpo.grpo_step(policy, tok, tiny_problems(4), cfg, opt, step=0, reward_fn=has_e_reward, rollout=rollout)
    assert not row["skipped"] and row["sampler_gap_max"] > 0  # bf16 sampler vs fp32 trainer
    after = list(rollout.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    for a, p in zip(after, policy.parameters()):
        assert torch.equal(a, p.detach().to(torch.bfloat16))


def test_rollout_model_on_cpu_is_the_policy_itself():
    policy = tiny_model()
    assert sampler.rollout_model(policy, "auto") is policy
    with pytest.raises(ValueError, match="rollout dtype 'int8'"):
        sampler.rollout_model(policy, "int8")


# ----------------------------------------------------------------------------------------------
# Left padding and the context length (what CUDA would break on, checked on a CPU)
# ----------------------------------------------------------------------------------------------
def test_prefill_gives_every_left_padded_query_row_a_key(tok):
    """A fully masked query row is NaN in CUDA's SDPA kernels (CPU kernels return finite values, so
    the masks themselves are checked): every row the prefill and the decode steps attend with must
    keep at least one key."""
    from conftest import attention_masks, every_query_row_attends

    model = tiny_model(seed=1)  # as built from a config: plain "sdpa"
    with attention_masks() as masks:
        r = sampler.sample_rollouts(model, tok, PROMPTS, group_size=2, max_new_tokens=6, gen_batch_size=7, seed=0)
    assert (r.attention_mask[:, 0] == 0).any(), "the case needs left-padded prompts"
    assert any(m is not None for m in masks) and every_query_row_attends(masks)


def test_a_prompt_past_the_context_is_refused_naming_the_lengths(tok):
    model = tiny_model()  # max_position_embeddings 128
    long_prompt = chatml("1+1=? " * 16)  # > 100 tokens
    n = len(tok(long_prompt, add_special_tokens=False)["input_ids"])
    assert 100 < n < 128
    with pytest.raises(ValueError, match=rf"prompt of {n} tokens \+ max_new_tokens 30 exceeds .* 128"):
        sampler.sample_rollouts(model, tok, [long_prompt], group_size=1, max_new_tokens=30, gen_batch_size=1, seed=0)


def test_complete_cuts_the_budget_to_the_context_and_says_so(tok, capsys):
    model = tiny_model()
    long_prompt = chatml("1+1=? " * 16)
    n = len(tok(long_prompt, add_special_tokens=False)["input_ids"])
    short = chatml("1+1=?")
    texts = sampler.complete(model, tok, [short, long_prompt], max_new_tokens=60, batch_size=1)
    assert len(texts) == 2
    err = capsys.readouterr().err
    assert "1 of 2 generate calls had their completion budget cut" in err and f"budget {128 - n}" in err
    # the first call kept its whole budget: the short prompt's completion is what a lone call gives
    assert texts[0] == sampler.complete(model, tok, [short], max_new_tokens=60, batch_size=1)[0]
