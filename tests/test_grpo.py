"""Specification of grpo.py. Expected values come from hand arithmetic or from formulas written out
here element by element (loops over tokens), never from the code under test."""
import math

import pytest
import torch

import grpo
import train_log
from conftest import assert_close_to_scale
from data import Problem
from grpo import GRPOConfig, group_advantages, loss_normalizer, policy_loss
from logprobs import sequence_logprobs
from schedule import random_schedule

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


# ----------------------------------------------------------------------------------------------
# Log-probs and rollouts on a tiny model
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def chatml(text):
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def tiny_rollouts():
    """4 prompts (one much longer, so the others are left-padded) x 3 completions of a tiny Qwen2."""
    model = tiny_model()
    prompts = [chatml(p.problem) for p in tiny_problems(3)] + [chatml("a much longer prompt 12+34")]
    return model, grpo.sample_rollouts(model, tiny_tokenizer(), prompts, group_size=3, max_new_tokens=20,
                                       gen_batch_size=3, seed=1)


@pytest.fixture(scope="module")
def rollouts():
    return tiny_rollouts()


def test_rollout_mask_ends_at_first_stop_token_and_flags_truncation(rollouts, tok):
    _, r = rollouts
    stop = tok.convert_tokens_to_ids("<|im_end|>")
    p = r.input_ids.shape[1] - r.completion_mask.shape[1]
    comp = r.input_ids[:, p:]
    assert r.truncated.any() and (~r.truncated).any(), "the case needs both kinds of rows"
    for i in range(len(comp)):
        n = int(r.completion_mask[i].sum())
        assert r.completion_mask[i, :n].all() and not r.completion_mask[i, n:].any()  # a prefix
        toks = comp[i, :n].tolist()
        if r.truncated[i]:
            assert n == 20 and stop not in toks
        else:
            assert toks[-1] == stop and stop not in toks[:-1]
        assert r.texts[i] == tok.decode(toks, skip_special_tokens=True)


def test_rollouts_depend_only_on_seed(rollouts, tok):
    model, r = rollouts
    prompts = [chatml(p.problem) for p in tiny_problems(3)] + [chatml("a much longer prompt 12+34")]
    torch.manual_seed(12345)  # the global RNG must not matter
    again = grpo.sample_rollouts(model, tok, prompts, group_size=3, max_new_tokens=20, gen_batch_size=3, seed=1)
    other = grpo.sample_rollouts(model, tok, prompts, group_size=3, max_new_tokens=20, gen_batch_size=3, seed=2)
    assert torch.equal(again.input_ids, r.input_ids)
    assert not torch.equal(other.input_ids, r.input_ids)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_micro_batch_accumulation_equals_full_batch_gradient(rollouts, loss_type):
    model, r = rollouts
    cm = r.completion_mask.float()
    n = len(cm)
    adv = torch.linspace(-1.5, 1.5, n)
    torch.manual_seed(3)
    old = (sequence_logprobs(model, r.input_ids, r.attention_mask, cm).detach()
           + 0.3 * torch.randn(cm.shape)) * cm  # off-policy, so some tokens clip

    def grads(slices, normalizer):
        model.zero_grad()
        for s in slices:
            lp = sequence_logprobs(model, r.input_ids[s], r.attention_mask[s], cm[s])
            loss, _ = policy_loss(lp, old[s], adv[s], cm[s], loss_type=loss_type, max_len=20,
                                  normalizer=normalizer)
            loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    full = grads([slice(0, n)], None)
    micro = grads([slice(0, 5), slice(5, 7), slice(7, n)], loss_normalizer(cm, loss_type, 20))
    for a, b in zip(full, micro):
        assert_close_to_scale(b, a, rel=1e-5)
    assert max(g.abs().max() for g in full) > 0


# ----------------------------------------------------------------------------------------------
# The run: resume, non-finite values, config and CLI
# ----------------------------------------------------------------------------------------------
def small_cfg(**kw):
    base = dict(batch_size=2, group_size=4, max_new_tokens=6, gen_batch_size=2, micro_batch_size=3, lr=3e-3,
                save_every=2, template="chatml", num_iterations=2, warmup_steps=2)
    return GRPOConfig(**{**base, **kw})


