"""Specification of grpo.py. Expected values come from hand arithmetic or from formulas written out
here element by element (loops over tokens), never from the code under test."""
import math

import pytest
import torch

import grpo
from data import Problem
from grpo import GRPOConfig, group_advantages, loss_normalizer, policy_loss, sequence_logprobs

# ----------------------------------------------------------------------------------------------
# A tiny Qwen2 with a character tokenizer, built locally (independent of toy.py)
# ----------------------------------------------------------------------------------------------
CHARS = list("0123456789+-=?{}\\ abcdefghijklmnopqrstuvwxyz")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + ["<unk>", "\n"] + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<unk>")


def tiny_model(seed=0, vocab=len(SPECIAL) + 2 + len(CHARS)):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, eos_token_id=2, pad_token_id=0, bos_token_id=None)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    return model


def tiny_problems(n=8):
    return [Problem(id=f"p{i}", problem=f"{i}+{i % 3}=?", answer=str(i + i % 3), meta={}) for i in range(n)]


def has_e_reward(text, gold):
    """A reward the random tiny model earns about half the time, so groups have variance."""
    return 1.0 if "e" in text or "1" in text else 0.0


# ----------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------
def test_group_advantages_std_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    a = group_advantages(r, scale="std", eps=0.0 + 1e-6)
    # group 0: mean .5, unbiased var = 4 * .25 / 3 = 1/3 -> A = +-.5 / sqrt(1/3) = +-.8660254
    # group 1: all equal -> 0; group 2: mean .25, var = (3 * .0625 + .5625) / 3 = .25 -> std .5
    s = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    expected = torch.tensor([[s, -s, -s, s], [0, 0, 0, 0], [-0.25 / 0.500001, -0.25 / 0.500001,
                                                            -0.25 / 0.500001, 0.75 / 0.500001]])
    torch.testing.assert_close(a, expected, rtol=0, atol=1e-6)


def test_group_advantages_none_is_centred_rewards():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.0, 1.0, 0.5]])
    torch.testing.assert_close(group_advantages(r, scale="none"),
                               torch.tensor([[0.75, -0.25, -0.25, -0.25], [0.0, -0.5, 0.5, 0.0]]))


def test_group_advantages_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        group_advantages(torch.zeros(4))
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(2, 2), scale="mad")


# ----------------------------------------------------------------------------------------------
# The loss: values and gradients against the formula written out token by token
# ----------------------------------------------------------------------------------------------
EPS_LO, EPS_HI = 0.2, 0.28


def reference_loss_and_grad(logp, old, adv, mask, loss_type, max_len, beta=0.0, ref=None):
    """Slow scalar version: L = sum_it w_it * l_it with l_it = -min(rA, clip(r)A) + beta*k3 and weights
    w_it from the aggregation; dL/dlogp_it = w_it * (-A*r [if the unclipped branch is the min] + beta*(1 - exp(ref-logp)))."""
    n, t = len(logp), len(logp[0])
    if loss_type == "grpo":
        w = [[mask[i][j] / (n * max(sum(mask[i]), 1)) for j in range(t)] for i in range(n)]
    elif loss_type == "dapo":
        tot = sum(map(sum, mask))
        w = [[mask[i][j] / tot for j in range(t)] for i in range(n)]
    else:
        w = [[mask[i][j] / (n * max_len) for j in range(t)] for i in range(n)]
    loss, grad = 0.0, [[0.0] * t for _ in range(n)]
    for i in range(n):
        for j in range(t):
            r = math.exp(logp[i][j] - old[i][j])
            rc = min(max(r, 1 - EPS_LO), 1 + EPS_HI)
            a = adv[i]
            unclipped_is_min = r * a <= rc * a
            l_tok = -min(r * a, rc * a)
            g_tok = -a * r if unclipped_is_min else 0.0
            if beta:
                d = ref[i][j] - logp[i][j]
                l_tok += beta * (math.exp(d) - d - 1)
                g_tok += beta * (1 - math.exp(d))
            loss += w[i][j] * l_tok
            grad[i][j] = w[i][j] * g_tok
    return loss, grad


