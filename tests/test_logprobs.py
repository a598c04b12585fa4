"""Specification of logprobs.py: the token log-probs of sampled completions. The references are the
obvious computations: a full log-softmax over every logit, and the model run on each row with its
padding removed."""
import pytest
import torch

from conftest import assert_close_to_scale, attention_masks, every_query_row_attends
from logprobs import decoder_and_head, sequence_logprobs, token_logprobs
from test_grpo import tiny_model, tiny_rollouts


@pytest.fixture(scope="module")
def rollouts():
    return tiny_rollouts()  # test_grpo's: 4 prompts (one much longer) x 3 completions


def head_and_positions(seed=0, n=23, hidden=8, vocab=11):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden, generator=g))
    return head, torch.randn(n, hidden, generator=g), torch.randint(0, vocab, (n,), generator=g)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_token_logprobs_equal_a_full_log_softmax(temperature):
    head, h, y = head_and_positions()
    expected = (head(h).double() / temperature).log_softmax(-1)[torch.arange(len(y)), y]  # the obvious way
    for chunk in (1, 5, 23, 1024):  # chunks that split the 23 positions unevenly, and none
        got = token_logprobs(h, y, head, temperature=temperature, chunk_size=chunk)
        assert got.dtype == torch.float32 and got.shape == (23,)
        assert_close_to_scale(got, expected.float(), rel=1e-6)


def test_chunked_and_recomputed_gradients_equal_the_unchunked_ones():
    head, h, y = head_and_positions(seed=1)
    weights = torch.linspace(-1, 1, len(y))

    def grads(chunk):
        head.zero_grad()
        x = h.clone().requires_grad_()
        (token_logprobs(x, y, head, chunk_size=chunk) * weights).sum().backward()  # chunk < n: checkpointed
        return x.grad, head.weight.grad.clone()

    (gx, gw), (cx, cw) = grads(1024), grads(4)
    assert_close_to_scale(cx, gx, rel=1e-5)
    assert_close_to_scale(cw, gw, rel=1e-5)


def test_no_positions_give_an_empty_float32_vector():
    head, h, y = head_and_positions()
    out = token_logprobs(h[:0], y[:0], head)
    assert out.shape == (0,) and out.dtype == torch.float32


def test_sequence_logprobs_match_unpadded_forward(rollouts):
    model, r = rollouts
    lp = sequence_logprobs(model, r.input_ids, r.attention_mask, r.completion_mask)  # [N, C]
    chunked = sequence_logprobs(model, r.input_ids, r.attention_mask, r.completion_mask, chunk_size=7)
    assert_close_to_scale(chunked, lp, rel=1e-6)
    p = r.input_ids.shape[1] - r.completion_mask.shape[1]
    for i in range(len(r.input_ids)):
        # the obvious way: drop padding, run the full model, log-softmax, pick the sampled tokens
        plen, n = int(r.attention_mask[i, :p].sum()), int(r.completion_mask[i].sum())
        ids = torch.cat([r.input_ids[i, p - plen:p], r.input_ids[i, p:p + n]])[None]
        with torch.no_grad():
            logits = model(ids).logits[0].double().log_softmax(-1)
        expected = torch.stack([logits[plen - 1 + t, ids[0, plen + t]] for t in range(n)]).float()
        assert_close_to_scale(lp[i, :n], expected, rel=1e-5)
        assert (lp[i, n:] == 0).all()


def test_training_forward_gives_every_left_padded_query_row_a_key(rollouts):
    """sequence_logprobs runs left-padded rows: each query row, padding included, keeps a key (a fully
    masked row is NaN under CUDA SDPA and reaches real tokens through 0 x NaN in backward)."""
    _, r = rollouts
    model = tiny_model(seed=4)  # as built from a config: plain "sdpa"
    assert (r.attention_mask[:, 0] == 0).any(), "the case needs left padding"
    with attention_masks() as masks:
        lp = sequence_logprobs(model, r.input_ids, r.attention_mask, r.completion_mask)
        lp.sum().backward()
    assert any(m is not None for m in masks) and every_query_row_attends(masks)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_a_completion_mask_that_does_not_fit_is_refused_with_its_shape(rollouts):
    model, r = rollouts
    with pytest.raises(ValueError, match=r"completion_mask \(5, 3\) does not fit input_ids"):
        sequence_logprobs(model, r.input_ids, r.attention_mask, r.completion_mask[:5, :3])
    with pytest.raises(TypeError, match="needs a base model"):
        decoder_and_head(torch.nn.Linear(2, 2))
