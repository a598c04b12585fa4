"""bench/gpu_check.py -- the CUDA path in one short run: bf16 autocast, generation, GRPO steps, SAE encoding.

    python bench/gpu_check.py [--size 1.5b|small] [--steps 3] [--toy runs/toy_world] [--out bench/results/gpu_check.json]

Written for a session that is lent a GPU for a few minutes: one command, a table, a JSON file.
`--size 1.5b` (the default on CUDA) builds a randomly initialised Qwen2 with Qwen2.5-Math-1.5B's
shapes directly on the device (no download; a word-level tokenizer of the same 151,936 entries);
`--size small` (the default on CPU) runs the same checks on a small config, so the script itself is
exercised on machines without a GPU. Nothing here needs the network.

1. toy world, toy preset: completion log-probs under bf16 autocast against float32 (max |diff|),
   then `--steps` GRPO steps (the first one is a warm-up and is not timed).
2. the sized policy, trained as the pipeline trains it (float32 weights, bf16 autocast, gradient
   checkpointing): `--steps` GRPO steps of B x G rollouts. Random weights rarely sample a stop
   token, so every completion runs to --max-new-tokens: the worst case for a step. The reward
   is a stand-in with variance (parity of the completion's length), so backward does real work.
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
from data import atomic_write_text, format_prompt  # noqa: E402

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


def check_policy(shapes: dict, device: torch.device, steps: int, B: int, G: int, max_new: int) -> tuple[dict, object, object]:
    tok = wide_tokenizer(shapes["vocab_size"])
    t0 = time.perf_counter()
    policy = sized_policy(shapes, tok, device)
    build_s = time.perf_counter() - t0
    problems = toy.make_problems(B * (steps + 1), seed=1)
    cfg = grpo.GRPOConfig(batch_size=B, group_size=G, max_new_tokens=max_new, gen_batch_size=B,
                          micro_batch_size=8, gradient_checkpointing=True, lr=1e-6, template="chatml",
                          logprob_chunk=256)
    grpo.set_activation_checkpointing(policy, True)
    out = {"params_m": sum(p.numel() for p in policy.parameters()) / 1e6, "build_s": build_s,
           "batch_size": B, "group_size": G, "max_new_tokens": max_new}
    out.update(timed_steps(policy, tok, problems, cfg, steps, lambda text, gold: float(len(text) % 2), device))
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
    ap.add_argument("--steps", type=int, default=3, help="timed GRPO steps per model (after one warm-up step)")
    ap.add_argument("--batch-size", type=int, default=None, help="B for the sized policy (1.5b: 8; small: 4)")
    ap.add_argument("--group-size", type=int, default=None, help="G for the sized policy (1.5b: 8; small: 4)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="completion budget (1.5b: 256; small: 32)")
    ap.add_argument("--toy", type=Path, default=ROOT / "runs" / "toy_world",
                    help="toy world folder (built there, about a minute on CPU, when missing)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    args = ap.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    big = args.size == "1.5b"
    shapes = QWEN_MATH_1_5B if big else SMALL
    B = args.batch_size or (8 if big else 4)
    G = args.group_size or (8 if big else 4)
    max_new = args.max_new_tokens or (256 if big else 32)

    result = {"device": torch.cuda.get_device_name() if cuda else f"{os.cpu_count()}-core CPU",
              "torch": torch.__version__, "size": args.size}
    t0 = time.perf_counter()
    result["toy"] = check_toy(device, args.steps, args.toy)
    result["policy"], policy, tok = check_policy(shapes, device, args.steps, B, G, max_new)
    result["sae"] = check_sae(policy, tok, device, 16384 if big else 2048, 64 if big else 32)
    result["seconds"] = time.perf_counter() - t0

    print(f"device: {result['device']}, torch {result['torch']}, size {args.size}, {result['seconds']:.0f} s")
    print(f"toy: bf16 autocast {result['toy']['bf16_autocast']}, log-prob max |bf16 - fp32| "
          f"{result['toy']['logprob_max_abs_diff_bf16_vs_fp32']:.2e}")
    print(f"{'model':10s} {'gen s':>7s} {'train s':>8s} {'tokens':>8s} {'tok/s':>8s} {'peak MiB':>9s} {'reward':>7s}")
    for name in ("toy", "policy"):
        r = result[name]
        print(f"{name:10s} {r['gen_s']:7.2f} {r['train_s']:8.2f} {r['completion_tokens']:8.0f} "
              f"{r['tokens_per_s']:8.0f} {r['peak_mib']:9.0f} {r['reward']:7.3f}")
    s = result["sae"]
    print(f"SAE encode (d_sae {s['d_sae']}, layer {s['layer']}): {s['tokens_per_s']:.0f} tokens/s, "
          f"{s['problems']} prompts in {s['seconds']:.2f} s, peak {s['peak_mem_growth_mib']:.0f} MiB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
