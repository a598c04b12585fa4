"""The SAERL pipeline on a real model: SmolLM2-135M-Instruct + MATH train (issue 7's real-model check).

    python bench/real_model_pipeline.py                     # defaults below, ~15-25 min on a 2-core CPU
    python bench/real_model_pipeline.py --limit 300 --sae-tokens 40000   # a quicker pass

Runs the same code as `python saerl.py` -- saerl.run(Config(...)) -- stage by stage up to the
schedule, then the pipeline's own `train` stage for two tiny GRPO steps (B = 4, G = 4, 64 new
tokens, lr 1e-6, no evaluation). Each stage runs in a fresh child process so its wall time and peak
resident memory are its own: the child first reruns the earlier stages (all cached: model load and
file reads) and subtracts that time. Measured and written to bench/results/real_model_pipeline.json
(atomically) with a table on stdout:

  * feature extraction: tokens/s (tokens counted with the tokenizer over the very texts the features
    stage encodes, truncated as it truncates) and peak RSS;
  * the trained SAE: sae_check (FVU, L0, dead fraction) on MATH problems outside the run's subset;
  * quality probe: held-out precision/recall/AUC (MATH has no quality field, so the pipeline's
    automatic labels are used: unparseable answers + corrupted copies), and where the dropped
    problems sit in MATH level/subject;
  * difficulty proxy: held-out Spearman / R² against MATH levels (difficulty.json), plus our own
    Spearman on every problem outside the labelled subset (never seen by the proxy);
  * clusters: NMI against MATH subjects (`type`) from clusters.json, recomputed with scikit-learn;
  * GRPO: gen_s / train_s per step from train_log.jsonl; wall time of every stage.

Not run by CI. Needs the model folder (--smollm); without it the script says so and exits 0.
On a shared 2-core box multi-threaded torch/OpenBLAS can be 10-30x slower under load, so the
thread count is a flag (default 1) set before numpy/torch are imported.
"""
from __future__ import annotations

import os
import sys