def test_resumed_run_on_toy_world_ends_with_bitwise_equal_weights(tmp_path):
    import toy

    tok = toy.char_tokenizer()  # the toy world's byte-level char tokenizer and problems, a smaller model
    problems = toy.make_problems(6, seed=0)
    schedule = random_schedule([p.id for p in problems], 2, 4, seed=0)

    def fresh():
        return toy.tiny_model(tok, seed=0, hidden=32)

    straight = fresh()
    grpo.train(straight, tok, problems, schedule, small_cfg(), out_dir=tmp_path / "a", reward_fn=has_e_reward)

    killed = fresh()  # "killed" after step 2: a first run that stops there
    grpo.train(killed, tok, problems, schedule, small_cfg(max_steps=2), out_dir=tmp_path / "b",
               reward_fn=has_e_reward)
    resumed = fresh()  # a new object from the initial weights, as a new process would build
    grpo.train(resumed, tok, problems, schedule, small_cfg(), out_dir=tmp_path / "b", reward_fn=has_e_reward)

    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(straight.state_dict()["model.norm.weight"], fresh().state_dict()["model.norm.weight"])
    from runtime import read_jsonl
    log_a, log_b = read_jsonl(tmp_path / "a" / "train_log.jsonl"), read_jsonl(tmp_path / "b" / "train_log.jsonl")
    assert [r["step"] for r in log_b] == [0, 1, 2, 3]
    for ra, rb in zip(log_a, log_b):
        for k in ("problem_ids", "reward", "response_len", "grad_norm", "loss", "clip_frac"):
            assert ra[k] == rb[k], k
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step_000002", "step_000004"]


def test_nan_reward_stops_with_clear_message_and_keeps_checkpoint(tmp_path, tok):
    problems = tiny_problems(4)
    schedule = [["p0", "p1"], ["p2", "p3"]]
    calls = []

    def reward(text, gold):
        calls.append(text)
        return float("nan") if len(calls) > 8 else 1.0  # step 0 fine, step 1 returns NaN

    model = tiny_model()
    with pytest.raises(FloatingPointError, match=r"step 1: reward nan for problem 'p2'.*step_000001"):
        grpo.train(model, tok, problems, schedule, small_cfg(save_every=1, num_iterations=1),
                   out_dir=tmp_path, reward_fn=reward)
    assert grpo.latest_checkpoint(tmp_path / "checkpoints").name == "step_000001"


