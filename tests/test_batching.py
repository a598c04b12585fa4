"""Specification of batching.py: packed micro-batches give the padded log-probs and gradients, a
token budget's micro-batches give the full batch's gradient, the grouping by hand, and activation
checkpointing leaves the gradient unchanged."""
import pytest
import torch

import batching
from conftest import assert_close_to_scale
from grpo import GRPOConfig, loss_normalizer, policy_loss
from logprobs import sequence_logprobs
from test_grpo import tiny_rollouts


@pytest.fixture(scope="module")
def rollouts():
    return tiny_rollouts()  # test_grpo's: 4 prompts (one much longer) x 3 completions


def test_packed_logprobs_and_gradients_equal_padded(rollouts):
    model, r = rollouts
    cm = r.completion_mask.float()

    def run(fn):
        model.zero_grad()
        lp = fn(model, r.input_ids, r.attention_mask, cm, chunk_size=5)
        (lp * torch.linspace(-1, 1, lp.numel()).view_as(lp)).sum().backward()
        return lp.detach(), [p.grad.clone() for p in model.parameters()]

    lp_pad, g_pad = run(sequence_logprobs)
    lp_pack, g_pack = run(batching.packed_logprobs)
    # packed and padded rows sum in another order: equal to their scale's rounding, not bitwise
    assert_close_to_scale(lp_pack, lp_pad, rel=1e-6)
    for a, b in zip(g_pack, g_pad):
        assert_close_to_scale(a, b, rel=1e-5)


@pytest.mark.parametrize("packed", [False, True])
def test_token_budget_micro_batches_give_the_full_batch_gradient(rollouts, packed):
    model, r = rollouts
    cm = r.completion_mask.float()
    adv = torch.linspace(-1.0, 1.0, len(cm))
    cfg = GRPOConfig(max_new_tokens=20, temperature=1.0, logprob_chunk=64)

    def grads(mbs, norm):
        model.zero_grad()
        total = 0.0
        for m in mbs:
            m = torch.tensor(m)
            lp = batching.batch_logprobs(model, r.input_ids[m], r.attention_mask[m], cm[m], cfg, torch.device("cpu"),
                                         True, packed)
            loss, _ = policy_loss(lp, lp.detach(), adv[m], cm[m], loss_type="dapo", normalizer=norm)
            loss.backward()
            total += loss.item()
        return total, [p.grad.clone() for p in model.parameters()]

    norm = loss_normalizer(cm, "dapo")
    full_loss, full = grads([list(range(len(cm)))], norm)
    lengths = r.attention_mask.sum(1).tolist()
    mbs = batching.micro_batches(lengths, max_rows=5, max_tokens=60, packed=packed)
    assert len(mbs) > 2 and sorted(i for m in mbs for i in m) == list(range(len(cm)))
    loss, micro = grads(mbs, norm)
    assert abs(loss - full_loss) <= 1e-5 * abs(full_loss)  # a sum of micro-batch terms of both signs
    for a, b in zip(micro, full):
        assert_close_to_scale(a, b, rel=1e-5)


def test_micro_batches_by_hand():
    lengths = [5, 9, 3, 7]
    # no budget: in order, max_rows at a time
    assert batching.micro_batches(lengths, max_rows=3) == [[0, 1, 2], [3]]
    # longest first; padded cost = rows x longest: 9 | 7,5 (2 x 7 = 14) | 3 (3 rows would exceed max_rows 2)
    assert batching.micro_batches(lengths, max_rows=2, max_tokens=14) == [[1], [3, 0], [2]]
    # budget 12: padded 9 | 7 (7,5 costs 14) | 5,3 (2 x 5 = 10); packed 9 | 7,5 (12) | 3
    assert batching.micro_batches(lengths, max_rows=10, max_tokens=12) == [[1], [3], [0, 2]]
    assert batching.micro_batches(lengths, max_rows=10, max_tokens=12, packed=True) == [[1], [3, 0], [2]]
    # a row longer than the budget goes alone
    assert batching.micro_batches([30, 2, 2], max_rows=10, max_tokens=10, packed=True) == [[0], [1, 2]]


def test_activation_checkpointing_keeps_the_gradient(rollouts):
    import copy

    model, r = rollouts
    cm = r.completion_mask.float()
    adv = torch.linspace(-1.0, 1.0, len(cm))

    def grads(m):
        m.train().zero_grad()
        lp = sequence_logprobs(m, r.input_ids, r.attention_mask, cm)
        policy_loss(lp, lp.detach(), adv, cm)[0].backward()
        return [p.grad.clone() for p in m.parameters()]

    plain = copy.deepcopy(model)
    ckpt = copy.deepcopy(model)
    batching.set_activation_checkpointing(ckpt, True)
    assert ckpt.model.gradient_checkpointing and not plain.model.gradient_checkpointing
    for a, b in zip(grads(plain), grads(ckpt)):
        assert_close_to_scale(b, a, rel=1e-5)
    batching.set_activation_checkpointing(ckpt, False)
    assert not ckpt.model.gradient_checkpointing
