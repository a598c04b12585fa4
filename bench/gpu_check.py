"""bench/gpu_check.py -- the CUDA path in one prepared run: bf16, generation per engine, training, SAE encoding.

    python bench/gpu_check.py [--size 1.5b|small] [--gpu-memory 80] [--out bench/results/gpu_check.json]

Written for a session that is lent a GPU for a few minutes: one command (about 5 minutes on an
H100/H200 at the defaults), a table, a JSON file. `--size 1.5b` (the default on CUDA) builds a
randomly initialised Qwen2 with Qwen2.5-Math-1.5B's shapes directly on the device (no download; a
word-level tokenizer of the same 151,936 entries) and caps the process at --gpu-memory GiB
(`set_per_process_memory_fraction`), so an H200 tests what an 80 GB card allows; `--size small`
(the default on CPU) runs the same checks on a small config, so the script itself is exercised on
machines without a GPU. Nothing here needs the network.

1. toy world, toy preset: completion log-probs under bf16 autocast against float32 (max |diff|),
   then `--steps` GRPO steps (the first one is a warm-up and is not timed).
2. the real regime on the sized policy: the preset's 32 prompts x G 8 per generate call, every row
   forced to --max-new-tokens 2048 (random weights never sample the stop token), once per rollout
   engine (tokens/s, peak memory with the AdamW moments resident), then one training pass over
   those rollouts as grpo_step micro-batches them (tokens/s, TFLOP/s, peak), beside --plan's peaks.
3. SAE encoding: a random TopK SAE (d_sae 16384, k 64; small: 2048, 32) on the sized model's middle
   layer, 512 toy prompts: tokens/s and peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import grpo  # noqa: E402
import toy  # noqa: E402
from data import format_prompt  # noqa: E402
from runtime import atomic_write_text  # noqa: E402

# Qwen2.5-Math-1.5B's config.json shapes (the weights here are random)
QWEN_MATH_1_5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096,
                      rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True)
SMALL = dict(vocab_size=8192, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
             rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True)


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
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**shapes, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with device:  # initialise on the device: no 6 GB round trip through host memory
        model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_steps(policy, tok, problems, cfg, steps: int, reward_fn, device) -> dict:
    """`steps` + 1 GRPO steps; the first is a warm-up. Mean generation / train seconds of the rest."""
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    rows = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(steps + 1):
        batch = problems[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        row = grpo.grpo_step(policy, tok, batch, cfg, opt, step=step, reward_fn=reward_fn)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rows.append(row)  # a NaN/inf loss or gradient norm already stopped grpo_step (NonFiniteError)
    timed = rows[1:] or rows
    mean = lambda k: sum(r[k] for r in timed) / len(timed)  # noqa: E731
    tokens = mean("response_len") * cfg.batch_size * cfg.group_size
    return {"steps": len(timed), "gen_s": mean("gen_s"), "train_s": mean("train_s"),
            "completion_tokens": tokens, "tokens_per_s": tokens / (mean("gen_s") + mean("train_s")),
            "reward": mean("reward"), "grad_norm": mean("grad_norm"), "truncated": mean("truncated"),
            "peak_mib": _peak_mib(device)}


def check_toy(device: torch.device, steps: int, world_dir: Path) -> dict:
    from verifier import math_reward

    world = toy.build_world(world_dir, verbose=False)  # reused when it is already there
    model, tok, train, _ = toy.load_world(world.root)
    model.to(device)
    cfg = grpo.GRPOConfig.toy()
    prompts = [format_prompt(p.problem, tok, cfg.template) for p in train[:16]]
    roll = grpo.sample_rollouts(model, tok, prompts, group_size=4, max_new_tokens=16, gen_batch_size=16, seed=0)
    with torch.no_grad():
        fp32 = grpo.sequence_logprobs(model, roll.input_ids, roll.attention_mask, roll.completion_mask)
        with grpo._autocast(device, cfg):
            bf16 = grpo.sequence_logprobs(model, roll.input_ids, roll.attention_mask, roll.completion_mask)
    out = {"bf16_autocast": device.type == "cuda",
           "logprob_max_abs_diff_bf16_vs_fp32": float((fp32 - bf16).abs().max())}
    out.update(timed_steps(model, tok, train, cfg, steps, math_reward, device))
    return out


def _phase_peak(device, fn):
    """Run fn(); return (its result, seconds, peak MiB allocated during it)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0, _peak_mib(device)