def test_nan_loss_stops_before_the_update(tmp_path, tok):
    model = tiny_model()
    # a fault injected only into the training forward (sampling runs without grad and stays finite)
    model.model.norm.register_forward_hook(lambda mod, inp, out: out * float("nan") if torch.is_grad_enabled() else out)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FloatingPointError, match="loss is nan"):
        grpo.train(model, tok, tiny_problems(2), [["p0", "p1"]], small_cfg(num_iterations=1),
                   out_dir=tmp_path, reward_fn=has_e_reward)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_nan_weights_while_sampling_stop_with_clear_message(tmp_path, tok):
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight[5, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        grpo.train(model, tok, tiny_problems(2), [["p0", "p1"]], small_cfg(), out_dir=tmp_path,
                   reward_fn=has_e_reward)


def test_config_validates_and_presets_apply_overrides():
    with pytest.raises(ValueError, match="loss_type='ppo'"):
        GRPOConfig(loss_type="ppo")
    dapo = GRPOConfig.preset("dapo", lr=2e-6)
    assert (dapo.loss_type, dapo.eps_high, dapo.skip_zero_std, dapo.lr) == ("dapo", 0.28, True, 2e-6)
    assert GRPOConfig.toy().max_new_tokens == 16
    with pytest.raises(ValueError, match="unknown GRPOConfig preset"):
        GRPOConfig.preset("ppo")


def test_cli_flags_are_the_config_fields():
    args = grpo.build_parser().parse_args(
        ["--model", "m", "--train-data", "d.jsonl", "--loss-type", "dapo", "--no-bf16", "--max-steps", "none",
         "--eps-high", "0.28", "--group-size", "4", "--skip-zero-std"])
    assert (args.loss_type, args.bf16, args.max_steps, args.eps_high, args.group_size, args.skip_zero_std) == \
        ("dapo", False, None, 0.28, 4, True)
    assert not hasattr(args, "lr")  # unset flags leave the preset's value
    flags = {a.dest for a in grpo.build_parser()._actions}
    assert {f.name for f in grpo.fields(GRPOConfig)} <= flags


def test_unknown_problem_id_in_schedule_is_named(tmp_path, tok):
    with pytest.raises(KeyError, match="step 1 names problem id 'zz'"):
        grpo.train(tiny_model(), tok, tiny_problems(2), [["p0"], ["zz"]], small_cfg(), out_dir=tmp_path,
                   reward_fn=has_e_reward)


def test_zero_variance_groups_are_dropped_from_the_loss(tok):
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    row = grpo.grpo_step(model, tok, tiny_problems(2), small_cfg(skip_zero_std=True, num_iterations=1), opt,
                         step=0, reward_fn=lambda text, gold: 1.0)
    assert row["frac_zero_std"] == 1.0 and row["n_loss_seqs"] == 0 and row["skipped"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_overlong_mask_drops_exactly_the_truncated_completions(tok):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = small_cfg(overlong="mask", num_iterations=1, max_new_tokens=20, batch_size=4)
    row = grpo.grpo_step(model, tok, tiny_problems(4), cfg, opt, step=0, reward_fn=has_e_reward)
    n = 4 * cfg.group_size
    assert 0 < row["truncated"] < 1, "the case needs both kinds of rows"
    assert row["n_loss_seqs"] == round(n * (1 - row["truncated"]))


# ----------------------------------------------------------------------------------------------
# Learning: the toy preset on the toy world
# ----------------------------------------------------------------------------------------------
def _heldout(model, tok, problems, samples=8):
    """Mean reward and boxed rate of `samples` completions per problem at temperature 1 (seed fixed)."""
    from data import format_prompt
    from verifier import last_boxed, math_reward

    prompts = [format_prompt(p.problem, tok, "chatml") for p in problems]
    roll = grpo.sample_rollouts(model, tok, prompts, group_size=samples, max_new_tokens=16, gen_batch_size=100,
                                seed=1234)
    reward = sum(math_reward(t, problems[i // samples].answer) for i, t in enumerate(roll.texts)) / len(roll.texts)
    boxed = sum(last_boxed(t) is not None for t in roll.texts) / len(roll.texts)
    return reward, boxed


def test_forty_toy_steps_raise_heldout_reward(toy_world, tmp_path):
    """Vanilla GRPO (random order over all training problems, corrupted ones included), the toy
    preset, 40 steps. bench_grpo.py --learn measured on 500 held-out problems x 4 samples:
    0.110 -> 0.147 over 3 seeds (range 0.014), the boxed rate 0.66 -> 0.93. Here (200 problems
    x 8 samples, seed 0; 0.139 -> 0.205 when written) a single seed must gain more than half of
    the bench's margin."""
    import toy

    model, tok, train, test = toy.load_world(toy_world.root)
    held = test[:200]
    r0, b0 = _heldout(model, tok, held)
    cfg = GRPOConfig.toy(seed=0)
    schedule = random_schedule([p.id for p in train], cfg.batch_size, 40, seed=0)
    grpo.train(model, tok, train, schedule, cfg, out_dir=tmp_path / "run")
    r1, b1 = _heldout(model, tok, held)
    assert r1 - r0 > 0.024, (r0, r1, b0, b1)
    assert b0 < 0.8 and b1 - b0 > 0.15, (b0, b1)  # what 40 steps learn first is the answer format


# ----------------------------------------------------------------------------------------------
# Truncated importance sampling (micro-batches and packing: test_batching.py)
# ----------------------------------------------------------------------------------------------
def test_truncated_importance_weight_scales_the_surrogate_by_hand():
    logp = torch.tensor([[-1.0, -2.0]])
    adv = torch.tensor([2.0])
    mask = torch.ones(1, 2)
    w = torch.tensor([[0.5, 2.0]])
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, loss_type="dapo", is_weight=w)
    # ratio 1 on-policy: per token -A * w = [-1, -4]; token mean over 2 tokens
    assert abs(loss.item() - (-2.5)) < 1e-6


def test_checkpointing_defaults_on_for_long_completions():
    assert GRPOConfig(max_new_tokens=3000).checkpointing
    assert not GRPOConfig(max_new_tokens=512).checkpointing
    assert not GRPOConfig(max_new_tokens=3000, gradient_checkpointing=False).checkpointing


# ----------------------------------------------------------------------------------------------
# First contact with CUDA, checked on a CPU: padding rows, the evaluation model, the context
# ----------------------------------------------------------------------------------------------
def test_evaluation_generates_with_the_rollout_copy(tmp_path, tok):
    """The in-loop evaluation decodes with the model the rollouts use (a bf16 copy here), never the
    fp32 policy (under autocast on CUDA it would re-cast every weight for every token)."""
    seen = []

    def eval_fn(step, model):
        seen.append((step, next(model.parameters()).dtype))
        return {"mean": 0.0}

    grpo.train(tiny_model(), tok, tiny_problems(4), [["p0", "p1"], ["p2", "p3"]],
               small_cfg(rollout_dtype="bfloat16", eval_every=1, num_iterations=1), out_dir=tmp_path,
               eval_fn=eval_fn, reward_fn=has_e_reward)
    assert seen == [(0, torch.bfloat16), (1, torch.bfloat16), (2, torch.bfloat16)]


def test_prompts_past_the_context_are_reported_and_left_out(tmp_path, tok, capsys):
    long_text = "1+1=? " * 20  # its chatml prompt is over 128 - 6 tokens
    problems = tiny_problems(4) + [Problem(id="long", problem=long_text, answer="2", meta={})]
    grpo.train(tiny_model(), tok, problems, [["p0", "long", "p1"], ["p2", "p3"]], small_cfg(num_iterations=1),
               out_dir=tmp_path, reward_fn=has_e_reward)
    err = capsys.readouterr().err
    assert "1 of 5 scheduled problems have prompts over 122 tokens (context 128 - max_new_tokens 6)" in err
    assert "'long'" in err
    from runtime import read_jsonl
    assert [r["problem_ids"] for r in read_jsonl(tmp_path / "train_log.jsonl")] == [["p0", "p1"], ["p2", "p3"]]
    with pytest.raises(ValueError, match="schedule step 0: every problem's prompt is over"):
        grpo.train(tiny_model(), tok, problems, [["long"]], small_cfg(), out_dir=tmp_path / "b",
                   reward_fn=has_e_reward)


def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(tmp_path, tok):
    """A run killed after step 2 whose step-2 checkpoint was torn resumes from step 1, says so, and
    ends where an uninterrupted run ends."""
    problems = tiny_problems(6)
    schedule = random_schedule([p.id for p in problems], 2, 4, seed=0)
    cfg = small_cfg(save_every=1, keep_checkpoints=3)
    straight = tiny_model()
    grpo.train(straight, tok, problems, schedule, cfg, out_dir=tmp_path / "a", reward_fn=has_e_reward)
    grpo.train(tiny_model(), tok, problems, schedule, small_cfg(save_every=1, keep_checkpoints=3, max_steps=2),
               out_dir=tmp_path / "b", reward_fn=has_e_reward)
    torn = tmp_path / "b" / "checkpoints" / "step_000002" / "model.safetensors"
    torn.write_bytes(torn.read_bytes()[:64])
    resumed = tiny_model()
    with pytest.warns(UserWarning, match="step_000002 is unreadable"):
        grpo.train(resumed, tok, problems, schedule, cfg, out_dir=tmp_path / "b", reward_fn=has_e_reward)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    from runtime import read_jsonl
    assert [r["step"] for r in read_jsonl(tmp_path / "b" / "train_log.jsonl")] == [0, 1, 2, 3]


def test_the_trained_policy_is_saved_as_a_folder_from_pretrained_loads(tmp_path, tok):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = tiny_model()
    grpo.train(model, tok, tiny_problems(4), [["p0", "p1"], ["p2", "p3"]], small_cfg(num_iterations=1),
               out_dir=tmp_path, reward_fn=has_e_reward)
    final = grpo.save_final(model, tok, tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(final)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert AutoTokenizer.from_pretrained(final)("1+1=?")["input_ids"] == tok("1+1=?")["input_ids"]
    assert not (tmp_path / ".tmp_final").exists()


def cli_run(tmp_path, n_problems=4):
    """A saved tiny policy and its training file, and grpo.py's flags to train it on CPU in --out tmp/out."""
    import json

    tiny_model().save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"id": p.id, "problem": p.problem, "answer": p.answer}) + "\n"
                            for p in tiny_problems(n_problems)))
    return ["--model", str(tmp_path / "model"), "--train-data", str(data), "--out", str(tmp_path / "out"),
            "--template", "chatml", "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "4",
            "--gen-batch-size", "2", "--num-steps", "4", "--save-every", "1", "--lr", "1e-3"]


def test_cli_stops_at_once_when_another_run_holds_the_out_folder(tmp_path, monkeypatch, capsys):
    import signal

    from test_runtime import hold_lock

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded although --out is in use")

    monkeypatch.setattr(grpo, "load_model", loaded)
    argv = cli_run(tmp_path)
    capsys.readouterr()  # saving the tiny model's progress bars
    holder = hold_lock(tmp_path / "out")
    try:
        with pytest.raises(SystemExit) as stopped:
            grpo.main(argv)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    err = capsys.readouterr().err
    assert stopped.value.code == 1 and err.startswith(f"grpo.py: {tmp_path / 'out'} is in use by pid {holder.pid} ")
    assert len(err.strip().splitlines()) == 1


def test_cli_ctrl_c_names_the_last_checkpoint_and_the_same_command_resumes(tmp_path, monkeypatch, capsys):
    """Ctrl-C during step 2 (steps 0 and 1 done, each checkpointed): one line, exit 130; run again, the
    run ends with each of the 4 steps logged once."""
    from runtime import read_jsonl

    real_step = grpo.grpo_step

    def interrupted_at_step_2(*args, step, **kwargs):
        if step == 2:
            raise KeyboardInterrupt
        return real_step(*args, step=step, **kwargs)

    argv = cli_run(tmp_path)
    monkeypatch.setattr(grpo, "grpo_step", interrupted_at_step_2)
    with pytest.raises(SystemExit) as stopped:
        grpo.main(argv)
    assert stopped.value.code == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"grpo.py: interrupted during training in {tmp_path / 'out'} (last checkpoint step_000002); run the same "
        "command to resume")
    monkeypatch.setattr(grpo, "grpo_step", real_step)
    grpo.main(argv)
    assert [row["step"] for row in read_jsonl(tmp_path / "out" / "train_log.jsonl")] == [0, 1, 2, 3]


