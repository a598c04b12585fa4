"""Parity and speed of estimators.py's k-means and ElasticNet against scikit-learn (CPU).

    python bench/bench_method.py            # full sizes (slow on a 2-core box: several minutes)
    python bench/bench_method.py --quick    # smaller sizes, same code paths

k-means: dense 20k × 4096 (float32) and sparse 100k × 65536 rows with 256 non-zeros (float32,
scipy CSR for sklearn, torch CSR for saerl, the same arrays), rows L2-normalised as the pipeline
does, k = 64, n_init = 1, a fixed max_iter. Two comparisons: (1) the same initial centres (from
sklearn's kmeans_plusplus) with tol = 0, so both run the same Lloyd iterations; (2) each library's
own k-means++ with the default tol. The peak resident memory of saerl's sparse k-means is taken in
a child process (VmHWM after resetting it once the data is built, so data included, generation
excluded). ElasticNet: coefficients (max abs diff) and time at the default tol and at tol = 1e-10,
on z-scored features (saerl standardises internally; sklearn's time includes its StandardScaler).
On a busy 2-core machine multi-threaded OpenBLAS can stall small solves by ~100x; the recorded
numbers were run with OPENBLAS_NUM_THREADS=1 (torch's kernels are unaffected).

Small data (issue 14, `--only blobs`): 12 well-separated Gaussian blobs, 3000 rows x 16 features,
`KMeans(12, n_init=1, random_state=s)` against `estimators.kmeans(X, 12, seed=s)` over 30 seeds, both
on one thread (torch and scikit-learn's pools; tiny kernels gain nothing from threads and stall on a
busy box); each time is the best of 5 calls. Both use greedy k-means++ (2 + floor(ln k) candidates
per centre) with different random streams, so on a few seeds one side's init misses a blob (over
400 inits: ours 4.3%, scikit-learn's 2.5%); the aims are the median ratio and the ratio of mean
inertias within 1%, and the total time within 1.5x.

Aims (issue 4): inertia within 1%, coefficients within 1e-4, no slower than sklearn, sparse k-means
well under 4 GB. Results go to bench/results/method.json (atomic write) and a table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import estimators  # noqa: E402
import estimators_fast  # noqa: E402
from runtime import atomic_write_text  # noqa: E402


def dense_data(n, d, k_true, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k_true, d)).astype(np.float32)
    X = centres[rng.integers(k_true, size=n)] + 2.0 * rng.normal(size=(n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def sparse_parts(n, d, nnz, k_true, seed):
    """SAE-like rows: half of each row's non-zeros from its topic's 512-column pool, half anywhere;
    positive values; L2-normalised. Returns CSR parts (indptr, indices, data), sorted columns."""
    rng = np.random.default_rng(seed)
    pools = rng.integers(d, size=(k_true, 512))
    topic = rng.integers(k_true, size=n)
    cols = np.empty((n, nnz), dtype=np.int64)
    half = nnz // 2
    cols[:, :half] = pools[topic[:, None], rng.integers(512, size=(n, half))]
    cols[:, half:] = rng.integers(d, size=(n, nnz - half))
    cols.sort(axis=1)
    dup = np.zeros_like(cols, dtype=bool)
    dup[:, 1:] = cols[:, 1:] == cols[:, :-1]
    vals = rng.exponential(size=(n, nnz)).astype(np.float32)
    vals[dup] = 0.0  # a repeated column adds nothing; keep the structure rectangular
    vals /= np.linalg.norm(vals, axis=1, keepdims=True)
    indptr = np.arange(0, n * nnz + 1, nnz, dtype=np.int64)
    return indptr, cols.reshape(-1), vals.reshape(-1)


def torch_csr(parts, shape):
    indptr, cols, vals = parts
    return torch.sparse_csr_tensor(torch.from_numpy(indptr), torch.from_numpy(cols),
                                   torch.from_numpy(vals), size=shape, check_invariants=False)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_kmeans(name, X_ours, X_sk, k, max_iter, seed, skip_own=False):
    from sklearn.cluster import KMeans, kmeans_plusplus
    rows = {}
    init, _ = kmeans_plusplus(X_sk, k, random_state=seed)
    (_, _, inertia_o, it_o), t_o = timed(lambda: estimators.kmeans(
        X_ours, k, init=torch.from_numpy(np.asarray(init)), max_iter=max_iter, tol=0.0,
        return_n_iter=True))
    km, t_s = timed(lambda: KMeans(k, init=init, n_init=1, max_iter=max_iter, tol=0.0,
                                   algorithm="lloyd").fit(X_sk))
    rows["same_init"] = dict(inertia_saerl=inertia_o, inertia_sklearn=float(km.inertia_),
                             inertia_ratio=inertia_o / km.inertia_, iters_saerl=it_o,
                             iters_sklearn=int(km.n_iter_), seconds_saerl=t_o,
                             seconds_sklearn=t_s, time_ratio=t_o / t_s)
    if not skip_own:
        (_, _, inertia_o, it_o), t_o = timed(lambda: estimators.kmeans(
            X_ours, k, max_iter=max_iter, seed=seed, return_n_iter=True))
        rows["own_init"] = own_init_row(inertia_o, it_o, t_o, X_sk, k, max_iter, seed)
    print_rows(name, rows)
    return rows


def own_init_row(inertia_o, it_o, t_o, X_sk, k, max_iter, seed):
    from sklearn.cluster import KMeans
    km, t_s = timed(lambda: KMeans(k, n_init=1, max_iter=max_iter, random_state=seed,
                                   algorithm="lloyd").fit(X_sk))
    return dict(inertia_saerl=inertia_o, inertia_sklearn=float(km.inertia_),
                inertia_ratio=inertia_o / km.inertia_, iters_saerl=it_o,
                iters_sklearn=int(km.n_iter_), seconds_saerl=t_o, seconds_sklearn=t_s,
                time_ratio=t_o / t_s)


def print_rows(name, rows):
    for kind, r in rows.items():
        print(f"{name:<28} {kind:<9} inertia {r['inertia_saerl']:.6g} vs {r['inertia_sklearn']:.6g}"
              f" (ratio {r['inertia_ratio']:.5f}), iters {r['iters_saerl']}/{r['iters_sklearn']}, "
              f"time {r['seconds_saerl']:.2f}s vs {r['seconds_sklearn']:.2f}s "
              f"(ratio {r['time_ratio']:.2f})", flush=True)


def memory_child(args):
    """Child process: build the sparse data, reset the peak-RSS mark, run estimators.kmeans with its own
    k-means++, print a JSON line with time, inertia and peak RSS."""
    n, d = args.sparse_rows, 65536
    X = torch_csr(sparse_parts(n, d, 256, 64, args.seed), (n, d))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM so the peak below covers k-means (and the data it holds)
    (_, _, inertia, it), t = timed(lambda: estimators.kmeans(X, args.k, max_iter=args.max_iter,
                                                        seed=args.seed, return_n_iter=True))
    status = open("/proc/self/status").read().split("\n")
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    print(json.dumps(dict(inertia=inertia, iters=it, seconds=t, peak_rss_mb=hwm / 1024,
                          final_rss_mb=rss / 1024)))


def bench_elasticnet(name, n, d, sparse_like, seed, frac_alpha=0.1):
    from sklearn.linear_model import ElasticNet as SkEN
    from sklearn.preprocessing import StandardScaler
    rng = np.random.default_rng(seed)
    if sparse_like:  # SAE-like: non-negative, mostly zero
        X = rng.exponential(size=(n, d)) * (rng.random((n, d)) < 0.05)
    else:
        X = rng.normal(size=(n, d)) @ (np.eye(d) + 0.05 * rng.normal(size=(d, d)))
    w = np.zeros(d)
    w[rng.choice(d, 30, replace=False)] = rng.normal(size=30)
    y = X @ w + 0.5 * rng.normal(size=n)
    alpha = frac_alpha * estimators.alpha_grid(X, y, n_alphas=2)[0]
    out = {}
    for tol in (1e-4, 1e-10):
        ours, t_o = timed(lambda: estimators.ElasticNet(alpha, 0.5, max_iter=100000, tol=tol).fit(X, y))
        # sklearn's time includes its StandardScaler, as saerl's includes its own z-scoring
        sk, t_s = timed(lambda: SkEN(alpha=alpha, l1_ratio=0.5, max_iter=100000, tol=tol).fit(
            StandardScaler().fit_transform(X), y))
        out[f"tol={tol:g}"] = dict(
            alpha=alpha, nonzero=int((ours.coef_ != 0).sum()),
            max_abs_coef_diff=float(np.max(np.abs(ours.coef_ - sk.coef_))),
            intercept_diff=abs(ours.intercept_ - float(sk.intercept_)),
            iters_saerl=ours.n_iter_, iters_sklearn=int(sk.n_iter_), dual_gap_saerl=ours.dual_gap_,
            dual_gap_sklearn=float(sk.dual_gap_), seconds_saerl=t_o, seconds_sklearn=t_s,
            time_ratio=t_o / t_s)
        r = out[f"tol={tol:g}"]
        print(f"{name:<28} tol={tol:<6g} max|Δw| {r['max_abs_coef_diff']:.2e}, nnz {r['nonzero']},"
              f" iters {r['iters_saerl']}/{r['iters_sklearn']}, time {t_o:.3f}s vs {t_s:.3f}s "
              f"(ratio {r['time_ratio']:.2f})", flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (5k dense, 20k sparse)")
    p.add_argument("--k", type=int, default=64, help="clusters for both k-means cases")
    p.add_argument("--max-iter", type=int, default=20, help="Lloyd iterations cap for both")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sparse-rows", type=int, default=None, help="override the sparse row count")
    p.add_argument("--only", choices=["all", "kmeans", "elasticnet", "blobs"], default="all",
                   help="run one part; its entries replace those in an existing --out file")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "method.json"))
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.sparse_rows is None:
        args.sparse_rows = 20_000 if args.quick else 100_000
    if args.memory_child:
        return memory_child(args)
    import sklearn

    dense_rows = 5_000 if args.quick else 20_000
    results = dict(machine=dict(cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                                loadavg_at_start=os.getloadavg(), torch=torch.__version__,
                                sklearn=sklearn.__version__,
                                OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS")),
                   settings=dict(quick=args.quick, k=args.k, max_iter=args.max_iter,
                                 dense_shape=[dense_rows, 4096],
                                 sparse_shape=[args.sparse_rows, 65536], sparse_nnz_per_row=256,
                                 dtype="float32"))
    print(f"load average at start: {os.getloadavg()}", flush=True)
    if args.only != "all" and os.path.exists(args.out):
        with open(args.out) as f:
            results = {**json.load(f), **{k: v for k, v in results.items() if k != "settings"}}
    if args.only in ("all", "blobs"):
        results["kmeans_blobs"] = bench_blobs()
    if args.only in ("all", "kmeans"):
        bench_all_kmeans(args, results, dense_rows)
    if args.only in ("all", "elasticnet"):
        results["elasticnet"] = {
            "dense 2000x1000": bench_elasticnet("elasticnet dense 2000x1000", 2000, 1000, False,
                                                args.seed),
            "sae-like 2000x4000": bench_elasticnet("elasticnet sae-like 2000x4000", 2000, 4000,
                                                   True, args.seed),
            # a dense support (~900 of 3000 non-zero): saerl's Python sweeps are the bottleneck
            "dense 1000x3000 small alpha": bench_elasticnet(
                "elasticnet dense 1000x3000 α/100", 1000, 3000, False, args.seed,
                frac_alpha=0.01),
        }
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def bench_blobs(n=3000, d=16, k=12, seeds=100, repeats=3):
    """k-means on small, well-separated data: 12 Gaussian blobs (centres uniform in [-10, 10]^d,
    unit spread), n_init=1, default tol; inertia ratio and best-of-`repeats` time per seed, both
    libraries on one thread."""
    def best_time(fn):
        out, best = None, float("inf")
        for _ in range(repeats):
            out, t = timed(fn)
            best = min(best, t)
        return out, best

    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # kernels this small gain nothing from threads, and on a busy box they stall
    with threadpool_limits(1):  # scikit-learn's OpenMP and BLAS pools likewise
        rows = [blob_row(n, d, k, seed, best_time) for seed in range(seeds)]
        misses = init_miss_rates(n, d, k)
    torch.set_num_threads(threads)
    ratios = [r["inertia_ratio"] for r in rows]
    summary = dict(shape=[n, d], k=k, seeds=seeds, threads=1, median_inertia_ratio=float(np.median(ratios)),
                   mean_inertia_ratio=float(np.mean([r["inertia_saerl"] for r in rows])
                                            / np.mean([r["inertia_sklearn"] for r in rows])),
                   seeds_saerl_worse_1pct=sum(r > 1.01 for r in ratios),
                   seeds_sklearn_worse_1pct=sum(r < 1 / 1.01 for r in ratios),
                   time_ratio=sum(r["seconds_saerl"] for r in rows) / sum(r["seconds_sklearn"] for r in rows),
                   init_misses=misses, per_seed=rows)
    print(f"k-means++ inits that leave a blob without a centre: saerl {misses['saerl']:.3f}, sklearn "
          f"{misses['sklearn']:.3f} (of {misses['inits']})", flush=True)
    print(f"kmeans blobs: median inertia ratio {summary['median_inertia_ratio']:.4f}, ratio of mean inertias "
          f"{summary['mean_inertia_ratio']:.4f}; seeds where one side is >1% worse (a missed blob): saerl "
          f"{summary['seeds_saerl_worse_1pct']}, sklearn {summary['seeds_sklearn_worse_1pct']}; time ratio "
          f"{summary['time_ratio']:.2f}", flush=True)
    return summary


def init_miss_rates(n, d, k, datasets=10, inits=100):
    """Fraction of greedy k-means++ inits that put no centre in some blob: the event behind a >1% worse
    inertia on blobs, where one library's random stream is luckier than the other's on a given seed."""
    from sklearn.cluster import kmeans_plusplus

    miss = {"saerl": 0, "sklearn": 0}
    for data_seed in range(datasets):
        rng = np.random.default_rng(data_seed)
        centres = rng.uniform(-10, 10, size=(k, d))
        truth = rng.integers(k, size=n)
        X = (centres[truth] + rng.normal(size=(n, d))).astype(np.float32)
        Xt = torch.from_numpy(X)
        for s in range(inits):
            _, ids = estimators._kmeans_plusplus(Xt, estimators_fast.row_sq_norms(Xt), k,
                                                 torch.Generator().manual_seed(s), 4096)
            miss["saerl"] += len(set(truth[ids].tolist())) < k
            miss["sklearn"] += len(set(truth[kmeans_plusplus(X, k, random_state=s)[1]].tolist())) < k
    total = datasets * inits
    return {"inits": total, **{name: m / total for name, m in miss.items()}}


def blob_row(n, d, k, seed, best_time):
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, size=(k, d))
    X = (centres[rng.integers(k, size=n)] + rng.normal(size=(n, d))).astype(np.float32)
    Xt = torch.from_numpy(X)
    (_, _, inertia_o), t_o = best_time(lambda: estimators.kmeans(Xt, k, seed=seed))
    km, t_s = best_time(lambda: KMeans(k, n_init=1, random_state=seed).fit(X))
    row = dict(seed=seed, inertia_saerl=inertia_o, inertia_sklearn=float(km.inertia_),
               inertia_ratio=inertia_o / float(km.inertia_), seconds_saerl=t_o, seconds_sklearn=t_s)
    print(f"kmeans blobs {n}x{d} k={k} seed {seed}: inertia ratio {row['inertia_ratio']:.4f}, "
          f"time {1e3 * t_o:.1f} ms vs {1e3 * t_s:.1f} ms", flush=True)
    return row


def bench_all_kmeans(args, results, dense_rows):
    import scipy.sparse as sp

    Xd = dense_data(dense_rows, 4096, 64, args.seed)
    results["kmeans_dense"] = bench_kmeans(f"kmeans dense {dense_rows}x4096", torch.from_numpy(Xd),
                                           Xd, args.k, args.max_iter, args.seed)
    del Xd

    n = args.sparse_rows
    child = subprocess.run([sys.executable, __file__, "--memory-child", "--k", str(args.k),
                            "--max-iter", str(args.max_iter), "--seed", str(args.seed),
                            "--sparse-rows", str(n)], capture_output=True, text=True, check=True)
    mem = json.loads(child.stdout.strip().splitlines()[-1])
    parts = sparse_parts(n, 65536, 256, 64, args.seed)
    X_sk = sp.csr_matrix((parts[2], parts[1], parts[0]), shape=(n, 65536))
    X_ours = torch_csr(parts, (n, 65536))
    rows = bench_kmeans(f"kmeans sparse {n}x65536", X_ours, X_sk, args.k, args.max_iter,
                        args.seed, skip_own=True)
    rows["own_init"] = own_init_row(mem["inertia"], mem["iters"], mem["seconds"], X_sk, args.k,
                                    args.max_iter, args.seed)
    print_rows(f"kmeans sparse {n}x65536", {"own_init": rows["own_init"]})
    rows["saerl_peak_rss_mb"] = mem["peak_rss_mb"]
    print(f"saerl sparse k-means peak RSS (data included): {mem['peak_rss_mb']:.0f} MB", flush=True)
    results["kmeans_sparse"] = rows


if __name__ == "__main__":
    main()