def check_regime(shapes: dict, device: torch.device, rows_prompts: int, G: int, max_new: int,
                 engines: list[str]) -> tuple[dict, object, object]:
    """The real regime on the sized policy: one generate call of `rows_prompts` prompts x G rows per
    engine (random weights never stop early: every row runs to max_new, the worst case), then one
    training pass over the compact engine's rollouts. Peak memory per phase, next to --plan's."""
    import plan
    import sampler

    tok = wide_tokenizer(shapes["vocab_size"])
    t0 = time.perf_counter()
    policy = sized_policy(shapes, tok, device)
    build_s = time.perf_counter() - t0
    cfg = grpo.GRPOConfig(batch_size=rows_prompts, group_size=G, max_new_tokens=max_new,
                          gen_batch_size=rows_prompts, lr=1e-6, template="chatml")
    rollout = sampler.rollout_model(policy, cfg.rollout_dtype)
    prompts = [format_prompt(p.problem, tok, cfg.template) for p in toy.make_problems(rows_prompts, seed=1)]
    out = {"params_m": sum(p.numel() for p in policy.parameters()) / 1e6, "build_s": build_s,
           "prompts": rows_prompts, "group_size": G, "max_new_tokens": max_new, "engines": {}}
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda" or None)
    for q in policy.parameters():  # a zero-gradient step allocates the AdamW moments, as after step 1
        q.grad = torch.zeros_like(q)
    opt.step()
    opt.zero_grad(set_to_none=True)
    roll = None
    for engine in engines:
        r, sec, peak = _phase_peak(device, lambda: sampler.sample_rollouts(
            rollout, tok, prompts, group_size=G, max_new_tokens=max_new, gen_batch_size=rows_prompts,
            seed=0, engine=engine))
        tokens = float(r.lengths.sum())
        out["engines"][engine] = {"seconds": sec, "tokens": tokens, "tokens_per_s": tokens / sec, "peak_mib": peak}
        if engine == "compact" or roll is None:
            roll = r
    # training: the step's loss over these rollouts, micro-batched as grpo_step does
    grpo.set_activation_checkpointing(policy, cfg.checkpointing)
    adv = torch.randn(len(roll.texts), device=device)
    packed = grpo.uses_packing(policy, cfg)

    def train_pass():
        cm = roll.completion_mask.float()
        norm = grpo.loss_normalizer(cm, cfg.loss_type, cfg.max_new_tokens)
        lengths = roll.attention_mask.sum(1).tolist()
        for m in grpo.micro_batches(lengths, max_rows=cfg.micro_batch_size,
                                    max_tokens=cfg.max_tokens_per_micro_batch, packed=packed):
            m = torch.tensor(m, device=device)
            lp = grpo._logprobs(policy, roll.input_ids[m], roll.attention_mask[m], cm[m], cfg, device, True, packed)
            loss, _ = grpo.policy_loss(lp, lp.detach(), adv[m], cm[m], normalizer=norm)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    policy.train()
    _, sec, peak = _phase_peak(device, train_pass)
    tokens = float(roll.attention_mask.sum())
    flops = (8 if cfg.checkpointing else 6) * out["params_m"] * 1e6 * tokens  # fwd 2 + bwd 4 (+ recompute 2)
    out["training"] = {"seconds": sec, "tokens": tokens, "tokens_per_s": tokens / sec, "peak_mib": peak,
                       "tflops": flops / sec / 1e12, "packed": packed, "checkpointing": cfg.checkpointing}
    shape = plan.ModelShape.from_config(policy.config)
    prompt_tokens = int(roll.input_ids.shape[1] - roll.completion_mask.shape[1])
    p = plan.memory_plan(shape, cfg, prompt_tokens=prompt_tokens, cuda=device.type == "cuda")
    out["plan_gib"] = {k: v / 2 ** 30 for k, v in p["totals"].items()}
    return out, policy, tok