# ----------------------------------------------------------------------------------------------
# The log row: TRL's names, reward_std, entropy, per-problem pass rates
# ----------------------------------------------------------------------------------------------
def test_policy_loss_entropy_is_the_mean_negative_old_logprob_over_the_mask():
    old = torch.tensor([[-0.5, -1.0, -2.0], [-0.25, -3.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    _, stats = policy_loss(old.clone(), old, torch.tensor([1.0, -1.0]), mask, loss_type="grpo", eps_low=0.2,
                           eps_high=0.2)
    assert stats["entropy"] == pytest.approx((0.5 + 1.0 + 0.25) / 3, rel=1e-6)


def test_step_row_has_pass_rates_reward_std_and_trl_names_by_hand(tok):
    seen = []

    def reward(text, gold):  # about half right, recorded in call order (row b * G + j)
        seen.append(has_e_reward(text, gold))
        return seen[-1]

    cfg = small_cfg(num_iterations=1, batch_size=4)
    model = tiny_model()
    row = grpo.grpo_step(model, tok, tiny_problems(4), cfg, torch.optim.AdamW(model.parameters(), lr=1e-3),
                         step=0, reward_fn=reward)
    g = cfg.group_size
    groups = [seen[b * g:(b + 1) * g] for b in range(4)]
    assert row["pass_rates"] == pytest.approx([sum(x) / g for x in groups], abs=1e-12)

    def sample_std(x):  # unbiased, written out
        m = sum(x) / len(x)
        return math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1))

    assert row["reward_std"] == pytest.approx(sum(sample_std(x) for x in groups) / 4, rel=1e-9)
    for old, new in train_log.TRL_NAMES.items():
        if old in row:
            assert row[new] == row[old], new
    assert row["frac_reward_zero_std"] == sum(len(set(x)) == 1 for x in groups) / 4
    vocab = model.config.vocab_size
    # a freshly initialised model is close to uniform over the vocabulary: entropy near log V
    assert abs(row["entropy"] - math.log(vocab)) < 0.25 * math.log(vocab)


class RecordingWandb:
    """A stand-in for the wandb package (no account or network here): records what the trainer sends."""

    def __init__(self):
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kw):
        self.inits.append(kw)
        return self

    def log(self, scalars, step):
        self.logged.append((step, scalars))

    def finish(self):
        self.finished += 1


