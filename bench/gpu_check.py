"""bench/gpu_check.py -- the project's one prepared GPU check: the CUDA path of a GRPO step, check by check.

    python bench/gpu_check.py [--size 1.5b|small] [--out PATH] [--toy-world DIR] [--time-budget 400]
                              [--gpu-memory 80] [--checks 1,2,...]

Written for a session lent a GPU for a few minutes: one command, at most ~7 minutes on an H100/H200
at the defaults, a table at the end and a JSON file (default bench/results/gpu_check.json) rewritten
atomically after every check, so a crash or a kill keeps what ran. Every check runs in its own
try/except: a failure is that check's verdict "error" (message and a short traceback) and the next
check runs. No check starts once --time-budget seconds are spent ("skipped: time budget").

`--size 1.5b` (the default on CUDA) is a randomly initialised Qwen2ForCausalLM with
Qwen2.5-Math-1.5B's shapes, built on the device (no download; a word-level tokenizer of the same
151,936 entries), fp32 master weights and the bf16 rollout copy as grpo.train makes them, the
process capped at --gpu-memory GiB (an H200 tests what an 80 GB card allows). `--size small` (the
default on CPU) runs every check scaled down, in under a minute on a 2-core CPU. Random weights
never emit a stop token, so the rollout checks stop on a set of token ids whose probability mass
under the model gives a real run's lengths (mean ~700 of 3000; some rows reach the cap).

Checks, in order of value:
 1 left_pad       prefill and logprobs.sequence_logprobs + backward on left-padded rows of very different
                  prompt lengths, bf16 weights and fp32 + bf16 autocast (CPU: fp32, bf16), with the
                  attention as built and after runtime.pad_safe_attention: finite logits / log-probs /
                  gradients, and the SDPA backend that ran (profiler op and kernel names)
 2 engines        compact vs hf greedy (first divergent token per row), forced compaction
                  (decode_engines.COMPACT_AT 1.0) vs none (0.0): identical tokens, the same seed twice: equal;
                  the graph engine's greedy tokens vs compact's where the sampler has that engine
 3 decode_anatomy one decode step at 256 / 64 / 8 live rows, KV ~2000: ms, GPU kernels, host syncs
                  and GPU busy fraction per step (small: 8 / 4 / 2 rows, KV 64; CPU: ms and ops only)
 4 rollouts       32 prompts x G 8 up to 3000 tokens on the rollout copy: tokens/s, lengths,
                  compactions, peak memory beside plan.memory_plan; then 64 prompts x 8 at 1500, and
                  the first call again on the graph engine (CUDA) while time is left for check 5
 5 training       grpo.grpo_step (importance weight, checkpointing, chunked log-probs, fused AdamW)
                  on such a batch: tokens/s, TFLOP/s, MFU, peak memory beside the plan, gradient
                  norm, sampler gap, the rollout copy refreshed (skipped when check 4's generate
                  call says it would overrun the budget)
 6 toy_resume     grpo.train on the toy world (--toy-world, built beforehand on a CPU by
                  `python toy.py --out runs/toy_world`) with evaluation: 3 steps + resume to 4 vs 4
 7 sae            sae.train_sae (~200k tokens; small ~5k) and sae.encode_problems on the bf16 model:
                  tokens/s, the projected time for the real run's 20M tokens
 8 fsdp2          parallel.fsdp2 over NCCL (gloo on CPU) at world size 1: one grpo_step, the
                  whole-state gathers a checkpoint runs, the rollout refresh (small: the checkpoint
                  written too; 1.5b: not, 18 GB of disk writes)
Verdicts: ok, fail (ran; an expectation did not hold), error, skipped: <why>; "not run yet" is left
by a run killed before reaching the check.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import gc
import json
import math
import os
import random
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import batching  # noqa: E402
import data  # noqa: E402
import decode_engines  # noqa: E402
import grpo  # noqa: E402
import logprobs  # noqa: E402
import parallel  # noqa: E402
import plan  # noqa: E402
import graph_decode  # noqa: E402
import sampler  # noqa: E402
import toy  # noqa: E402
import runtime  # noqa: E402
from schedule import random_schedule  # noqa: E402

# Qwen2.5-Math-1.5B's config.json shapes (the weights here are random)
QWEN_MATH_1_5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096,
                      rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True)
SMALL = dict(vocab_size=8192, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
             rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True)
PEAK_BF16_TFLOPS = 790.0  # the reference the issue sets for MFU on an H100/H200 (dense bf16)
TEMPLATE = "qwen-math"    # the real run's prompt template (~170 tokens with the character tokenizer)


@dataclass(frozen=True)
class Size:
    """Every knob that scales with --size."""
    shapes: dict
    pad_prompts: tuple          # 1: prompt lengths of the left-padded rows
    pad_completion: int         # 1: completion columns
    engine_rows: tuple          # 2: (prompts, G, new tokens)
    anatomy_rows: tuple         # 3: live rows measured
    anatomy_kv: int             # 3: KV length while measuring
    anatomy_steps: tuple        # 3: two decode lengths; per step = difference / (n2 - n1)
    rollout: tuple              # 4, 5: (prompts, G, max new tokens, target mean length)
    wide: tuple                 # 4: (prompts, max new tokens), G as above, one generate call
    calibration: tuple          # stop set: (prompts, G, tokens) sampled to estimate next-token mass
    toy: tuple                  # 6: (batch, G, test problems evaluated)
    sae: tuple                  # 7: (train tokens, d_sae, k, batch tokens, texts encoded)
    fsdp: tuple                 # 8: (prompts, G, new tokens, write a checkpoint to disk)


SIZES = {
    "1.5b": Size(QWEN_MATH_1_5B, (1, 24, 300, 900), 128, (8, 4, 128), (256, 64, 8), 2000, (8, 40),
                 (32, 8, 3000, 700), (64, 1500), (8, 4, 128), (16, 16, 64), (200_000, 16384, 64, 4096, 256),
                 (4, 4, 64, False)),
    "small": Size(SMALL, (1, 3, 17, 60), 16, (4, 2, 24), (8, 4, 2), 64, (2, 6),
                  (4, 4, 48, 12), (8, 16), (4, 2, 16), (4, 4, 8), (5000, 512, 16, 512, 32), (2, 2, 8, True)),
}


class Skipped(Exception):
    """A check that cannot run here; its verdict is "skipped: <message>"."""


# ----------------------------------------------------------------------------------------------
# The run: checks in order, each guarded, the JSON rewritten after each
# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    ap.add_argument("--size", choices=sorted(SIZES), default="1.5b" if cuda else "small")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    ap.add_argument("--toy-world", type=Path, default=ROOT / "runs" / "toy_world",
                    help="toy world folder built beforehand (python toy.py --out DIR); never built here")
    ap.add_argument("--time-budget", type=float, default=400.0, help="seconds after which no check starts")
    ap.add_argument("--gpu-memory", type=float, default=80.0, help="GiB the process may allocate "
                    "(set_per_process_memory_fraction, so a larger card tests an 80 GB card's limit)")
    ap.add_argument("--checks", default=",".join(str(i) for i in range(1, len(CHECKS) + 1)),
                    help="which checks to run, by number (a rerun of a few)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.gpu_memory * 2 ** 30 / total))
    import transformers

    result = {"device": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)",
              "torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
              "size": args.size, "gpu_memory_gib": args.gpu_memory if cuda else None,
              "time_budget_s": args.time_budget, "toy_world": str(args.toy_world),
              "started": _now(), "ended": None, "checks": {}}
    wanted = {int(c) for c in args.checks.split(",") if c.strip()}
    checks = [(f"{i}_{fn.__name__.removeprefix('check_')}", fn) for i, fn in enumerate(CHECKS, 1) if i in wanted]
    ctx = Context(args, SIZES[args.size], device)
    threads = torch.get_num_threads()
    if not cuda and args.size == "small":  # ops too small for threads to pay; on a shared CPU they spin-wait
        torch.set_num_threads(1)
    result["cpu_threads"] = torch.get_num_threads()
    try:
        run_checks(checks, ctx, result, args.out, args.time_budget)
    finally:
        torch.set_num_threads(threads)
    result["policy"] = ctx.info
    result["ended"] = _now()
    write_json(args.out, result)
    print_table(result)
    print(f"wrote {args.out}")
    return result


def run_checks(checks: list, ctx, result: dict, out: Path, budget_s: float) -> dict:
    """Run (name, fn(ctx) -> dict) in order into result["checks"]; rewrite `out` after each."""
    t0 = time.perf_counter()
    for name, _ in checks:
        result["checks"][name] = {"verdict": "not run yet"}
    write_json(out, result)
    for name, fn in checks:
        if time.perf_counter() - t0 >= budget_s:
            result["checks"][name] = {"verdict": "skipped: time budget"}
            write_json(out, result)
            continue
        print(f"[gpu_check] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            entry = fn(ctx)
            entry["verdict"] = entry.get("verdict", "ok")
        except Skipped as e:
            entry = {"verdict": f"skipped: {e}"}
        except Exception as e:  # noqa: BLE001 -- every failure is this check's verdict; the next check runs
            tb = traceback.format_exc().strip().splitlines()
            entry = {"verdict": "error", "error": f"{type(e).__name__}: {e}"[:2000], "traceback": tb[-12:]}
        entry["seconds"] = round(time.perf_counter() - start, 2)
        result["checks"][name] = entry
        write_json(out, result)
        print(f"[gpu_check] {name}: {entry['verdict']} ({entry['seconds']:.1f} s) {entry.get('summary', '')}",
              flush=True)
        _free_memory()
    return result


def write_json(path: Path, result: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    runtime.atomic_write_text(path, json.dumps(_jsonable(result), indent=2) + "\n")


def print_table(result: dict) -> None:
    print(f"\ndevice {result['device']}, torch {result['torch']}, transformers {result['transformers']}, "
          f"CUDA {result['cuda']}, size {result['size']}")
    print(f"{'check':18s} {'verdict':22s} {'seconds':>8s}  summary")
    for name, e in result["checks"].items():
        verdict = e["verdict"] if len(e["verdict"]) <= 22 else e["verdict"][:19] + "..."
        note = e.get("summary") or e.get("error", "")
        print(f"{name:18s} {verdict:22s} {e.get('seconds', 0):8.1f}  {str(note)[:110]}")


# ----------------------------------------------------------------------------------------------
# What the checks share: the sized policy, its rollout copy, the stop-token set, the optimizer
# ----------------------------------------------------------------------------------------------
class Context:
    """Built on first use, so that a check that needs nothing big (or a run whose budget is 0)
    builds nothing."""

    def __init__(self, args, size: Size, device: torch.device):
        self.args, self.size, self.device = args, size, device
        self.cuda = device.type == "cuda"
        self.info: dict = {}
        self.started = time.perf_counter()
        self._tok = self._policy = self._rollout = self._opt = self._mass = None
        self.generate_s = None  # check 4's generate call at the real regime, to size check 5's

    def time_left(self) -> float:
        return self.args.time_budget - (time.perf_counter() - self.started)

    def tokenizer(self):
        if self._tok is None:
            self._tok = wide_tokenizer(self.size.shapes["vocab_size"])
        return self._tok

    def policy(self):
        """The fp32 master weights (on the device), as grpo.train holds them."""
        if self._policy is None:
            t0 = time.perf_counter()
            self._policy = sized_policy(self.size.shapes, self.tokenizer(), self.device)
            self.info = {"params_m": round(sum(p.numel() for p in self._policy.parameters()) / 1e6, 1),
                         "build_s": round(time.perf_counter() - t0, 1),
                         "attn_implementation": self._policy.config._attn_implementation}
        return self._policy

    def rollout(self):
        """The model that generates: a bf16 copy on CUDA, the policy itself on CPU (rollout dtype auto)."""
        if self._rollout is None:
            self._rollout = sampler.rollout_model(self.policy(), "auto")
        return self._rollout

    def optimizer(self):
        """AdamW as grpo.train makes it (fused on CUDA), its moments allocated by one zero-gradient
        step (the memory after step 1; the weights do not move)."""
        if self._opt is None:
            policy = self.policy()
            self._opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, weight_decay=0.0,
                                          fused=True if self.cuda else None)
            for q in policy.parameters():
                q.grad = torch.zeros_like(q)
            self._opt.step()
            self._opt.zero_grad(set_to_none=True)
        return self._opt

    def drop_optimizer(self) -> None:
        self._opt = None
        _free_memory()

    def release_policy(self) -> None:
        self._policy = self._rollout = self._opt = None
        _free_memory()

    def prompts(self, n: int, seed: int) -> tuple[list, list[str]]:
        problems = toy.make_problems(n, seed=seed, corrupt_frac=0.0, prefix=f"gpu{seed}")
        return problems, [data.format_prompt(p.problem, self.tokenizer(), TEMPLATE) for p in problems]

    def stop_ids(self, target_mean: float, cap: int) -> tuple[list[int], dict]:
        """Token ids that end a completion after ~target_mean tokens on average (at most cap).

        A stop set of total next-token probability p ends a row after a geometric number of tokens,
        mean (1 - (1 - p)^cap) / p under the cap; p is solved for, then ids are drawn (seeded) from
        the vocabulary, leaving out the most probable 1% (no single token, whose probability varies
        most with the context, should dominate the set), until their mean probability under the
        model, measured on its own sampled continuations, reaches p."""
        mass = self._next_token_mass()
        p = _stop_probability(target_mean, cap)
        top = mass.topk(max(1, len(mass) // 100)).indices
        tok = self.tokenizer()
        banned = set(top.tolist()) | {tok.pad_token_id, tok.eos_token_id}
        order = torch.randperm(len(mass), generator=torch.Generator().manual_seed(0)).tolist()
        ids, total = [tok.eos_token_id], float(mass[tok.eos_token_id])
        for i in order:
            if total >= p:
                break
            if i not in banned:
                ids.append(i)
                total += float(mass[i])
        return ids, {"target_mean": target_mean, "cap": cap, "stop_probability": p, "stop_ids": len(ids),
                     "stop_mass_measured": total}

    def _next_token_mass(self) -> torch.Tensor:
        """Mean next-token distribution [V] of the rollout model over its own sampled continuations."""
        if self._mass is None:
            n, g, tokens = self.size.calibration
            model, tok = self.rollout(), self.tokenizer()
            _, prompts = self.prompts(n, seed=11)
            roll = sampler.sample_rollouts(model, tok, prompts, group_size=g, max_new_tokens=tokens,
                                           gen_batch_size=n, seed=11, stop_ids=[tok.eos_token_id])
            total, count = torch.zeros(model.config.vocab_size, dtype=torch.float64), 0
            with torch.no_grad(), decode_engines.autocast_for(model):
                for ids, att, cm in zip(roll.input_ids, roll.attention_mask, roll.completion_mask):
                    real = ids[att.bool()][None]  # one row, no padding
                    k = int(cm.sum())
                    logits = model(input_ids=real).logits[0, -k - 1:-1]  # [k, V]: predicting each completion token
                    total += logits.float().softmax(-1).sum(0).double().cpu()
                    count += k
            self._mass = (total / max(count, 1)).float()
        return self._mass


def _stop_probability(target_mean: float, cap: int) -> float:
    """p with (1 - (1 - p)^cap) / p = target_mean: the per-token stop probability (bisection)."""
    if target_mean >= cap:
        return 0.0
    lo, hi = 1e-9, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if (1 - (1 - mid) ** cap) / mid > target_mean:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def wide_tokenizer(vocab_size: int):
    """toy.py's characters and ChatML specials, padded with filler tokens up to `vocab_size`, so
    that any id a random model samples decodes (fillers never come out of encoding)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = list(toy.SPECIAL_TOKENS) + ["<unk>"] + list(toy.CHARS)
    vocab = {t: i for i, t in enumerate(base)}
    vocab.update({f"<f{i}>": i for i in range(len(base), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(toy.SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<unk>")


def sized_policy(shapes: dict, tokenizer, device: torch.device):
    """A randomly initialised Qwen2ForCausalLM with `shapes`, fp32, initialised on the device."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**shapes, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with device:  # no 6 GB round trip through host memory
        model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


# ----------------------------------------------------------------------------------------------
# 1. Left padding stays finite
# ----------------------------------------------------------------------------------------------
def check_left_pad(ctx: Context) -> dict:
    policy, tok = ctx.policy(), ctx.tokenizer()
    built = ctx.info["attn_implementation"]
    ids, att, cmask = _left_padded_batch(ctx.size, tok, policy.config.vocab_size)
    ids, att, cmask = ids.to(ctx.device), att.to(ctx.device), cmask.to(ctx.device)
    pad_safe = runtime.pad_safe_attention
    if ctx.cuda:
        variants = [("bf16 weights", torch.bfloat16, False), ("fp32 + bf16 autocast", torch.float32, True)]
    else:
        variants = [("fp32", torch.float32, False), ("bf16 weights", torch.bfloat16, False)]
    out = {"prompt_lengths": list(ctx.size.pad_prompts), "completion_lengths": cmask.sum(1).tolist(),
           "attn_as_built": built, "pad_safe_attention_exists": pad_safe is not None, "runs": {}}
    if ctx.cuda:
        out["sdp_enabled"] = {k: getattr(torch.backends.cuda, f"{k}_sdp_enabled")()
                              for k in ("flash", "mem_efficient", "math", "cudnn")
                              if hasattr(torch.backends.cuda, f"{k}_sdp_enabled")}
    modes = ["as built"] + (["pad_safe_attention"] if pad_safe else [])
    for dtype_name, dtype, autocast in variants:
        model = policy if dtype == torch.float32 else copy.deepcopy(policy).to(dtype)
        try:
            for mode in modes:
                if mode == "as built":
                    model.set_attn_implementation(built)
                else:
                    pad_safe(model)
                out["runs"][f"{dtype_name}, {mode}"] = _finiteness(model, ids, att, cmask, autocast, mode,
                                                                   ctx.device)
        finally:
            model.set_attn_implementation(built)
            model.zero_grad(set_to_none=True)
            del model
    judged = [r for k, r in out["runs"].items() if k.endswith(modes[-1])]
    ok = all(r["all_finite"] for r in judged)
    bad = [k for k, r in out["runs"].items() if not r["all_finite"]]
    out["verdict"] = "ok" if ok else "fail"
    backends = sorted({op.removeprefix("aten::_scaled_dot_product_").removesuffix("_backward")
                       for r in out["runs"].values() for op in r["sdpa_ops"]})
    out["summary"] = (f"{modes[-1]}: {'finite' if ok else 'NON-FINITE'}; non-finite runs: {bad or 'none'}; "
                      f"sdpa {backends}")
    return out


def _left_padded_batch(size: Size, tok, vocab: int):
    """Rows of very different prompt lengths, left-padded, and completions of different lengths,
    right-padded, as sample_rollouts lays them out: ids, attention mask [N, P + C], completion mask [N, C]."""
    gen = torch.Generator().manual_seed(0)
    lo = len(toy.SPECIAL_TOKENS) + 1  # characters and fillers, no special token
    p, c = max(size.pad_prompts), size.pad_completion
    comp = [c, c // 2, 3, c]
    n = len(size.pad_prompts)
    ids = torch.full((n, p + c), tok.pad_token_id, dtype=torch.long)
    att = torch.zeros((n, p + c), dtype=torch.long)
    for i, lp in enumerate(size.pad_prompts):
        lc = comp[i % len(comp)]
        ids[i, p - lp:p + lc] = torch.randint(lo, vocab, (lp + lc,), generator=gen)
        att[i, p - lp:p + lc] = 1
    return ids, att, att[:, p:].clone()


def _finiteness(model, ids, att, cmask, autocast: bool, mode: str, device) -> dict:
    """Prefill as decode_engines.decode runs it, then completion log-probs + backward (logprobs.sequence_logprobs
    after pad_safe_attention; as built, the same computation without switching the attention)."""
    from torch.profiler import ProfilerActivity, profile

    amp = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    p = ids.shape[1] - cmask.shape[1]
    prompt_att = att[:, :p]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        with torch.no_grad(), amp:
            positions = (prompt_att.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids[:, :p], attention_mask=prompt_att,
                           position_ids=positions).logits  # [N, P, V]
        with amp:
            if mode == "as built":
                lp = _logprobs_as_built(model, ids, att, cmask)
            else:
                lp = logprobs.sequence_logprobs(model, ids, att, cmask)[cmask.bool()]  # [n_tok]
        (-lp.float().mean()).backward()  # as the trainer: the forward under autocast, the backward outside
    real = prompt_att.bool()
    grads = [q.grad for q in model.parameters() if q.grad is not None]
    r = {"attn_implementation": model.config._attn_implementation,
         "prefill_last_finite": bool(torch.isfinite(logits[:, -1]).all()),
         "prefill_real_finite": bool(torch.isfinite(logits[real]).all()),
         "prefill_padding_finite": bool(torch.isfinite(logits[~real]).all()),
         "logprobs_finite": bool(torch.isfinite(lp).all()),
         "grads_finite": bool(grads) and all(bool(torch.isfinite(g).all()) for g in grads),
         "logprob_mean": float(lp.float().mean()), **_sdpa_backend(prof)}
    r["all_finite"] = all(r[k] for k in ("prefill_last_finite", "prefill_real_finite", "logprobs_finite",
                                          "grads_finite"))
    model.zero_grad(set_to_none=True)
    return r


def _logprobs_as_built(model, ids, att, cmask) -> torch.Tensor:
    """logprobs.sequence_logprobs's computation with the model's attention left as it is: [n_tok]."""
    decoder, head = model.base_model, model.get_output_embeddings()
    positions = (att.cumsum(-1) - 1).clamp(min=0)
    hidden = decoder(input_ids=ids, attention_mask=att, position_ids=positions, use_cache=False).last_hidden_state
    p, on = ids.shape[1] - cmask.shape[1], cmask.bool()
    return logprobs.token_logprobs(hidden[:, p - 1:-1][on], ids[:, p:][on], head)


def _sdpa_backend(prof) -> dict:
    """Which scaled-dot-product kernels ran: aten op names (CPU and CUDA) and attention kernel names (CUDA)."""
    cuda_type = torch.autograd.DeviceType.CUDA
    ops = {e.name for e in prof.events()
           if "scaled_dot_product" in e.name and e.name != "aten::scaled_dot_product_attention"}
    kernels = {e.name[:80] for e in prof.events() if e.device_type == cuda_type
               and any(s in e.name.lower() for s in ("flash", "fmha", "attention", "attn", "cudnn"))}
    return {"sdpa_ops": sorted(ops), "attention_kernels": sorted(kernels)[:6]}


# ----------------------------------------------------------------------------------------------
# 2. Decoding engines agree
# ----------------------------------------------------------------------------------------------
def check_engines(ctx: Context) -> dict:
    """Random weights make greedy decoding emit one token everywhere (their next-token distribution
    is nearly uniform and its argmax barely depends on the context), so greedy tokens compare only
    where a model has learnt something: the toy world's. On the sized model the compaction is
    checked on sampled rollouts instead: each token's sampler log-prob against a teacher-forced
    recomputation (logprobs.sequence_logprobs on the same model), with and without compaction."""
    model, tok = ctx.rollout(), ctx.tokenizer()
    n, g, new = ctx.size.engine_rows
    _, prompts = ctx.prompts(n, seed=3)
    stop, _ = ctx.stop_ids(new / 3, new)  # rows end at different steps: the cache compacts
    kw = dict(group_size=g, max_new_tokens=new, gen_batch_size=n, seed=5)
    greedy_compact = sampler.sample_rollouts(model, tok, prompts, temperature=0.0, stop_ids=stop, **kw)
    greedy_hf = sampler.sample_rollouts(model, tok, prompts, temperature=0.0, stop_ids=stop, engine="hf", **kw)
    sized = {"rows": n * g, "max_new_tokens": new, "rollout_dtype": str(next(model.parameters()).dtype),
             "greedy_distinct_tokens": len({t for row in _completions(greedy_compact) for t in row}),
             "greedy_hf_vs_compact": _compare(_completions(greedy_compact), _completions(greedy_hf))}
    for name, fraction in (("forced_compaction", 1.0), ("no_compaction", 0.0)):
        with compact_at(fraction), counting_compactions() as kept:
            roll = sampler.sample_rollouts(model, tok, prompts, temperature=1.0, stop_ids=stop, **kw)
        with torch.no_grad(), decode_engines.autocast_for(model):
            teacher = logprobs.sequence_logprobs(model, roll.input_ids, roll.attention_mask, roll.completion_mask)
        gap = (roll.sampler_logprobs - teacher).abs() * roll.completion_mask  # [N, C]
        sized[name] = {"compactions": None if kept is None else len(kept),
                       "mean_length": float(roll.lengths.float().mean()), "logprob_gap_max": float(gap.max()),
                       "logprob_gap_mean": float(gap.sum() / roll.completion_mask.sum())}
    a = sampler.sample_rollouts(model, tok, prompts, temperature=1.0, stop_ids=stop, **kw)
    b = sampler.sample_rollouts(model, tok, prompts, temperature=1.0, stop_ids=stop, **kw)
    sized["same_seed_bitwise_equal"] = torch.equal(a.input_ids, b.input_ids) and torch.equal(a.sampler_logprobs,
                                                                                           b.sampler_logprobs)
    out = {"sized_model": sized, "toy_model": _toy_greedy_engines(ctx)}
    fc, nc = sized["forced_compaction"], sized["no_compaction"]
    gaps = [fc["logprob_gap_max"], nc["logprob_gap_max"]]
    toy_same = out["toy_model"].get("compaction", {}).get("identical", True)
    # The same seed must give the same bits. In fp32 (CPU) compaction changes no greedy token and no
    # log-prob beyond rounding. In bf16 a batch of another size may take other GEMM kernels (a
    # greedy near-tie can flip: reported, not failed), but a compaction that mixed up cache rows
    # would score later tokens under another row's context: a mean gap well above the uncompacted one.
    if ctx.cuda:
        compaction_ok = fc["logprob_gap_mean"] <= 1.5 * nc["logprob_gap_mean"] + 1e-3
    else:
        compaction_ok = max(gaps) < 1e-3 and toy_same
    out["verdict"] = "ok" if sized["same_seed_bitwise_equal"] and compaction_ok else "fail"
    toy_note = out["toy_model"].get("summary") or out["toy_model"].get("verdict")
    out["summary"] = (f"sized: hf==compact greedy rows {sized['greedy_hf_vs_compact']['identical_rows']}/{n * g}, "
                      f"sampler vs teacher-forced log-prob gap max {gaps[0]:.2g} compacted, {gaps[1]:.2g} not; "
                      f"same seed equal {sized['same_seed_bitwise_equal']}; toy: {toy_note}")
    return out


def _toy_greedy_engines(ctx: Context) -> dict:
    """Greedy tokens of the toy world's trained model, whose rows stop at different steps: hf vs
    compact, forced compaction vs none, and the graph engine where the sampler has it."""
    root = ctx.args.toy_world
    if not _has_toy_world(root):
        return {"verdict": f"skipped: no toy world at {root}"}
    model, tok, _, test = toy.load_world(root)
    model = sampler.rollout_model(model.to(ctx.device), "auto")
    prompts = [data.format_prompt(p.problem, tok, "chatml") for p in test[:64]]
    kw = dict(group_size=1, temperature=0.0, max_new_tokens=16, gen_batch_size=len(prompts), seed=0)
    with compact_at(1.0), counting_compactions() as kept:
        forced = _completions(sampler.sample_rollouts(model, tok, prompts, **kw))
    with compact_at(0.0):
        never = _completions(sampler.sample_rollouts(model, tok, prompts, **kw))
    hf = _completions(sampler.sample_rollouts(model, tok, prompts, engine="hf", **kw))
    out = {"rows": len(prompts), "lengths": sorted({len(r) for r in never}),
           "compactions": None if kept is None else len(kept), "compaction": _compare(forced, never),
           "hf_vs_compact": _compare(never, hf)}
    out["summary"] = (f"identical rows: compaction {out['compaction']['identical_rows']}/{len(prompts)}, "
                      f"hf {out['hf_vs_compact']['identical_rows']}")
    if "graph" in getattr(sampler, "ENGINES", ()):  # the CUDA-graph engine, where the sampler has it
        try:
            out["graph_vs_compact"] = _compare(_completions(
                sampler.sample_rollouts(model, tok, prompts, engine="graph", **kw)), never)
            out["summary"] += f", graph {out['graph_vs_compact']['identical_rows']}"
        except Exception as e:  # noqa: BLE001 -- reported beside the other engines, whose results stand
            out["graph_error"] = f"{type(e).__name__}: {e}"
            out["summary"] += ", graph engine ERROR"
    return out


def _has_toy_world(root: Path) -> bool:
    return (root / "model" / "config.json").exists() and (root / "train.jsonl").exists()


@contextlib.contextmanager
def compact_at(fraction: float):
    """decode_engines.COMPACT_AT set for the block and restored (1.0: compact every step, 0.0: never)."""
    saved = decode_engines.COMPACT_AT
    decode_engines.COMPACT_AT = fraction
    try:
        yield
    finally:
        decode_engines.COMPACT_AT = saved


def _completions(roll) -> list[list[int]]:
    """Each row's completion tokens up to and including its stop token."""
    c = roll.completion_mask.shape[1]
    return [row[-c:][m.bool()].tolist() for row, m in zip(roll.input_ids, roll.completion_mask)]


def _compare(rows_a: list[list[int]], rows_b: list[list[int]]) -> dict:
    """Token lists row by row: how many are identical, and for the others the index of the first
    divergent token {row: index}."""
    firsts = {i: d for i, (a, b) in enumerate(zip(rows_a, rows_b)) if (d := _first_divergence(a, b)) is not None}
    return {"identical": not firsts, "identical_rows": len(rows_a) - len(firsts), "first_divergent_token": firsts}


def _first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (a length difference counts); None when equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


# ----------------------------------------------------------------------------------------------
# 3. Anatomy of one decode step
# ----------------------------------------------------------------------------------------------
def check_decode_anatomy(ctx: Context) -> dict:
    model, tok = ctx.rollout(), ctx.tokenizer()
    n1, n2 = ctx.size.anatomy_steps
    prompt_len = ctx.size.anatomy_kv - n2
    gen = torch.Generator().manual_seed(1)
    out = {"kv_length": ctx.size.anatomy_kv, "hbm_bytes_per_s": _hbm_bandwidth(ctx), "engines": {}}
    never = model.config.vocab_size + 1  # a stop id no row can sample: every row runs every step
    config = model.config
    kv_dim = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    for engine in ("compact", "graph"):
        rows_out = out["engines"][engine] = {}
        for rows in ctx.size.anatomy_rows:
            b = min(8, rows)  # prompts prefilled once, each cache row copied rows / b times, as in decode
            ids = torch.randint(len(toy.SPECIAL_TOKENS) + 1, model.config.vocab_size, (b, prompt_len),
                                generator=gen).to(ctx.device)
            att = torch.ones_like(ids)

            def run(steps):
                kw = dict(group_size=rows // b, temperature=1.0, top_p=1.0, max_new_tokens=steps, stop_ids=[never],
                          pad_id=tok.pad_token_id, seed=0)
                if engine == "graph":
                    graph_decode.decode(model, ids, att, check_every=32, **kw)
                else:
                    decode_engines.decode(model, ids, att, **kw)

            with compact_at(0.0):  # every row stays in the batch: the step is measured at `rows`
                run(n2)  # warm-up (and, for the graph engine, every shape captured once)
                seconds = [min(_timed(run, n, ctx.cuda) for _ in range(2)) for n in (n1, n2)]
                counts = [_profiled(run, n, ctx.cuda) for n in (n1, n2)]
            per = lambda k: None if counts[0][k] is None else (counts[1][k] - counts[0][k]) / (n2 - n1)  # noqa: E731
            step_s = (seconds[1] - seconds[0]) / (n2 - n1)
            kernel_us = per("gpu_us")
            # the least a step must read: every weight once, and every row's cached keys and values
            kv_bytes = rows * ctx.size.anatomy_kv * config.num_hidden_layers * 2 * kv_dim * 2
            floor_s = None if out["hbm_bytes_per_s"] is None else (weight_bytes + kv_bytes) / out["hbm_bytes_per_s"]
            rows_out[str(rows)] = {
                "ms_per_step": step_s * 1e3, "gpu_kernels_per_step": per("gpu_kernels"),
                "gpu_copies_per_step": per("gpu_copies"),
                "host_syncs_per_step": per("sync_calls"), "sync_warnings_per_step": per("sync_warnings"),
                "cpu_ops_per_step": per("cpu_ops"),
                "gpu_busy_fraction": None if kernel_us is None else kernel_us / 1e6 / max(step_s, 1e-12),
                "hbm_roofline_fraction": None if floor_s is None else floor_s / max(step_s, 1e-12)}
    parts = []
    for engine, rows_out in out["engines"].items():
        parts.append(f"{engine}: " + ", ".join(f"{r} rows {v['ms_per_step']:.1f} ms" for r, v in rows_out.items()))
        first = rows_out[str(ctx.size.anatomy_rows[0])]
        if first["gpu_kernels_per_step"] is not None:
            parts[-1] += (f" ({first['gpu_kernels_per_step']:.0f} kernels, {first['host_syncs_per_step']:.2f} syncs, "
                          f"busy {first['gpu_busy_fraction']:.0%}, roofline {first['hbm_roofline_fraction']:.0%})")
    top = str(ctx.size.anatomy_rows[0])
    out["graph_speedup"] = out["engines"]["compact"][top]["ms_per_step"] / max(
        out["engines"]["graph"][top]["ms_per_step"], 1e-9)
    out["summary"] = "; ".join(parts) + f"; graph {out['graph_speedup']:.1f}x compact at {top} rows"
    return out


def _hbm_bandwidth(ctx) -> float | None:
    """Bytes/s of the GPU's memory by its name (H200 4.8 TB/s, H100 SXM 3.35 TB/s), None elsewhere."""
    if not ctx.cuda:
        return None
    name = torch.cuda.get_device_name(ctx.device)
    return 4.8e12 if "H200" in name else 3.35e12 if "H100" in name else None


def _timed(fn, steps: int, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(steps)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _profiled(fn, steps: int, cuda: bool) -> dict:
    """Counts over one call: CPU ops, GPU activities (kernels, copies, sets) and their time, host
    synchronisations (profiler runtime calls, and torch's sync-debug warnings)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with warnings.catch_warnings(record=True) as caught, profile(activities=activities) as prof:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(steps)
            if cuda:
                torch.cuda.synchronize()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
    events = prof.events()
    cuda_type, cpu_type = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    gpu = [e for e in events if e.device_type == cuda_type]
    copies = sum(1 for e in gpu if e.name.startswith(("Memcpy", "Memset")))
    syncs = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
    return {"cpu_ops": sum(1 for e in events if e.device_type == cpu_type and e.name.startswith("aten::")),
            "gpu_kernels": len(gpu) - copies if cuda else None, "gpu_copies": copies if cuda else None,
            "gpu_us": sum(e.time_range.elapsed_us() for e in gpu) if cuda else None,
            "sync_calls": sum(1 for e in events if e.name in syncs) if cuda else None,
            "sync_warnings": sum(1 for w in caught if "synchroniz" in str(w.message)) if cuda else None}


# ----------------------------------------------------------------------------------------------
# 4. Rollouts as the real run makes them
# ----------------------------------------------------------------------------------------------
def check_rollouts(ctx: Context) -> dict:
    model, tok, policy = ctx.rollout(), ctx.tokenizer(), ctx.policy()
    n, g, max_new, target = ctx.size.rollout
    stop, stop_info = ctx.stop_ids(target, max_new)
    ctx.optimizer()  # the AdamW moments are resident while a real run generates
    out = {"stop_set": stop_info, "calls": {}}
    calls = [(n, max_new, "compact"), (*ctx.size.wide, "compact")]
    if ctx.cuda and "graph" in getattr(sampler, "ENGINES", ()):  # the CUDA-graph engine, where the sampler has it
        calls.append((n, max_new, "graph"))
    first_s = None
    for i, (prompts_n, new, engine) in enumerate(calls):
        name = f"{prompts_n}x{g}@{new} {engine}"
        if first_s is not None and ctx.time_left() < 2 * first_s:  # leave check 5 its generate call
            out["calls"][name] = {"verdict": "skipped: time budget"}
            continue
        _, prompts = ctx.prompts(prompts_n, seed=20 + i % 2)
        cfg = grpo.GRPOConfig.preset("qwen-math-1.5b", batch_size=prompts_n, gen_batch_size=prompts_n,
                                     group_size=g, max_new_tokens=new)
        _reset_peak(ctx.cuda)
        with counting_compactions() as kept:
            t0 = time.perf_counter()
            roll = sampler.sample_rollouts(model, tok, prompts, group_size=g, max_new_tokens=new,
                                           gen_batch_size=prompts_n, seed=i % 2, stop_ids=stop, engine=engine)
            _sync(ctx.cuda)
            sec = time.perf_counter() - t0
        first_s = first_s or sec
        ctx.generate_s = ctx.generate_s or sec
        lengths = roll.lengths.float()
        prompt_width = roll.input_ids.shape[1] - roll.completion_mask.shape[1]
        planned = plan.memory_plan(plan.ModelShape.from_config(policy.config), cfg, prompt_tokens=prompt_width,
                                   cuda=ctx.cuda)
        out["calls"][name] = {
            "rows": len(lengths), "seconds": sec, "tokens": float(lengths.sum()),
            "tokens_per_s": float(lengths.sum()) / sec, "mean_length": float(lengths.mean()),
            "max_length": float(lengths.max()), "truncated_fraction": float(roll.truncated.float().mean()),
            "compactions": len(kept) if kept is not None and engine == "compact" else None,
            "rows_kept_at_compactions": kept if engine == "compact" else None,
            "prompt_width": prompt_width, "peak_gib": _peak_gib(ctx.cuda),
            "plan_generation_gib": planned["totals"]["generation"] / 2 ** 30,
            "plan_generation_parts_gib": {k: v / 2 ** 30 for k, v in planned["phases"]["generation"].items()}}
    c = out["calls"][f"{n}x{g}@{max_new} compact"]
    out["summary"] = (f"{c['rows']} rows: {c['tokens_per_s']:.0f} tok/s, mean len {c['mean_length']:.0f} max "
                      f"{c['max_length']:.0f}, {c['compactions']} compactions, {c['seconds']:.1f} s, peak "
                      f"{_fmt(c['peak_gib'])} GiB (plan {c['plan_generation_gib']:.1f})")
    # the paper's step is B 64 prompts: at 32 prompts per call, two calls like this one
    paper_calls = 64 / n
    out["generation_s_per_paper_step"] = {"compact": c["seconds"] * paper_calls}
    graph = out["calls"].get(f"{n}x{g}@{max_new} graph", {})
    if "tokens_per_s" in graph:
        out["generation_s_per_paper_step"]["graph"] = graph["seconds"] * paper_calls
        out["summary"] += (f"; graph engine {graph['tokens_per_s']:.0f} tok/s, "
                           f"{graph['seconds'] * paper_calls:.0f} s per paper step (compact "
                           f"{c['seconds'] * paper_calls:.0f} s)")
    return out


@contextlib.contextmanager
def counting_compactions():
    """Yields a list that receives the rows kept at each compaction of the compact engine's cache
    (a wrapper around decode_engines._slab_cache for the block, as tests/test_decode_engines.py counts
    them); yields None when the engine has no such function."""
    make = getattr(decode_engines, "_slab_cache", None)
    if make is None:
        yield None
        return
    kept: list[int] = []

    def counting(*args, **kwargs):
        cache = make(*args, **kwargs)
        select = cache.batch_select_indices

        def counted(indices):
            kept.append(len(indices))
            return select(indices)
        cache.batch_select_indices = counted
        return cache

    setattr(decode_engines, "_slab_cache", counting)
    try:
        yield kept
    finally:
        setattr(decode_engines, "_slab_cache", make)


# ----------------------------------------------------------------------------------------------
# 5. Training as grpo_step does it
# ----------------------------------------------------------------------------------------------
def check_training(ctx: Context) -> dict:
    policy, rollout, tok = ctx.policy(), ctx.rollout(), ctx.tokenizer()
    n, g, max_new, target = ctx.size.rollout
    if ctx.generate_s is not None and ctx.time_left() < 1.5 * ctx.generate_s:  # its step would overrun
        raise Skipped(f"time budget ({ctx.time_left():.0f} s left; check 4's generate call alone took "
                      f"{ctx.generate_s:.0f} s)")
    stop, _ = ctx.stop_ids(target, max_new)
    cfg = grpo.GRPOConfig.preset("qwen-math-1.5b", batch_size=n, gen_batch_size=n, group_size=g,
                                 max_new_tokens=max_new, gradient_checkpointing=True, template=TEMPLATE)
    opt = ctx.optimizer()
    batching.set_activation_checkpointing(policy, True)
    problems, prompts = ctx.prompts(n, seed=30)
    prompt_lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    rng = random.Random(0)
    _reset_peak(ctx.cuda)
    row = grpo.grpo_step(policy, tok, problems, cfg, opt, step=0, stop_ids=stop, rollout=rollout,
                         reward_fn=lambda text, gold: float(rng.random() < 0.5))  # groups with variance
    _sync(ctx.cuda)
    peak = _peak_gib(ctx.cuda)
    params = sum(p.numel() for p in policy.parameters())
    tokens = sum(prompt_lengths) * g + row["response_len"] * n * g  # every real token: forward and backward
    # attention: 6 x layers x hidden x L^2 per sequence (forward QK^T and AV, causal halves; x3 with
    # backward), from the mean length L (a lower bound: the log row has no per-row lengths)
    layers, hidden = policy.config.num_hidden_layers, policy.config.hidden_size
    attn_flop = 6 * layers * hidden * (tokens / (n * g)) ** 2 * n * g
    model_tflops = 6 * params * tokens / row["train_s"] / 1e12
    planned = plan.memory_plan(plan.ModelShape.from_config(policy.config), cfg, prompt_tokens=max(prompt_lengths),
                               cuda=ctx.cuda)
    same = _rollout_matches_policy(rollout, policy)
    out = {"rows": n * g, "gen_s": row["gen_s"], "train_s": row["train_s"], "tokens": tokens,
           "train_tokens_per_s": tokens / row["train_s"], "response_len": row["response_len"],
           "truncated": row["truncated"], "model_tflops": model_tflops,
           "model_plus_attention_tflops": (6 * params * tokens + attn_flop) / row["train_s"] / 1e12,
           "flops_counted": "6 x params x tokens (model); + 6 x layers x hidden x mean_len^2 per sequence (attention); "
                            "the checkpointing recompute is not counted",
           "mfu": model_tflops / PEAK_BF16_TFLOPS if ctx.cuda else None,
           "peak_gib_step": peak,  # over the whole step: generation, then training
           "plan_training_gib": planned["totals"]["training"] / 2 ** 30,
           "plan_generation_gib": planned["totals"]["generation"] / 2 ** 30,
           "grad_norm": row["grad_norm"], "grad_norm_finite": math.isfinite(row["grad_norm"]),
           "sampler_gap_max": row.get("sampler_gap_max"), "sampler_gap_mean": row.get("sampler_gap_mean"),
           "importance_weight_on": next(rollout.parameters()).dtype != next(policy.parameters()).dtype,
           "rollout_refreshed": same, "packed": batching.uses_packing(policy, cfg),
           "log_row": {k: v for k, v in row.items() if k != "problem_ids"}}
    out["verdict"] = "ok" if out["grad_norm_finite"] and same else "fail"
    out["summary"] = (f"{out['train_tokens_per_s']:.0f} train tok/s, {model_tflops:.1f} TFLOP/s"
                      + (f" (MFU {out['mfu']:.1%})" if ctx.cuda else "")
                      + f", step peak {_fmt(peak)} GiB (plan: training {out['plan_training_gib']:.1f}, "
                      f"generation {out['plan_generation_gib']:.1f}), gap max "
                      f"{_fmt(out['sampler_gap_max'])}, refreshed {same}")
    return out


def _rollout_matches_policy(rollout, policy) -> bool:
    """The rollout copy holds the policy's weights (cast to its dtype) after the update."""
    if rollout is policy:
        return True
    with torch.no_grad():
        return all(torch.equal(r, parallel.full(p).to(r.dtype))
                   for r, p in zip(rollout.parameters(), policy.parameters(), strict=True))


# ----------------------------------------------------------------------------------------------
# 6. The toy world: train, resume, evaluate
# ----------------------------------------------------------------------------------------------
def check_toy_resume(ctx: Context) -> dict:
    import evaluate

    root = ctx.args.toy_world
    if not _has_toy_world(root):
        raise Skipped(f"no toy world at {root} (build it on a CPU: python toy.py --out {root})")
    batch, g, n_eval = ctx.size.toy
    _, tok, train, test = toy.load_world(root)
    cfg = grpo.GRPOConfig.toy(batch_size=batch, group_size=g, gen_batch_size=batch, eval_every=2, save_every=2)
    schedule = random_schedule([p.id for p in train], batch, 4, seed=0)
    eval_fn = evaluate.make_eval_fn(tok, [("toy_test", test[:n_eval])], template=cfg.template, n=1,
                                    temperature=0.0, max_new_tokens=cfg.max_new_tokens, batch_size=n_eval, seed=0,
                                    metric="greedy pass@1")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for name, legs in (("straight", [None]), ("resumed", [3, None])):
            for max_steps in legs:  # each leg a fresh process's policy: loaded again, resumed from disk
                policy, _ = runtime.load_model(root / "model", device=ctx.device, dtype=torch.float32)
                grpo.train(policy, tok, train, schedule, dataclasses.replace(cfg, max_steps=max_steps),
                           out_dir=Path(tmp) / name, eval_fn=eval_fn, resume=True)
            runs[name] = {"weights": {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()},
                          "train": runtime.read_jsonl(Path(tmp) / name / "train_log.jsonl"),
                          "eval": runtime.read_jsonl(Path(tmp) / name / "eval_log.jsonl")}
    a, b = runs["straight"], runs["resumed"]
    weight_diff = max(float((a["weights"][k].float() - b["weights"][k].float()).abs().max()) for k in a["weights"])
    timing = {"gen_s", "train_s", "tokens_per_s", "gen_tokens_per_s"}
    row_diff = _max_row_diff(a["train"], b["train"], skip=timing)
    eval_a, eval_b = ({r["step"]: r for r in run["eval"]} for run in (a, b))
    common = [step for step in eval_a if step in eval_b]  # the resumed run also evaluates at its stop (3)
    eval_diff = _max_row_diff([eval_a[s] for s in common], [eval_b[s] for s in common], skip=set())
    ids_equal = [r["problem_ids"] for r in a["train"]] == [r["problem_ids"] for r in b["train"]]
    exact = weight_diff == 0 and row_diff == 0 and eval_diff == 0
    out = {"steps": len(a["train"]), "resumed_steps": len(b["train"]), "weights_max_abs_diff": weight_diff,
           "train_log_max_abs_diff": row_diff, "eval_log_max_abs_diff": eval_diff, "problem_ids_equal": ids_equal,
           "bitwise_equal": exact, "eval_steps": [r["step"] for r in b["eval"]],
           "final_eval": a["eval"][-1] if a["eval"] else None,
           "rows_straight": [{k: r[k] for k in ("step", "reward", "grad_norm", "response_len")} for r in a["train"]],
           "rows_resumed": [{k: r[k] for k in ("step", "reward", "grad_norm", "response_len")} for r in b["train"]]}
    # on the CPU the run is deterministic: exact equality; on CUDA bf16 kernels need not be
    out["verdict"] = "ok" if ids_equal and len(b["train"]) == 4 and (exact or ctx.cuda) else "fail"
    out["summary"] = (f"resume vs straight: weights max |diff| {weight_diff:.2e}, log rows {row_diff:.2e}, "
                      f"eval {eval_diff:.2e}")
    return out


def _max_row_diff(rows_a: list[dict], rows_b: list[dict], skip: set) -> float:
    """Largest |a - b| over the numeric fields of paired log rows (inf when rows or other fields differ)."""
    if len(rows_a) != len(rows_b):
        return math.inf
    worst = 0.0
    for ra, rb in zip(rows_a, rows_b):
        for k in set(ra) | set(rb):
            if k in skip:
                continue
            va, vb = ra.get(k), rb.get(k)
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool):
                worst = max(worst, abs(float(va) - float(vb)))
            elif va != vb:
                return math.inf
    return worst


# ----------------------------------------------------------------------------------------------
# 7. SAE training and encoding
# ----------------------------------------------------------------------------------------------
def check_sae(ctx: Context) -> dict:
    import sae

    model, tok = ctx.rollout(), ctx.tokenizer()  # bf16 on CUDA, as saerl's SAE stage loads the model
    tokens, d_sae, k, batch_tokens, n_encode = ctx.size.sae
    problems = toy.make_problems(1000, seed=40, corrupt_frac=0.0)
    texts = ["\n".join(p.problem for p in problems[i:i + 10]) for i in range(0, len(problems), 10)]  # ~250 tokens
    layer = model.config.num_hidden_layers // 2
    _sync(ctx.cuda)
    t0 = time.perf_counter()
    trained = sae.train_sae(model, tok, texts, layer, d_sae=d_sae, k=k, tokens=tokens, batch_tokens=batch_tokens,
                            init_tokens=min(8192, tokens), progress=False, seed=0)
    _sync(ctx.cuda)
    train_s = time.perf_counter() - t0
    enc_texts = [data.format_prompt(p.problem, tok, TEMPLATE) for p in problems[:n_encode]]
    enc_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in enc_texts)
    t0 = time.perf_counter()
    feats = sae.encode_problems(model, tok, enc_texts, trained, layer, progress=False)
    _sync(ctx.cuda)
    enc_s = time.perf_counter() - t0
    finite = bool(torch.isfinite(feats.values).all())
    out = {"layer": layer, "d_sae": d_sae, "k": k, "train_tokens": tokens, "train_s": train_s,
           "train_tokens_per_s": tokens / train_s, "projected_20m_tokens_s": 20e6 / (tokens / train_s),
           "encode_texts": n_encode, "encode_tokens": enc_tokens, "encode_s": enc_s,
           "encode_tokens_per_s": enc_tokens / enc_s, "features_finite": finite,
           "model_dtype": str(next(model.parameters()).dtype)}
    out["verdict"] = "ok" if finite else "fail"
    out["summary"] = (f"train {out['train_tokens_per_s']:.0f} tok/s (20M tokens: "
                      f"{out['projected_20m_tokens_s'] / 60:.1f} min), encode {out['encode_tokens_per_s']:.0f} tok/s")
    return out


# ----------------------------------------------------------------------------------------------
# 8. FSDP2 at world size 1
# ----------------------------------------------------------------------------------------------
def check_fsdp2(ctx: Context) -> dict:
    import socket

    import torch.distributed as dist

    import checkpoint

    if dist.is_initialized():
        raise Skipped("a process group is already initialised in this process")
    backend = "nccl" if ctx.cuda else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    policy, tok = ctx.policy(), ctx.tokenizer()
    ctx.drop_optimizer()  # check 5's AdamW state belongs to the unsharded parameters
    # the unsharded copy that generates, made before sharding (as grpo.train does under fsdp2)
    rollout = sampler.rollout_model(policy, "bfloat16" if ctx.cuda else "float32")
    n, g, new, write = ctx.size.fsdp
    cfg = grpo.GRPOConfig.preset("qwen-math-1.5b", batch_size=n, gen_batch_size=n, group_size=g, max_new_tokens=new,
                                 template=TEMPLATE, parallel="fsdp2")
    if ctx.cuda:
        torch.cuda.set_device(0)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=120))
    try:
        root = parallel.fsdp2(policy, bf16=ctx.cuda)
        opt = torch.optim.AdamW(root.parameters(), lr=cfg.lr, fused=True if ctx.cuda else None)
        problems, _ = ctx.prompts(n, seed=50)
        rng = random.Random(1)
        row = grpo.grpo_step(root, tok, problems, cfg, opt, step=0, rollout=rollout,
                             reward_fn=lambda text, gold: float(rng.random() < 0.5))
        _sync(ctx.cuda)
        t0 = time.perf_counter()
        full = parallel.full_model_state(root)  # the gathers a checkpoint runs: weights, then AdamW moments
        gather_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        moments = parallel.full_optimizer_state(root, opt)["state"]
        gather_opt_s = time.perf_counter() - t0
        refreshed = rollout.state_dict()  # grpo_step refreshed the copy from the shards
        diff = max(float((full[k].to(refreshed[k].dtype).to(refreshed[k].device) - refreshed[k]).abs().max())
                   for k in full)
        out = {"backend": backend, "world_size": dist.get_world_size(), "sharded": parallel.is_sharded(root),
               "grad_norm": row["grad_norm"], "train_s": row["train_s"], "gen_s": row["gen_s"],
               "full_state_tensors": len(full), "gather_s": gather_s, "optimizer_states": len(moments),
               "gather_optimizer_s": gather_opt_s, "rollout_vs_full_state_max_abs_diff": diff,
               "checkpoint_files": None}
        if write:  # the whole save (1.5b: ~18 GB to disk, longer than the gathers it adds nothing to)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                saved = checkpoint.save_checkpoint(Path(tmp), 1, root, opt, cfg, "gpu_check")
                out["checkpoint_save_s"] = time.perf_counter() - t0
                out["checkpoint_files"] = sorted(p.name for p in saved.iterdir())
    finally:
        dist.destroy_process_group()
        ctx.release_policy()  # sharded in place: nothing after this may use it as a plain model
    saved_ok = not write or "model.safetensors" in (out["checkpoint_files"] or [])
    out["verdict"] = "ok" if math.isfinite(out["grad_norm"]) and diff == 0 and saved_ok else "fail"
    out["summary"] = (f"{backend} world 1: grad norm {out['grad_norm']:.3g}, gather {gather_s:.2f} s, "
                      f"rollout == full state: {diff == 0}")
    return out


CHECKS = [check_left_pad, check_engines, check_decode_anatomy, check_rollouts, check_training, check_toy_resume,
          check_sae, check_fsdp2]


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _reset_peak(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(cuda: bool) -> float | None:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _jsonable(x):
    """JSON-safe: tensors and numpy scalars as numbers, non-finite floats as strings."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


if __name__ == "__main__":
    main()