def check_sae(policy, tok, device: torch.device, d_sae: int, k: int) -> dict:
    from bench_sae import random_topk_sae, run

    grpo.set_activation_checkpointing(policy, False)
    texts = [format_prompt(p.problem, tok, "chatml") for p in toy.make_problems(512, seed=2)]
    sae = random_topk_sae(policy.config.hidden_size, d_sae, k)
    layer = policy.config.num_hidden_layers // 2
    with grpo._autocast(device, grpo.GRPOConfig()):
        return run("sized policy", policy.eval(), tok, texts, sae, layer, batch_size=64, max_length=512)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    ap.add_argument("--size", choices=("1.5b", "small"), default="1.5b" if cuda else "small")
    ap.add_argument("--steps", type=int, default=3, help="timed toy GRPO steps (after one warm-up step)")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per generate call (1.5b: 32, the "
                    "preset's gen_batch_size; small: 4)")
    ap.add_argument("--group-size", type=int, default=None, help="G (1.5b: 8; small: 4)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="forced completion length (1.5b: 2048; small: 32)")
    ap.add_argument("--engines", default="compact,hf", help="rollout engines to time, comma-separated")
    ap.add_argument("--gpu-memory", type=float, default=80.0, help="GiB the run may use (set_per_process_memory_"
                    "fraction on a larger card, so an 80 GB card's limit is what is tested)")
    ap.add_argument("--toy", type=Path, default=ROOT / "runs" / "toy_world",
                    help="toy world folder (built there, about a minute on CPU, when missing)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    args = ap.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.gpu_memory * 2 ** 30 / total))
    big = args.size == "1.5b"
    shapes = QWEN_MATH_1_5B if big else SMALL
    prompts = args.prompts or (32 if big else 4)
    G = args.group_size or (8 if big else 4)
    max_new = args.max_new_tokens or (2048 if big else 32)

    result = {"device": torch.cuda.get_device_name() if cuda else f"{os.cpu_count()}-core CPU",
              "torch": torch.__version__, "size": args.size, "gpu_memory_gib": args.gpu_memory if cuda else None}
    t0 = time.perf_counter()
    result["toy"] = check_toy(device, args.steps, args.toy)
    result["regime"], policy, tok = check_regime(shapes, device, prompts, G, max_new, args.engines.split(","))
    result["sae"] = check_sae(policy, tok, device, 16384 if big else 2048, 64 if big else 32)
    result["seconds"] = time.perf_counter() - t0

    print(f"device: {result['device']}, torch {result['torch']}, size {args.size}, {result['seconds']:.0f} s")
    t = result["toy"]
    print(f"toy: bf16 autocast {t['bf16_autocast']}, log-prob max |bf16 - fp32| "
          f"{t['logprob_max_abs_diff_bf16_vs_fp32']:.2e}; step gen {t['gen_s']:.2f} s, train {t['train_s']:.2f} s")
    r = result["regime"]
    print(f"policy {r['params_m']:.0f}M, {r['prompts']} prompts x G {r['group_size']} x {r['max_new_tokens']} tokens; "
          f"plan (GiB): " + ", ".join(f"{k} {v:.1f}" for k, v in r["plan_gib"].items()))
    print(f"{'phase':18s} {'seconds':>8s} {'tokens':>9s} {'tok/s':>9s} {'peak MiB':>9s}")
    for name, e in r["engines"].items():
        print(f"{'generate ' + name:18s} {e['seconds']:8.1f} {e['tokens']:9.0f} {e['tokens_per_s']:9.0f} {e['peak_mib']:9.0f}")
    tr = r["training"]
    print(f"{'train (one pass)':18s} {tr['seconds']:8.1f} {tr['tokens']:9.0f} {tr['tokens_per_s']:9.0f} "
          f"{tr['peak_mib']:9.0f}   {tr['tflops']:.0f} TFLOP/s (MFU on H100/H200 bf16 dense 989: "
          f"{tr['tflops'] / 989:.1%})")
    s = result["sae"]
    print(f"SAE encode (d_sae {s['d_sae']}, layer {s['layer']}): {s['tokens_per_s']:.0f} tokens/s, "
          f"{s['problems']} prompts in {s['seconds']:.2f} s, peak {s['peak_mem_growth_mib']:.0f} MiB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
