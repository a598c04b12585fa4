"""Specification of plan.py: each planned component against what torch actually allocates for it on
small Qwen2 configs that the plan's coefficients were not counted on."""
import dataclasses

import pytest
import torch

import batching
import decode_engines
import grpo
import logprobs
import plan
import runtime
import sampler

GIB = 1024 ** 3


def qwen2(h=96, i=352, layers=3, heads=6, kv=3, vocab=300, tied=True):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=h, intermediate_size=i, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                      tie_word_embeddings=tied)
    return Qwen2ForCausalLM(cfg)


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_count_matches_the_model(tied):
    model = qwen2(tied=tied)
    shape = plan.ModelShape.from_config(model.config)
    assert shape.params == sum(p.numel() for p in model.parameters())


def test_known_shapes_have_the_published_sizes():
    # model cards: Qwen2.5-Math-1.5B "1.54B", Qwen2.5-Math-7B "7.61B"/"7.62B"
    assert abs(plan.KNOWN["Qwen/Qwen2.5-Math-1.5B"].params / 1e9 - 1.54) < 0.01
    assert abs(plan.KNOWN["Qwen/Qwen2.5-Math-7B"].params / 1e9 - 7.615) < 0.01


def saved_bytes(model, tokens: int, *, autocast: bool) -> int:
    """What autograd keeps for backward after one forward of `tokens` tokens (distinct storages,
    parameters excluded), counted with saved-tensor hooks."""
    ids = torch.randint(0, model.config.vocab_size, (1, tokens))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
        return t

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        model.model(input_ids=ids).last_hidden_state
    return sum(seen.values())


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_plan_matches_saved_tensors(autocast, checkpointing):
    model = qwen2()
    if checkpointing:
        batching.set_activation_checkpointing(model, True)
        model.train()
    measured = saved_bytes(model, 300, autocast=autocast)
    per_token = plan.activation_bytes_per_token(plan.ModelShape.from_config(model.config), bf16=autocast,
                                                checkpointing=checkpointing)
    planned = 300 * per_token["stored"]  # what stays for backward; "recompute" is a transient
    assert abs(planned / measured - 1) < 0.15, (planned, measured)


def test_kv_cache_plan_matches_the_allocated_cache():
    model = qwen2().eval()
    shape = plan.ModelShape.from_config(model.config)
    cfg = grpo.GRPOConfig(gen_batch_size=3, group_size=4, max_new_tokens=40, template="plain")
    prompt = 20
    cache = decode_engines._slab_cache(model, 3 * 4, prompt + 40)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 300, (3, prompt)), use_cache=True,
              **{runtime.cache_kwarg(model): cache})
    allocated = sum(layer.k_buf.nbytes + layer.v_buf.nbytes for layer in cache.layers)
    planned = plan.memory_plan(shape, cfg, prompt_tokens=prompt, cuda=False)["phases"]["generation"]["KV cache"]
    assert abs(planned / allocated - 1) < 0.15, (planned, allocated)


def test_weights_gradients_and_adam_moments_match_the_allocation():
    model = qwen2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.randint(0, 300, (2, 10))).logits.sum().backward()
    opt.step()
    moments = sum(t.nbytes for st in opt.state.values() for t in st.values() if t.dim() > 0)
    grads = sum(p.grad.nbytes for p in model.parameters())
    weights = sum(p.nbytes for p in model.parameters())
    shape = plan.ModelShape.from_config(model.config)
    phases = plan.memory_plan(shape, grpo.GRPOConfig(beta=0.0), cuda=False)["phases"]["training"]
    assert phases["weights (fp32)"] == weights
    assert phases["gradients (fp32)"] == grads
    assert phases["AdamW moments (fp32)"] == moments


def test_fit_flags_brings_the_peak_under_the_budget():
    shape = plan.KNOWN["Qwen/Qwen2.5-Math-1.5B"]
    cfg = grpo.GRPOConfig(gen_batch_size=128, gradient_checkpointing=False)
    before = plan.memory_plan(shape, cfg)
    assert before["peak"] > 0.9 * 40 * GIB
    changes, after = plan.fit_flags(shape, cfg, 40)
    assert after["peak"] <= 0.9 * 40 * GIB
    assert changes["gen_batch_size"] < 128
    # the plan of the suggested flags is what fit_flags reports
    assert plan.memory_plan(shape, dataclasses.replace(cfg, **changes))["peak"] == after["peak"]


