"""Do SAE features carry the signal SAERL needs? (issue 15) MATH subject and level from four
representations of the same problems, on SmolLM2-135M-Instruct.

    python bench/feature_quality.py --smollm /work/models/smollm2   # all of MATH train, ~55 min, 2-core CPU
    python bench/feature_quality.py --smollm DIR --limit 1500 --sae-configs 2048x32x200000   # a quick pass

Stages, each cached under --work (a killed run resumes at the stage it was in):
  1. extract  every problem of MATH train (7474), rendered with the chat template as the pipeline
              renders it, one forward that stops after the deepest layer asked for (--layers).
              Kept: each problem's mean-pooled residual at every layer (over the problem's own
              tokens, the pipeline's `valid` mask), and the tokens of the SAE layer (fp16).
  2. sae      TopK SAEs (sae.fit_sae, the pipeline's trainer) on those cached tokens, one per
              --sae-configs entry (width x k x tokens), each resumable mid-training; each SAE's
              curve (FVU, L0, dead) is kept and plotted (feature_quality_sae_curves.svg).
              The shipped MATH train has no solutions, so the SAEs read the problems' tokens.
  3. score    on a fixed --sample (2000) problems with a seeded 70/30 split:
                subject accuracy  multinomial logistic regression (hand-written, L2 strength by a
                                  validation split of the training rows), features z-scored;
                level Spearman    ElasticNet with alpha by estimators.fit_alpha, as the
                                  pipeline's difficulty stage fits it;
                95% intervals     1000 bootstrap resamples of the test rows;
                cluster NMI       k-means on L2-normalised rows vs the 7 subjects, k = 7 and the
                                  pipeline's auto k (silhouette over 8/16/32/64).
              Representations: TF-IDF (hand-written: word unigrams + bigrams, min df 2, sublinear
              tf, l2 rows), the dense residual at each layer, and each SAE's pooled features exactly
              as the pipeline stores them (mean over the problem's tokens, top 256 kept; the
              probe columns are the most active features, the pipeline's most_active).
              Pooling: the SAE layer's residual also pooled by max and by the last token, and the
              best-reconstructing SAE's codes max-pooled.
  4. time     sae.encode_problems (the pipeline's feature stage) on 200 problems: seconds per
              problem, and the check that its pooled features equal the bench's (same SAE).

Writes bench/results/feature_quality.json (atomically) and prints a table. Not run by CI; without
--smollm (a Hugging Face folder, ../shared/tools/smollm2_to_hf.py) it says so and exits 0.
"""
from __future__ import annotations

import os
import sys

THREADS = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--threads=")),
               next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--threads"), "2"))
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, THREADS)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import estimators  # noqa: E402
from data import load_problems  # noqa: E402
from runtime import atomic_write_text, load_model  # noqa: E402
from features import PooledFeatures  # noqa: E402
from sae import _pool_batch, _token_batches, decoder_layers, encode_problems, fit_sae, prompt_texts  # noqa: E402
from sae_formats import SAE, load_sae, save_sae  # noqa: E402

MATH = ROOT.parent / "shared" / "data" / "train" / "math_train.jsonl"
SUBJECTS = ("Algebra", "Counting & Probability", "Geometry", "Intermediate Algebra", "Number Theory",
            "Prealgebra", "Precalculus")


# ----------------------------------------------------------------------------------------------
# 1. extract: pooled residuals at several layers and the SAE layer's tokens, one forward per batch
# ----------------------------------------------------------------------------------------------
class _Stop(Exception):
    pass


@torch.no_grad()
def extract(model, tok, texts, spans, layers: list[int], sae_layer: int, batch_size: int = 16):
    """{layer: [N, d] mean residual over each problem's valid tokens}, the SAE layer's tokens
    [T, d] fp16 in problem order, and offsets [N + 1] into them."""
    blocks = decoder_layers(model)
    deepest = max(layers + [sae_layer])
    caught = {}

    def hook(i):
        def fn(_m, _inp, out):
            caught[i] = out[0] if isinstance(out, tuple) else out
            if i == deepest:
                raise _Stop
        return fn

    handles = [blocks[i].register_forward_hook(hook(i)) for i in sorted(set(layers + [sae_layer]))]
    n, d = len(texts), model.config.hidden_size
    pooled = {layer: torch.zeros(n, d) for layer in layers}
    per_problem = [None] * n
    try:
        done = 0
        for rows, ids, mask, valid in _token_batches(tok, texts, batch_size=batch_size, max_length=512,
                                                     char_spans=spans):
            try:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            except _Stop:
                pass
            v = valid.float()  # [B, T]
            count = v.sum(1).clamp(min=1)[:, None]
            for layer in layers:
                pooled[layer][rows] = (caught[layer].float() * v[..., None]).sum(1) / count
            for b, r in enumerate(rows):
                per_problem[r] = caught[sae_layer][b][valid[b]].to(torch.float16)
            done += len(rows)
            if done % (batch_size * 50) < batch_size:
                print(f"  extract {done}/{n}", flush=True)
    finally:
        for h in handles:
            h.remove()
    lengths = torch.tensor([t.shape[0] for t in per_problem])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    return pooled, torch.cat(per_problem), offsets