def _early_threads(argv) -> str:
    """--threads must reach OPENBLAS/OMP before numpy is imported, so read it before argparse."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "1"


_THREADS = _early_threads(sys.argv)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = _THREADS
os.environ.setdefault("HF_HUB_OFFLINE", "1")   # the model is local; never wait on Hub retries
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime import atomic_write_text  # noqa: E402

SHARED = Path("/work/shared/data")
STEPS = ["problems", "sae", "features", "quality", "difficulty", "clusters", "schedule", "train"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smollm", default="/work/models/smollm2", help="SmolLM2 (HF format) folder")
    p.add_argument("--train-data", default=str(SHARED / "train" / "math_train.jsonl"), help="MATH train jsonl")
    p.add_argument("--eval-data", default=str(SHARED / "bench" / "minerva_math.jsonl"),
                   help="benchmark the train stage loads (never evaluated: --eval-every 0)")
    p.add_argument("--limit", type=int, default=1000, help="MATH problems (seeded subset)")
    p.add_argument("--sae-width", type=int, default=2048)
    p.add_argument("--sae-k", type=int, default=32)
    p.add_argument("--sae-tokens", type=int, default=100_000)
    p.add_argument("--sae-layer", type=int, default=None, help="default: the middle layer")
    p.add_argument("--sae", default=None, help="a trained SAE folder to load instead of training one (e.g. "
                   "bench/feature_quality.py's runs/feature_quality/sae_L15_8192x32x1000000_4000)")
    p.add_argument("--label-size", type=int, default=300)
    p.add_argument("--template", default="chat", help="chat (SmolLM2 is an instruct model) or qwen-math")
    p.add_argument("--grpo-steps", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--threads", type=int, default=1, help="torch / OpenBLAS threads")
    p.add_argument("--check-problems", type=int, default=48,
                   help="MATH problems outside the subset for the SAE's held-out sae_check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/saerl_real", help="parent of the run folder (outside the repo)")
    p.add_argument("--results", default=str(ROOT / "bench" / "results" / "real_model_pipeline.json"))
    p.add_argument("--fresh", action="store_true", help="delete the run folder first (else cached stages load)")
    return p.parse_args(argv)


def make_config(args, stage: str):
    """The saerl Config and GRPO overrides of this bench; identical across stages but `stage`."""
    import saerl  # a bench script sits above saerl.py; no project module imports it

    cfg = saerl.Config(
        model=args.smollm, train_data=args.train_data, limit=args.limit, seed=args.seed,
        sae=args.sae, sae_layer=args.sae_layer, sae_width=args.sae_width, sae_k=args.sae_k, sae_tokens=args.sae_tokens,
        difficulty_labels="field:difficulty", label_size=args.label_size, compare=False, seeds=1,
        steps=args.grpo_steps, eval_every=0, eval_limit=4, benchmarks=f"minerva={args.eval_data}",
        preset="qwen-math-1.5b", out=args.out, name="smollm2-math", stage=stage, device="cpu")
    overrides = dict(template=args.template, batch_size=args.batch_size, group_size=args.group_size,
                     max_new_tokens=args.max_new_tokens, lr=args.lr, gen_batch_size=args.batch_size,
                     micro_batch_size=4)
    return cfg, overrides


# --------------------------------------------------------------------------------------------
# One stage in a child process


def _stage_child(args, stage: str, prev: str | None, queue) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import saerl

    out = {"stage": stage}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prefix = 0.0
        if prev is not None:  # earlier stages, all cached: what this child pays before its own stage
            t0 = time.perf_counter()
            saerl.run(*make_config(args, prev))
            prefix = time.perf_counter() - t0
        t0 = time.perf_counter()
        saerl.run(*make_config(args, stage))
        total = time.perf_counter() - t0
        if stage == "sae":
            out["sae_check_held_out"] = held_out_sae_check(args)
    out.update(wall_s=total, cached_prefix_s=prefix, stage_s=max(0.0, total - prefix),
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               warnings=_summarise_warnings(caught))
    queue.put(out)


def _summarise_warnings(caught) -> list[dict]:
    counts: dict[str, dict] = {}
    for w in caught:
        msg = str(w.message).split("\n")[0][:300]
        key = f"{w.category.__name__}: {msg}"
        counts.setdefault(key, {"warning": key, "count": 0})["count"] += 1
    return list(counts.values())


def run_stage(args, stage: str, prev: str | None) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_stage_child, args=(args, stage, prev, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"stage {stage!r} failed in its child process (exit code {proc.exitcode}); see above")
    return queue.get()


def held_out_sae_check(args) -> dict:
    """sae_check on residuals of MATH problems the SAE never trained on (outside the run's subset)."""
    import torch

    import sae as sae_mod
    import sae_formats
    from data import format_prompt, load_problems
    from runtime import load_model, read_jsonl

    run_dir = Path(args.out) / "smollm2-math"
    used = {row["id"] for row in read_jsonl(run_dir / "problems.jsonl")}
    pool = [p for p in load_problems(args.train_data, seed=args.seed + 7, verbose=False) if p.id not in used]
    picked = pool[: args.check_problems]
    model, tok = load_model(args.smollm, device="cpu")
    sae_obj = sae_formats.load_sae(args.sae or run_dir / "sae", device="cpu")
    layer = json.loads((run_dir / "config.json").read_text())["pipeline"]["sae_layer"]
    layer = layer if layer is not None else model.config.num_hidden_layers // 2
    texts = [format_prompt(p.problem, tok, args.template) for p in picked]
    acts = []
    with torch.no_grad():
        for _, ids, mask, valid in sae_mod._token_batches(tok, texts, batch_size=16, max_length=512):
            hidden = sae_mod.capture_residuals(model, ids, mask, layer)
            acts.append(hidden[valid].float())
    report = sae_formats.sae_check(sae_obj, torch.cat(acts))
    return {"n_problems": len(picked), "layer": layer, **report}


# --------------------------------------------------------------------------------------------
# What the stages wrote, read back and checked independently


def token_counts(args, run_dir: Path) -> dict:
    """Tokens the features stage pushes through the model: the same texts and truncation as
    saerl.Encoder -> sae.encode_problems (batches of 16, longest first)."""
    from transformers import AutoTokenizer

    from data import format_prompt
    from runtime import read_jsonl

    tok = AutoTokenizer.from_pretrained(args.smollm)
    probs = list(read_jsonl(run_dir / "problems.jsonl"))
    texts = [format_prompt(p["problem"], tok, args.template) for p in probs]
    lens = sorted((len(x) for x in tok(texts, add_special_tokens=True, truncation=True, max_length=512)["input_ids"]),
                  reverse=True)
    span = [len(tok(p["problem"], add_special_tokens=False)["input_ids"]) for p in probs]
    padded = sum(max(lens[i:i + 16]) * len(lens[i:i + 16]) for i in range(0, len(lens), 16))
    # SAE training draws batches of 16 in random order: the padding it pays is much larger
    rng = __import__("random").Random(0)
    shuffled = lens[:]
    rng.shuffle(shuffled)
    padded_random = sum(max(shuffled[i:i + 16]) * 16 for i in range(0, len(shuffled) - 15, 16))
    return {"texts": len(texts), "tokens": sum(lens), "mean_tokens": sum(lens) / len(lens), "max_tokens": lens[0],
            "truncated_at_512": sum(n >= 512 for n in lens), "problem_span_tokens": sum(span),
            "padded_tokens_longest_first": padded,
            "padding_efficiency_longest_first": sum(lens) / padded,
            "padding_efficiency_random_order": sum(shuffled[: len(shuffled) // 16 * 16]) / max(1, padded_random)}


def analyse(args, run_dir: Path) -> dict:
    import numpy as np
    from scipy.stats import spearmanr
    from sklearn.metrics import normalized_mutual_info_score, r2_score

    from runtime import read_jsonl

    probs = list(read_jsonl(run_dir / "problems.jsonl"))
    level = np.array([float(p["difficulty"]) for p in probs])
    subject = [p["type"] for p in probs]
    labels = json.loads((run_dir / "labels.json").read_text())
    quality = json.loads((run_dir / "quality.json").read_text())
    difficulty = json.loads((run_dir / "difficulty.json").read_text())
    clusters = json.loads((run_dir / "clusters.json").read_text())

    kept = quality["kept"]
    dropped = sorted(set(range(len(probs))) - set(kept))
    scores = np.array(quality["scores"])
    q = {"label_source": quality["label_source"], "n_labelled": quality["n_labelled"],
         "n_negative": quality["n_negative"],
         "held_out": quality["metrics"], "kept": len(kept), "dropped": len(dropped),
         "score_quantiles": {str(k): float(np.quantile(scores, k)) for k in (0.0, 0.1, 0.5, 0.9, 1.0)},
         "spearman_score_vs_level": float(spearmanr(scores, level).statistic),
         "dropped_mean_level": float(level[dropped].mean()) if dropped else None,
         "kept_mean_level": float(level[kept].mean()),
         "dropped_by_subject": {s: sum(subject[i] == s for i in dropped) for s in sorted(set(subject))}}
    # corrupt_copies(frac=0.5) adds one negative copy per second labelled problem; the rest of the
    # negatives are originals whose answer did not parse (no rollouts with field labels)
    n_sub = len(labels["subset"])
    q["n_corrupted_copies"] = quality["n_labelled"] - n_sub
    q["n_negative_from_originals"] = quality["n_negative"] - q["n_corrupted_copies"]

    subset = set(labels["subset"])
    outside = [i for i in range(len(probs)) if i not in subset]
    pred = np.array(difficulty["predicted"])
    d = {"held_out": difficulty["held_out"], "alpha": difficulty["alpha"],
         "nonzero_coefficients": difficulty["nonzero_coefficients"], "n_labelled": difficulty["n_labelled"],
         "unlabelled_check": {"n": len(outside),
                              "spearman": float(spearmanr(pred[outside], level[outside]).statistic),
                              "r2": float(r2_score(level[outside], pred[outside]))},
         "predicted_range": [float(pred.min()), float(pred.max())], "level_std": float(level.std())}

    kept_subjects = [subject[i] for i in kept]
    c = {"k": clusters["k"], "silhouettes": clusters["silhouettes"], "purity": clusters["purity"],
         "nmi_sklearn": float(normalized_mutual_info_score(kept_subjects, clusters["labels"])),
         "nmi_level_sklearn": float(normalized_mutual_info_score([level[i] for i in kept], clusters["labels"])),
         "sizes": np.bincount(clusters["labels"]).tolist()}

    train_dir = run_dir / "arms" / "saerl-s0"
    steps = list(read_jsonl(train_dir / "train_log.jsonl")) if (train_dir / "train_log.jsonl").exists() else []
    g = {"steps": [{k: r[k] for k in ("step", "gen_s", "train_s", "reward", "accuracy", "response_len",
                                      "truncated", "frac_zero_std", "loss", "grad_norm", "tokens_per_s")}
                   for r in steps]}
    if steps:
        g["mean_gen_s"] = float(np.mean([r["gen_s"] for r in steps]))
        g["mean_train_s"] = float(np.mean([r["train_s"] for r in steps]))
    sched = list(read_jsonl(run_dir / "schedule.jsonl"))
    return {"quality": q, "difficulty": d, "clusters": c, "grpo": g, "schedule_steps": len(sched)}


# --------------------------------------------------------------------------------------------
# Entry


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if not (Path(args.smollm) / "config.json").exists():
        print(f"skipped: no SmolLM2 model at {args.smollm} (pass --smollm DIR, a HF-format folder with "
              "config.json and weights)")
        return None
    if not Path(args.train_data).exists():
        print(f"skipped: no MATH train file at {args.train_data} (pass --train-data FILE)")
        return None
    run_dir = Path(args.out) / "smollm2-math"
    if args.fresh and run_dir.exists():
        import shutil
        shutil.rmtree(run_dir)
    t_start = time.time()
    stages, prev = {}, None
    for stage in STEPS:
        print(f"=== stage {stage}", flush=True)
        stages[stage] = run_stage(args, stage, prev)
        print(f"=== {stage}: {stages[stage]['stage_s']:.1f} s, peak RSS {stages[stage]['peak_rss_mb']:.0f} MB",
              flush=True)
        prev = stage

    import torch
    tokens = token_counts(args, run_dir)
    feat_s = stages["features"]["stage_s"]
    features = {"tokens_per_s": tokens["tokens"] / feat_s, "problem_span_tokens_per_s": tokens["problem_span_tokens"] / feat_s,
                "problems_per_s": tokens["texts"] / feat_s, "stage_s": feat_s,
                "peak_rss_mb": stages["features"]["peak_rss_mb"], **tokens}
    cfg, overrides = make_config(args, "train")
    results = {
        "what": "saerl.run on SmolLM2-135M-Instruct + MATH train: stages to the schedule, then 2 GRPO steps",
        "machine": {"cpus": os.cpu_count(), "shared": "2-core CPU box shared with other jobs; timings are noisy",
                    "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
                    "loadavg_at_end": os.getloadavg()},
        "settings": {"model": args.smollm, "train_data": args.train_data, "limit": args.limit,
                     "sae": args.sae, "sae_width": args.sae_width, "sae_k": args.sae_k, "sae_tokens": args.sae_tokens,
                     "sae_layer": json.loads((run_dir / "config.json").read_text())["pipeline"]["sae_layer"],
                     "label_size": args.label_size, "template": args.template, "difficulty_labels": "field:difficulty",
                     "grpo": overrides | {"steps": args.grpo_steps}, "seed": args.seed,
                     "pipeline_config": dataclasses.asdict(cfg)},
        "stages": {s: {k: v for k, v in r.items() if k != "stage"} for s, r in stages.items()},
        "features": features,
        "sae_check_held_out": stages["sae"].get("sae_check_held_out"),
        **analyse(args, run_dir),
        "total_wall_s": time.time() - t_start,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results, json.dumps(_finite(results), indent=1, allow_nan=False) + "\n")
    print_table(results)
    print(f"results: {args.results}")
    return results


def _finite(x):
    """NaN/inf -> None, so the results file is strict JSON (the probe's precision is NaN when it
    flags nothing on the held-out split)."""
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def print_table(r: dict) -> None:
    f, q, d, c, g = r["features"], r["quality"], r["difficulty"], r["clusters"], r["grpo"]
    sc = r["sae_check_held_out"] or {}
    rows = [
        ("feature extraction", f"{f['tokens_per_s']:.0f} tok/s ({f['tokens']} tokens, {f['texts']} problems, "
                               f"{f['stage_s']:.0f} s), peak RSS {f['peak_rss_mb']:.0f} MB"),
        ("SAE held-out check", f"FVU {sc.get('fvu', float('nan')):.3f}, L0 {sc.get('l0', float('nan')):.1f}, "
                               f"dead {sc.get('dead_fraction', float('nan')):.2f}"),
        ("quality probe (auto labels)", ", ".join(f"{k} {v:.3f}" for k, v in q["held_out"].items() if isinstance(v, float))
         + f"; {q['n_labelled']} labels, {q['n_negative']} negative"),
        ("difficulty proxy vs level", f"held-out Spearman {d['held_out']['spearman']:.3f}, R² {d['held_out']['r2']:.3f} "
                                      f"(n={d['held_out']['n']}); unlabelled rows Spearman "
                                      f"{d['unlabelled_check']['spearman']:.3f} (n={d['unlabelled_check']['n']})"),
        ("clusters vs subject", f"k={c['k']}, NMI {c['purity']['nmi'] if c['purity'] else float('nan'):.3f} "
                                f"(sklearn {c['nmi_sklearn']:.3f}); NMI vs level {c['nmi_level_sklearn']:.3f}"),
        ("GRPO step", f"gen {g.get('mean_gen_s', float('nan')):.1f} s + train {g.get('mean_train_s', float('nan')):.1f} s"),
    ]
    rows += [(f"stage {s}", f"{v['stage_s']:.1f} s, peak RSS {v['peak_rss_mb']:.0f} MB") for s, v in r["stages"].items()]
    w = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{w}}  {b}")


if __name__ == "__main__":
    main()