def test_fit_flags_says_when_nothing_fits():
    with pytest.raises(ValueError, match="AdamW moments alone need"):
        plan.fit_flags(plan.KNOWN["Qwen/Qwen2.5-Math-7B"], grpo.GRPOConfig(), 80)


def test_defaults_fit_an_80gb_card():
    shape = plan.KNOWN["Qwen/Qwen2.5-Math-1.5B"]
    changes, _ = plan.fit_flags(shape, grpo.GRPOConfig(), 80)
    assert changes == {}


def test_fsdp2_splits_the_fp32_state_per_gpu_and_ddp_does_not():
    shape = plan.KNOWN["Qwen/Qwen2.5-Math-7B"]
    p = 7_615_616_512  # Qwen2.5-7B's published parameter count (untied embeddings)
    one = plan.memory_plan(shape, grpo.GRPOConfig())
    ddp = plan.memory_plan(shape, grpo.GRPOConfig(), world=8)
    fsdp = plan.memory_plan(shape, grpo.GRPOConfig(parallel="fsdp2"), world=8)
    assert ddp["phases"]["training"] == one["phases"]["training"]  # every ddp rank holds everything
    # a rank generates its share: B 64 / 8 ranks = 8 prompts x G 8 = 64 rows, not 32 x 8 = 256
    assert ddp["rows"] == 64 and one["rows"] == 256
    assert ddp["phases"]["generation"]["KV cache"] * 4 == one["phases"]["generation"]["KV cache"]
    t = fsdp["phases"]["training"]
    assert t["weights (fp32)"] == 4 * p / 8 and t["AdamW moments (fp32)"] == 8 * p / 8
    assert t["gradients (fp32)"] == 4 * p / 8
    assert t["rollout copy"] == 2 * p  # the copy that generates is whole on every rank
    # what FSDP2 adds by hand: layers 0 and 1 (prefetch) and the root (2 x 152064 x 3584 + 3584) in bf16
    layer = (3584 * 3584 + 3584) + 2 * (3584 * 512 + 512) + 3584 * 3584 + 3 * 3584 * 18944 + 2 * 3584
    root = 2 * 152064 * 3584 + 3584
    assert t["gathered layers (FSDP2)"] == 2 * (2 * layer + root)
    assert t["unsharded layer gradient"] == 4 * root
    # per-rank work does not shrink with sharding
    assert fsdp["phases"]["generation"]["KV cache"] == ddp["phases"]["generation"]["KV cache"]
    assert t["activations"] == one["phases"]["training"]["activations"]
    assert fsdp["peak"] < 80 * GIB < one["peak"]
    with pytest.raises(ValueError, match="--parallel fsdp2"):  # the advice names the way out
        plan.fit_flags(shape, grpo.GRPOConfig(), 80)
    changes, fitted = plan.fit_flags(shape, grpo.GRPOConfig(parallel="fsdp2"), 80, world=8)
    assert fitted["peak"] <= 0.9 * 80 * GIB and "rollout_dtype" not in changes


# ----------------------------------------------------------------------------------------------
# Per-vocabulary-entry bytes, counted as live tensors (what the allocator would have to hold at once)
# ----------------------------------------------------------------------------------------------
class LiveBytes:
    """A dispatch mode that counts the bytes of every tensor storage created inside it (plus those
    given) while some tensor still refers to it, and the peak of that count."""

    def __init__(self, *already):
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        refs, sizes = {}, {}
        state = {"live": 0, "peak": 0}

        def drop(key):
            refs[key] -= 1
            if refs[key] == 0:
                state["live"] -= sizes.pop(key)
                del refs[key]

        def track(t):
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if storage.nbytes() == 0:
                return
            if key not in refs:
                refs[key], sizes[key] = 0, storage.nbytes()
                state["live"] += storage.nbytes()
            refs[key] += 1
            weakref.finalize(t, drop, key)

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        track(t)
                state["peak"] = max(state["peak"], state["live"])
                return out

        for t in already:
            track(t)
        state["peak"] = state["live"]
        self.mode, self.state = Mode(), state

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)

    @property
    def peak(self) -> int:
        return self.state["peak"]