def loss_case():
    # ratios exp(logp - old): row 0 = [1.5, 0.7, 1.0, 1.1], row 1 = [0.5, 1.35, 1.0, 0.9], row 2 = [1.25, 0.75, 1, 1]
    old = [[-1.0, -2.0, -0.5, -1.5], [-0.7, -1.2, -2.2, -0.3], [-1.1, -0.9, -1.3, -0.4]]
    ratios = [[1.5, 0.7, 1.0, 1.1], [0.5, 1.35, 1.0, 0.9], [1.25, 0.75, 1.0, 1.0]]
    logp = [[o + math.log(r) for o, r in zip(orow, rrow)] for orow, rrow in zip(old, ratios)]
    mask = [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    adv = [0.8, -1.2, 0.5]
    return logp, old, adv, mask


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_policy_loss_value_and_gradient_match_written_out_formula(loss_type):
    logp, old, adv, mask = loss_case()
    exp_loss, exp_grad = reference_loss_and_grad(logp, old, adv, mask, loss_type, max_len=6)
    lp = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
    loss, _ = policy_loss(lp, torch.tensor(old, dtype=torch.float64), torch.tensor(adv, dtype=torch.float64),
                          torch.tensor(mask, dtype=torch.float64), loss_type=loss_type, eps_low=EPS_LO,
                          eps_high=EPS_HI, max_len=6)
    loss.backward()
    assert loss.item() == pytest.approx(exp_loss, abs=1e-12)
    torch.testing.assert_close(lp.grad, torch.tensor(exp_grad, dtype=torch.float64), rtol=0, atol=1e-12)


def test_kl_term_value_and_gradient_match_written_out_formula():
    logp, old, adv, mask = loss_case()
    ref = [[x - 0.3 * (j - 1) for j, x in enumerate(row)] for row in logp]
    exp_loss, exp_grad = reference_loss_and_grad(logp, old, adv, mask, "dapo", 6, beta=0.1, ref=ref)
    lp = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
    loss, stats = policy_loss(lp, torch.tensor(old, dtype=torch.float64), torch.tensor(adv, dtype=torch.float64),
                              torch.tensor(mask, dtype=torch.float64), loss_type="dapo", eps_low=EPS_LO,
                              eps_high=EPS_HI, ref_logp=torch.tensor(ref, dtype=torch.float64), beta=0.1)
    loss.backward()
    assert loss.item() == pytest.approx(exp_loss, abs=1e-12)
    torch.testing.assert_close(lp.grad, torch.tensor(exp_grad, dtype=torch.float64), rtol=0, atol=1e-12)
    assert stats["kl"] > 0


def test_clip_zeroes_gradient_only_where_ratio_leaves_band_in_advantage_direction():
    logp, old, adv, mask = loss_case()
    lp = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
    loss, stats = policy_loss(lp, torch.tensor(old, dtype=torch.float64), torch.tensor(adv, dtype=torch.float64),
                              torch.tensor([[1.0] * 4] * 3, dtype=torch.float64), loss_type="dapo",
                              eps_low=EPS_LO, eps_high=EPS_HI)
    loss.backward()
    g = lp.grad
    # band [0.8, 1.28]. row 0 (A>0): ratio 1.5 above -> clipped (0); 0.7 below but A>0 -> unclipped
    assert g[0, 0] == 0 and g[0, 1] != 0 and g[0, 2] != 0 and g[0, 3] != 0
    # row 1 (A<0): ratio 0.5 below -> clipped (0); 1.35 above but A<0 -> unclipped, pushes down
    assert g[1, 0] == 0 and g[1, 1] != 0 and g[1, 3] != 0
    # row 2 (A>0): 1.25 inside the band (would be clipped at eps_high=0.2, not at 0.28); 0.75 below, A>0
    assert g[2, 0] != 0 and g[2, 1] != 0
    # gradient of the loss is -A * ratio / 12 where unclipped: descent raises logp for A>0, lowers it for A<0
    assert g[0, 1] < 0 and g[1, 1] > 0
    assert stats["clip_frac"] == pytest.approx(2 / 12)


def test_k3_is_nonnegative_and_zero_at_reference():
    torch.manual_seed(0)
    logp, ref = torch.randn(50, 7), torch.randn(50, 7)
    assert (grpo.k3_kl(logp, ref) >= 0).all()
    assert torch.equal(grpo.k3_kl(logp, logp), torch.zeros(50, 7))
    # by hand: d = ref - logp = 1 -> e - 2
    assert grpo.k3_kl(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(math.e - 2)


def test_on_policy_ratio_is_one_and_gradient_is_plain_policy_gradient():
    torch.manual_seed(1)
    lp = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float64)
    loss, stats = policy_loss(lp, lp.detach(), adv, mask, loss_type="grpo")
    loss.backward()
    assert stats["ratio_mean"] == 1.0 and stats["ratio_max"] == 1.0 and stats["clip_frac"] == 0.0
    # grpo: d/dlogp_it = -A_i / (N * |o_i|)
    lens = mask.sum(1, keepdim=True)
    torch.testing.assert_close(lp.grad, -adv[:, None] * mask / (3 * lens))


def test_loss_normalizer_by_hand():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert loss_normalizer(mask, "grpo") == 2 and loss_normalizer(mask, "dapo") == 5
    assert loss_normalizer(mask, "dr_grpo", max_len=10) == 20 and loss_normalizer(mask, "dr_grpo") == 6


def test_overlong_penalty_follows_dapo_ramp():
    # L_max = 20, L_cache = 4: 0 up to 16, then (16 - |y|) / 4, -1 at 20
    pen = grpo.overlong_penalty(torch.tensor([3, 16, 17, 18, 20]), max_len=20, buffer=4)
    torch.testing.assert_close(pen, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0]))
