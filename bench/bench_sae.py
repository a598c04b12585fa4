"""Encode throughput and peak memory of sae.encode_problems.

    python bench/bench_sae.py [--smollm DIR] [--n 1000] [--out bench/results/sae.json]

Rows: a toy-sized random Qwen2 (toy.py's model when it exists, else one built here) with a
character tokenizer, and -- when --smollm points at a SmolLM2-135M HF folder (made by
../shared/tools/smollm2_to_hf.py) -- SmolLM2-135M on the first N MATH training problems rendered
with the qwen-math template, layer = middle, with a random TopK SAE of d_sae = 4096 (the timing
does not depend on the weights' values). Throughput counts real (unpadded) tokens per second of
the whole call: tokenisation, truncated forward to the layer, SAE encode, pooling, top-m.
Peak memory is the process's peak RSS growth during the call (CPU) or torch's peak allocation (CUDA).
"""
import argparse
import json
import os
import resource
import string
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import runtime  # noqa: E402
import sae as S  # noqa: E402
import sae_formats  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def random_topk_sae(d_in: int, d_sae: int, k: int, seed: int = 0) -> sae_formats.SAE:
    g = torch.Generator().manual_seed(seed)
    sae = sae_formats.SAE(d_in, d_sae, activation="topk", k=k)
    with torch.no_grad():
        w = torch.randn(d_sae, d_in, generator=g)
        sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


def toy_model_and_tokenizer():
    try:
        import toy
        tokenizer = toy.char_tokenizer()
        return toy.tiny_model(tokenizer).eval(), tokenizer, "toy.tiny_model (random init)"
    except ImportError:
        pass
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    chars = list(string.ascii_letters + string.digits + string.punctuation + " \n")
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(specials + chars)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=["<|im_start|>"])
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return Qwen2ForCausalLM(cfg).eval(), tokenizer, "random Qwen2 (2 layers, d=128)"


def run(name, model, tokenizer, texts, sae, layer, *, batch_size, max_length, repeats=1):
    lengths = [min(len(ids), max_length) for ids in tokenizer(texts)["input_ids"]]
    S.encode_problems(model, tokenizer, texts[: batch_size], sae, layer, batch_size=batch_size,
                      max_length=max_length, progress=False)  # warm-up
    rss0 = peak_rss_mib()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        S.encode_problems(model, tokenizer, texts, sae, layer, batch_size=batch_size, max_length=max_length,
                          progress=False)
        best = min(best, time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available()
            else peak_rss_mib() - rss0)
    return {"name": name, "problems": len(texts), "tokens": sum(lengths), "d_in": sae.d_in,
            "d_sae": sae.d_sae, "layer": layer, "batch_size": batch_size, "seconds": round(best, 3),
            "tokens_per_s": round(sum(lengths) / best, 1), "problems_per_s": round(len(texts) / best, 2),
            "peak_mem_growth_mib": round(peak, 1), "threads": torch.get_num_threads()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smollm", default=None, help="SmolLM2-135M HF folder (optional)")
    p.add_argument("--n", type=int, default=1000, help="MATH problems for the SmolLM2 row")
    p.add_argument("--math", default="/work/shared/data/train/math_train.jsonl", help="MATH jsonl")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: on a shared 2-core machine more threads oversubscribe)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "sae.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    model, tokenizer, desc = toy_model_and_tokenizer()
    try:
        import toy
        texts = [data.format_prompt(p.problem, tokenizer, "chatml") for p in toy.make_problems(1000, seed=0)]
    except ImportError:
        texts = [f"What is {i} + {3 * i % 97}? Then reverse {i * 7919 % 100000}." for i in range(1000)]
    sae = random_topk_sae(model.config.hidden_size, 1024, 32)
    rows.append(run(f"toy: {desc}, 1000 texts", model, tokenizer, texts, sae, 1,
                    batch_size=args.batch_size, max_length=512, repeats=2))
    if args.smollm:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(args.smollm)
        model = AutoModelForCausalLM.from_pretrained(args.smollm, dtype=torch.float32).eval()
        problems = data.load_problems(args.math, limit=args.n)
        texts = [data.format_prompt(pr.problem, tokenizer, "qwen-math") for pr in problems]
        layer = model.config.num_hidden_layers // 2
        sae = random_topk_sae(model.config.hidden_size, 4096, 32)
        rows.append(run(f"SmolLM2-135M, {len(texts)} MATH problems", model, tokenizer, texts, sae, layer,
                        batch_size=args.batch_size, max_length=512))
    print(f"{'benchmark':48s} {'tokens':>8s} {'seconds':>8s} {'tok/s':>9s} {'prob/s':>7s} {'peak MiB':>9s}")
    for r in rows:
        print(f"{r['name']:48s} {r['tokens']:8d} {r['seconds']:8.2f} {r['tokens_per_s']:9.1f} "
              f"{r['problems_per_s']:7.2f} {r['peak_mem_growth_mib']:9.1f}")
    result = {"machine": f"{os.cpu_count()}-core CPU" if not torch.cuda.is_available()
              else torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    runtime.atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