def test_sampler_step_bytes_per_logit_are_within_the_plan():
    rows, vocab = 16, 50_000
    logits = torch.randn(rows, vocab).to(torch.bfloat16)  # what the bf16 rollout copy's lm head returns
    with LiveBytes(logits) as live:
        decode_engines._next_token(logits, 1.0, 1.0, torch.Generator().manual_seed(0))
    per_entry = live.peak / (rows * vocab)
    # an upper bound that is not loose: CUDA's multinomial adds a copy the CPU's does not
    assert 0.7 * plan.SAMPLER_BYTES_PER_LOGIT <= per_entry <= plan.SAMPLER_BYTES_PER_LOGIT, per_entry


@pytest.mark.parametrize("autocast", [False, True])
def test_logprob_chunk_bytes_per_logit_are_within_the_plan(autocast):
    n, hidden, vocab = 256, 32, 50_000
    head = torch.nn.Linear(hidden, vocab, bias=False)
    h = torch.randn(n, hidden, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with LiveBytes() as live, ctx:
        logprobs.token_logprobs(h, targets, head, chunk_size=n).sum().backward()
    per_entry = (live.peak - 4 * hidden * vocab) / (n * vocab)  # less the head's own weight gradient
    assert 0.7 * plan.LOGPROB_BYTES_PER_LOGIT <= per_entry <= plan.LOGPROB_BYTES_PER_LOGIT, per_entry


def test_training_counts_autocasts_bf16_weight_copies_on_cuda_only():
    shape = plan.KNOWN["Qwen/Qwen2.5-Math-1.5B"]
    cuda = plan.memory_plan(shape, grpo.GRPOConfig())["phases"]["training"]
    cpu = plan.memory_plan(shape, grpo.GRPOConfig(), cuda=False)["phases"]["training"]
    assert cuda["autocast bf16 weight copies"] == 2 * shape.params
    assert "autocast bf16 weight copies" not in cpu


def test_out_of_memory_advice_names_flags_that_exist():
    import re

    import evaluate
    import saerl

    known = {s for a in grpo.build_parser()._actions for s in a.option_strings}
    for config in (saerl.Config, evaluate.EvalConfig):  # their flags are their fields
        known |= {"--" + f.name.replace("_", "-") for f in dataclasses.fields(config)}
    named = {flag for advice in plan.ADVICE.values() for flag in re.findall(r"--[a-z][a-z0-9-]*", advice)}
    assert named and named <= known, named - known


def test_auto_gen_batch_size_takes_the_largest_equal_split_that_fits():
    shape = plan.KNOWN["Qwen/Qwen2.5-Math-1.5B"]
    cfg = grpo.GRPOConfig(gen_batch_size="auto")  # B 64

    def generation_gib(size):
        return plan.memory_plan(shape, dataclasses.replace(cfg, gen_batch_size=size))["totals"]["generation"] / GIB

    # by hand from the plan's own table: 64 prompts need generation_gib(64), 32 need generation_gib(32)
    assert generation_gib(32) < 0.9 * 60 < generation_gib(64)
    assert plan.auto_gen_batch_size(shape, cfg, 140) == 64  # an H200: the whole batch in one call
    assert plan.auto_gen_batch_size(shape, cfg, 60) == 32   # two equal calls, not 63 + 1
    assert plan.auto_gen_batch_size(shape, cfg, 140, world=4) == 16  # a rank's share B / N at most
    with pytest.raises(ValueError, match="gen_batch_size"):
        grpo.GRPOConfig(gen_batch_size=0)
    assert grpo.build_parser().parse_args(["--model", "m", "--gen-batch-size", "auto"]).gen_batch_size == "auto"


def test_auto_gen_batch_size_on_a_cpu_is_the_whole_share(tmp_path):
    from test_grpo import has_e_reward, small_cfg, tiny_model, tiny_problems, tiny_tokenizer

    seen = []
    real = sampler.sample_rollouts

    def spy(*args, **kwargs):
        seen.append(kwargs["gen_batch_size"])
        return real(*args, **kwargs)

    import unittest.mock

    with unittest.mock.patch.object(grpo, "sample_rollouts", spy):
        grpo.train(tiny_model(), tiny_tokenizer(), tiny_problems(4), [["p0", "p1", "p2", "p3"]],
                   small_cfg(batch_size=4, gen_batch_size="auto", num_iterations=1), out_dir=tmp_path,
                   reward_fn=has_e_reward)
    assert seen == [4]