def test_report_to_mirrors_the_logs_scalars_with_their_steps(tmp_path, tok, monkeypatch):
    import json
    import sys

    fake = RecordingWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    eval_fn = lambda step, model: {"mean": 0.5 + step, "items": [1.0, 0.0]}  # noqa: E731
    grpo.train(tiny_model(), tok, tiny_problems(4), [["p0", "p1"], ["p2", "p3"]],
               small_cfg(num_iterations=1, eval_every=1, report_to="wandb"), out_dir=tmp_path / "arm-s0",
               reward_fn=has_e_reward, eval_fn=eval_fn)
    assert len(fake.inits) == 1 and fake.inits[0]["name"] == "arm-s0" and fake.inits[0]["resume"] == "allow"
    assert fake.inits[0]["config"]["report_to"] == "wandb" and fake.finished == 1
    evals = [(s, d) for s, d in fake.logged if "eval/mean" in d]
    assert [(s, d["eval/mean"]) for s, d in evals] == [(0, 0.5), (1, 1.5), (2, 2.5)]
    assert all(set(d) == {"eval/mean"} for _, d in evals)  # the per-problem list stays in the JSONL log
    trains = [(s, d) for s, d in fake.logged if "train/reward" in d]
    rows = [json.loads(line) for line in (tmp_path / "arm-s0" / "train_log.jsonl").read_text().splitlines()]
    assert [s for s, _ in trains] == [1, 2]
    for (_, d), row in zip(trains, rows):
        assert d["train/frac_reward_zero_std"] == row["frac_zero_std"] and d["train/reward"] == row["reward"]
        assert "train/problem_ids" not in d and "train/pass_rates" not in d and "train/step" not in d


def test_report_to_a_missing_package_stops_naming_the_flag_and_the_install(tmp_path, tok, monkeypatch):
    import sys

    from runtime import ConfigError, Tracker

    monkeypatch.setitem(sys.modules, "trackio", None)  # import trackio raises ImportError
    with pytest.raises(ConfigError, match=r"^--report-to trackio: expected an installed package for it \(pip install "
                                          r"trackio\), or none"):
        small_cfg(report_to="trackio")  # when the flags are read, before any data stage runs
    with pytest.raises(ConfigError, match=r"^--report-to trackio: the package is not installed .*pip install trackio"):
        Tracker("trackio", tmp_path)  # the tracker itself, for configs built without validation