def token_stream(tokens: torch.Tensor, seed: int, chunk: int = 8192):
    """Endless seeded shuffle of the cached tokens, epoch after epoch, as float32 chunks."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(tokens.shape[0], generator=gen)
        for s in range(0, len(order), chunk):
            yield tokens[order[s:s + chunk]].float()


@torch.no_grad()
def pooled_sae(sae: SAE, tokens, offsets, top_m: int = 256, pooling: str = "mean") -> PooledFeatures:
    """The pipeline's pooled features from cached tokens: per problem, the pipeline's own pooling
    (sae._pool_batch: mean or max of the codes over the problem's tokens), the top_m largest kept,
    as sae.encode_problems keeps them after its forward."""
    n = len(offsets) - 1
    values = torch.zeros(n, top_m)
    indices = torch.zeros(n, top_m, dtype=torch.long)
    for i in range(n):
        t = tokens[offsets[i]:offsets[i + 1]].float()[None]  # [1, T, d]
        pooled = _pool_batch(sae, t, torch.ones(t.shape[:2], dtype=torch.bool), pooling)[0]
        values[i], indices[i] = pooled.topk(top_m)
    return PooledFeatures(values, indices, sae.d_sae)


def pooled_dense(tokens, offsets, pooling: str) -> np.ndarray:
    """The residual pooled over each problem's tokens by its per-dimension max or its last token
    (the mean is the extract stage's)."""
    out = []
    for i in range(len(offsets) - 1):
        t = tokens[offsets[i]:offsets[i + 1]].float()
        out.append(t.max(0).values if pooling == "max" else t[-1])
    return torch.stack(out).double().numpy()


def curves_svg(saes: dict, path) -> None:
    """The SAEs' training curves (FVU and dead fraction against tokens) as a small hand-written SVG,
    so the plot needs no plotting library."""
    w, h, pad = 640, 300, 48
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    lo = 3  # the axis runs from 1e3 tokens to the next power of ten above the longest run
    hi = math.ceil(math.log10(max(r["tokens"] for t in saes.values() for r in t["curve"])))
    x = lambda tok: pad + (w - 2 * pad) * (math.log10(tok) - lo) / (hi - lo)  # noqa: E731
    y = lambda v: h - pad - (h - 2 * pad) * min(v, 1.0)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             f'font-size="11"><rect width="{w}" height="{h}" fill="white"/>',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
             f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">training tokens (log scale)</text>',
             f'<text x="12" y="{h / 2}" transform="rotate(-90 12 {h / 2})" text-anchor="middle">'
             f'FVU (solid), dead fraction (dashed)</text>']
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<text x="{pad - 6}" y="{y(v) + 4}" text-anchor="end">{v:g}</text>')
    for e in range(lo, hi + 1):
        parts.append(f'<text x="{x(10 ** e)}" y="{h - pad + 14}" text-anchor="middle">1e{e}</text>')
    for j, (spec, t) in enumerate(saes.items()):
        c = colours[j % len(colours)]
        fvu = " ".join(f"{x(r['tokens']):.1f},{y(r['fvu']):.1f}" for r in t["curve"])
        dead = " ".join(f"{x(r['tokens']):.1f},{y(r['dead_fraction']):.1f}" for r in t["curve"])
        parts += [f'<polyline points="{fvu}" fill="none" stroke="{c}" stroke-width="1.5"/>',
                  f'<polyline points="{dead}" fill="none" stroke="{c}" stroke-dasharray="4 3"/>',
                  f'<text x="{w - pad - 4}" y="{pad + 14 * j}" text-anchor="end" fill="{c}">{spec} '
                  f'(held-out FVU {t["check"]["fvu"]:.3f})</text>']
    atomic_write_text(path, "\n".join(parts + ["</svg>"]) + "\n")


# ----------------------------------------------------------------------------------------------
# 3. score
# ----------------------------------------------------------------------------------------------
def tfidf(train_texts, all_texts, min_df: int = 2, max_terms: int = 5000) -> np.ndarray:
    """Word unigrams + bigrams (lower-cased, LaTeX commands kept as words), vocabulary and idf from
    the training rows only, sublinear tf, l2-normalised rows."""
    def terms(text):
        words = re.findall(r"\\[a-zA-Z]+|[a-zA-Z]+|\d+|[^\s\w]", text.lower())
        return words + [a + " " + b for a, b in zip(words, words[1:])]

    df = Counter(t for text in train_texts for t in set(terms(text)))
    vocab = [t for t, c in sorted(df.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_df][:max_terms]
    col = {t: j for j, t in enumerate(vocab)}
    idf = np.array([math.log((1 + len(train_texts)) / (1 + df[t])) + 1 for t in vocab])
    X = np.zeros((len(all_texts), len(vocab)))
    for i, text in enumerate(all_texts):
        for t, c in Counter(terms(text)).items():
            if t in col:
                X[i, col[t]] = (1 + math.log(c)) * idf[col[t]]
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def softmax_regression(X, y, n_classes, l2: float, iters: int = 200) -> torch.Tensor:
    """Multinomial logistic regression: min mean CE + l2/2 |W|^2 (bias free), full-batch L-BFGS."""
    X, y = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y)
    W = torch.zeros(X.shape[1] + 1, n_classes, dtype=torch.float64, requires_grad=True)
    Xb = torch.cat([X, torch.ones(len(X), 1, dtype=torch.float64)], 1)
    opt = torch.optim.LBFGS([W], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(Xb @ W, y) + l2 / 2 * W[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach()


def subject_accuracy(X, y, train, test, seed: int) -> tuple[float, np.ndarray, float]:
    """Test accuracy, per-row correctness, and the L2 strength chosen on 20% of the training rows."""
    mu, sd = X[train].mean(0), X[train].std(0) + 1e-8
    Z = (X - mu) / sd
    rng = np.random.default_rng(seed)
    perm = rng.permutation(train)
    val, fit = perm[: len(perm) // 5], perm[len(perm) // 5:]

    def acc(W, rows):
        logits = torch.cat([torch.as_tensor(Z[rows]), torch.ones(len(rows), 1, dtype=torch.float64)], 1) @ W
        return (logits.argmax(1).numpy() == y[rows])

    grid = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    scores = [acc(softmax_regression(Z[fit], y[fit], 7, l2), val).mean() for l2 in grid]
    best = grid[int(np.argmax(scores))]
    correct = acc(softmax_regression(Z[train], y[train], 7, best), test)
    return float(correct.mean()), correct, best


def level_spearman(X, levels, train, test, seed: int) -> tuple[float, np.ndarray]:
    model, _ = estimators.fit_alpha(X[train], levels[train], seed=seed)
    return estimators.spearman(levels[test], model.predict(X[test])), model.predict(X[test])


def bootstrap(stat, n: int, reps: int = 1000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    vals = sorted(stat(rng.integers(0, n, n)) for _ in range(reps))
    return [float(vals[int(0.025 * reps)]), float(vals[int(0.975 * reps) - 1])]


def cluster_nmi(X, subjects, seed: int) -> dict:
    Xn = estimators.l2_normalize_rows(torch.as_tensor(X, dtype=torch.float32))
    labels7 = estimators.kmeans(Xn, 7, seed=seed)[0].numpy()
    k_auto, _ = estimators.choose_k(Xn, seed=seed)
    labels_auto = estimators.kmeans(Xn, k_auto, seed=seed)[0].numpy()
    return {"nmi_k7": estimators.normalized_mutual_info(labels7, subjects),
            "k_auto": int(k_auto), "nmi_auto": estimators.normalized_mutual_info(labels_auto, subjects)}


def score(name, X, subjects, levels, train, test, seed) -> dict:
    t0 = time.perf_counter()
    acc, correct, l2 = subject_accuracy(X, subjects, train, test, seed)
    rho, pred = level_spearman(X, levels, train, test, seed)
    truth = levels[test]
    row = {"name": name, "dims": int(X.shape[1]),
           "subject_accuracy": acc, "subject_ci": bootstrap(lambda ix: correct[ix].mean(), len(test), seed=seed),
           "subject_l2": l2,
           "level_spearman": float(rho),
           "level_ci": bootstrap(lambda ix: estimators.spearman(truth[ix], pred[ix]), len(test), seed=seed),
           **cluster_nmi(X, subjects, seed)}
    row["seconds"] = time.perf_counter() - t0
    print(f"  {name:32s} subject {acc:.3f} [{row['subject_ci'][0]:.3f}, {row['subject_ci'][1]:.3f}]  "
          f"level rho {rho:.3f} [{row['level_ci'][0]:.3f}, {row['level_ci'][1]:.3f}]  "
          f"NMI k7 {row['nmi_k7']:.3f} auto(k={row['k_auto']}) {row['nmi_auto']:.3f}", flush=True)
    return row


# ----------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smollm", default=None, help="SmolLM2-135M-Instruct Hugging Face folder")
    ap.add_argument("--work", default=str(ROOT / "runs" / "feature_quality"), help="cache folder")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "feature_quality.json"))
    ap.add_argument("--layers", default="5,10,15,20", help="layers whose pooled residual is scored")
    ap.add_argument("--sae-layer", type=int, default=15, help="the layer the SAEs read (the pipeline's default: the middle)")
    ap.add_argument("--sae-configs", default="2048x32x20000,2048x32x1000000,2048x32x3000000,8192x32x1000000",
                    help="width x k x training tokens, comma-separated")
    ap.add_argument("--sample", type=int, default=2000)
    ap.add_argument("--limit", type=int, default=None, help="a seeded subset of N MATH problems (data.load_problems)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", default=THREADS, help="torch and BLAS threads (read before numpy loads)")
    args = ap.parse_args(argv)
    if not args.smollm or not Path(args.smollm).exists():
        print("feature_quality: pass --smollm DIR (a SmolLM2-135M-Instruct Hugging Face folder, see "
              "../shared/tools/smollm2_to_hf.py); nothing to do")
        return
    torch.set_num_threads(int(THREADS))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    layers = [int(x) for x in args.layers.split(",")]
    problems = load_problems(str(MATH), limit=args.limit, verbose=False)
    model, tok = load_model(args.smollm, device="cpu", dtype=torch.float32)
    texts, spans = prompt_texts(problems, tok, "chat")

    # 1. extract
    cache = work / f"extract_{args.limit}_{args.layers}_{args.sae_layer}.pt"
    if cache.exists():
        saved = torch.load(cache)
    else:
        t0 = time.perf_counter()
        pooled, tokens, offsets = extract(model, tok, texts, spans, layers, args.sae_layer)
        saved = {"pooled": pooled, "tokens": tokens, "offsets": offsets, "seconds": time.perf_counter() - t0}
        torch.save(saved, str(cache) + ".tmp")
        os.replace(str(cache) + ".tmp", cache)
    tokens, offsets = saved["tokens"], saved["offsets"]
    print(f"extract: {len(problems)} problems, {tokens.shape[0]} tokens, {saved['seconds']:.0f} s "
          f"({saved['seconds'] / len(problems) * 1000:.1f} ms per problem, {len(layers)} layers)", flush=True)

    # 2. SAEs on the cached tokens
    saes, trained = {}, {}
    for spec in args.sae_configs.split(","):
        width, k, n_tok = (int(x) for x in spec.split("x"))
        folder = work / f"sae_L{args.sae_layer}_{width}x{k}x{n_tok}_{args.limit}"
        if not (folder / "train.json").exists():  # written last: the marker of a finished SAE
            curve: list = []
            t0 = time.perf_counter()
            sae = fit_sae(token_stream(tokens, args.seed), model.config.hidden_size, d_sae=width, k=k, tokens=n_tok,
                          layer=args.sae_layer, seed=args.seed, curve=curve, progress=True,
                          state_path=work / f"{folder.name}.state.pt")
            save_sae(sae, folder)
            atomic_write_text(folder / "train.json", json.dumps(
                {"check": sae.meta["check"], "curve": curve, "train_seconds": time.perf_counter() - t0}))
        saes[spec] = load_sae(folder)
        trained[spec] = json.loads((folder / "train.json").read_text())
        c = trained[spec]["check"]
        print(f"sae {spec}: held-out FVU {c['fvu']:.3f}, L0 {c['l0']:.1f}, dead {c['dead_fraction']:.3f}, "
              f"{trained[spec]['train_seconds']:.0f} s", flush=True)

    # 3. score on the fixed sample
    rng = np.random.default_rng(args.seed)
    sample = np.sort(rng.permutation(len(problems))[: args.sample])
    perm = rng.permutation(len(sample))
    n_train = int(0.7 * len(sample))
    train, test = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    subjects = np.array([SUBJECTS.index(problems[i].meta["type"]) for i in sample])
    levels = np.array([float(problems[i].meta["difficulty"]) for i in sample])
    majority = Counter(subjects[test]).most_common(1)[0][1] / len(test)
    print(f"score: {len(sample)} problems, {len(train)} train / {len(test)} test, majority subject {majority:.3f}")
    rows = []
    sample_texts = [problems[i].problem for i in sample]
    rows.append(score("tf-idf", tfidf([sample_texts[i] for i in train], sample_texts), subjects, levels, train, test,
                      args.seed))
    for layer in layers:
        rows.append(score(f"dense residual L{layer} (mean)", saved["pooled"][layer][sample].double().numpy(),
                          subjects, levels, train, test, args.seed))
    sel = torch.as_tensor(sample)
    sub_offsets = torch.cat([torch.zeros(1, dtype=torch.long), (offsets[sel + 1] - offsets[sel]).cumsum(0)])
    sub_tokens = torch.cat([tokens[offsets[i]:offsets[i + 1]] for i in sample])
    for pooling in ("max", "last"):  # which pooling of the SAE layer's residual carries the signal
        X = pooled_dense(sub_tokens, sub_offsets, pooling)
        rows.append(score(f"dense residual L{args.sae_layer} ({pooling})", X, subjects, levels, train, test, args.seed))
    feats = {}
    for spec, sae in saes.items():
        feats[spec] = pooled_sae(sae, sub_tokens, sub_offsets)
        cols = feats[spec].most_active(list(train), 2048)
        X = feats[spec].columns(range(len(sample)), cols)
        rows.append(score(f"SAE L{args.sae_layer} {spec} (top-256)", X, subjects, levels, train, test, args.seed))
    best = min(saes, key=lambda spec: trained[spec]["check"]["fvu"])  # the best reconstruction
    maxed = pooled_sae(saes[best], sub_tokens, sub_offsets, pooling="max")
    X = maxed.columns(range(len(sample)), maxed.most_active(list(train), 2048))
    rows.append(score(f"SAE L{args.sae_layer} {best} (top-256, max)", X, subjects, levels, train, test, args.seed))

    # 4. the pipeline's own feature stage on 200 problems: time per problem, and equality
    spec = args.sae_configs.split(",")[-1]
    few = list(sample[:200])
    t0 = time.perf_counter()
    pf = encode_problems(model, tok, [texts[i] for i in few], saes[spec], args.sae_layer,
                         char_spans=[spans[i] for i in few], progress=False)
    per_problem_s = (time.perf_counter() - t0) / len(few)
    ours = feats[spec].dense(list(range(200)))
    theirs = pf.dense()
    agree = float((ours - theirs).abs().max() / theirs.abs().max())
    print(f"encode_problems: {per_problem_s * 1000:.1f} ms per problem; max |bench - pipeline| pooled value "
          f"{agree:.1e} of the largest (the bench's tokens are cached in fp16)")

    out = {"what": "MATH subject / level from TF-IDF, dense residuals and SAE features (SmolLM2-135M-Instruct)",
           "machine": {"threads": int(THREADS), "torch": torch.__version__}, "sample": args.sample,
           "split": [len(train), len(test)], "majority_subject": majority,
           "extract": {"problems": len(problems), "tokens": int(tokens.shape[0]), "seconds": saved["seconds"],
                       "layers": layers},
           "saes": trained,
           "pipeline_encode_ms_per_problem": per_problem_s * 1000, "pipeline_vs_bench_max_rel": agree,
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=1))
    svg = Path(args.out).with_name(Path(args.out).stem + "_sae_curves.svg")
    curves_svg(trained, svg)
    print(f"wrote {args.out} and {svg}")


if __name__ == "__main__":
    main()
