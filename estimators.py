"""estimators.py -- the from-scratch estimators SAERL reads its three properties with.

Owns: k-means (greedy k-means++ init, Lloyd) and choose_k; ElasticNet with fit_alpha; the L2 logistic
probe; then the metrics (silhouette, nested-CV predictions, spearman, r2, AUC, precision/recall, NMI).
Imports: numpy, torch, the standard library and estimators_fast.py (the speed-ups and plumbing: row
chunks, sparse CSR input, the working-set / Gram-matrix coordinate descent) -- nothing else from this
project, so the two files lift into another one as they are. Each estimator states its objective and
stopping rule and matches scikit-learn numerically (bench/bench_method.py measures parity and speed).

Public API
    kmeans(X, k, *, n_init, max_iter, tol, seed, device, init) -> (labels, centroids, inertia)
    l2_normalize_rows(X), silhouette_score(X, labels), choose_k(X, candidates, *, sample, seed)
    ElasticNet(alpha, l1_ratio, ...).fit/predict, enet_coordinate_descent_plain (the textbook
    update), alpha_grid(X, y), fit_alpha(X, y, ...) -> (model, info): α by k-fold CV,
    nested_cv_predictions(X, y): its held-out predictions by nested folds
    LogisticProbe(C).fit/predict_proba/decision_function
    spearman(a, b), r2_score(y, yhat), auc_score(y, s), binary_metrics(y, s), normalized_mutual_info(a, b)

Feature matrices are torch tensors, dense or torch sparse (COO or CSR); numpy arrays are accepted.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from estimators_fast import (as_features, as_numpy, as_vector, cluster_sums, dense_rows, distances_to, divide_rows,
                             enet_coordinate_descent, linear_scores, log1pexp, mean_feature_variance, row_chunk,
                             row_space, row_sq_norms, sigmoid, sq_distances, zscore)


# Diversity: k-means in SAE space (the textbook steps; plumbing in estimators_fast.py)
def kmeans(X, k: int, *, n_init: int = 1, max_iter: int = 100, tol: float = 1e-4, seed: int = 0,
           device=None, init=None, chunk_size: int = 4096, return_n_iter: bool = False):
    """Lloyd k-means with scikit-learn's semantics. Objective: inertia = Σ_i min_c ‖x_i − c‖². Init: greedy
    k-means++ (_kmeans_plusplus) or an explicit `init` [k, d]; the best of `n_init` runs (by inertia) is returned.
    Stopping: labels unchanged, or Σ_c ‖Δc‖² ≤ tol · mean_j Var(X[:, j]) (sklearn's _tolerance), or max_iter.
    Empty clusters: _relocate_empty. Distances ‖x‖² − 2x·c + ‖c‖² run in row chunks of `chunk_size`; sparse X
    (COO/CSR) is never densified (estimators_fast). Runs on X's device or `device`.

    X: [N, d] dense or sparse. Returns labels LongTensor [N], centroids [k, d] (X's dtype), inertia (float; also
    the iteration count when return_n_iter)."""
    X = as_features(X, device)
    N, d = X.shape
    if not 1 <= k <= N:
        raise ValueError(f"k={k} must be between 1 and the number of rows N={N}")
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"n_init={n_init} and max_iter={max_iter} must be >= 1")
    Xt = X.t().to_sparse_csr() if X.layout == torch.sparse_csr else None  # [d, N]
    x_sq = row_sq_norms(X)  # [N]
    tol_abs = tol * mean_feature_variance(X, x_sq) if tol > 0 else 0.0
    gen = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(n_init):
        if init is not None:
            centers = torch.as_tensor(init, dtype=X.dtype, device=X.device).clone()
            if centers.shape != (k, d):
                raise ValueError(f"init has shape {tuple(centers.shape)}, expected ({k}, {d})")
        else:
            centers, _ = _kmeans_plusplus(X, x_sq, k, gen, chunk_size)
        result = _lloyd(X, Xt, x_sq, centers, max_iter, tol_abs, chunk_size)
        if best is None or result[2] < best[2]:
            best = result
    labels, centers, inertia, n_iter = best
    return (labels, centers, inertia, n_iter) if return_n_iter else (labels, centers, inertia)


def _lloyd(X, Xt, x_sq, centers, max_iter, tol_abs, chunk_size):
    """Lloyd iterations from `centers` (stopping rule: kmeans); returns labels, centres, inertia,
    iterations run. A final E-step always runs so labels and inertia match the centres."""
    k = centers.shape[0]
    labels_old = None
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        labels, dist = _assign(X, x_sq, centers, chunk_size)
        sums, counts = cluster_sums(X, Xt, labels, k, chunk_size)
        _relocate_empty(X, sums, counts, labels, dist)
        filled = counts > 0
        new_centers = centers.clone()
        new_centers[filled] = sums[filled] / counts[filled, None].to(X.dtype)
        shift = float(((new_centers - centers) ** 2).sum(dtype=torch.float64))
        centers = new_centers
        if (labels_old is not None and torch.equal(labels, labels_old)) or shift <= tol_abs:
            break
        labels_old = labels
    labels, dist = _assign(X, x_sq, centers, chunk_size)
    return labels, centers, float(dist.sum()), n_iter


def _assign(X, x_sq, C, chunk_size):
    """E-step: nearest centre and its squared distance for every row, in row chunks."""
    N = X.shape[0]
    c_sq = (C * C).sum(1, dtype=torch.float64)
    Ct = C.t().contiguous()  # [d, k]
    labels = torch.empty(N, dtype=torch.long, device=X.device)
    dist = torch.empty(N, dtype=torch.float64, device=X.device)
    for s in range(0, N, chunk_size):
        e = min(N, s + chunk_size)
        d2 = sq_distances(row_chunk(X, s, e), x_sq[s:e], Ct, c_sq)  # [m, k]
        dist[s:e], labels[s:e] = d2.min(1)
    return labels, dist


def _relocate_empty(X, centers_sum, counts, labels, dist):
    """Re-seed empty clusters from the farthest points (scikit-learn's _relocate_empty_clusters). Points are
    ranked by their squared distance to the centre they were just assigned to (descending, ties by lower index);
    the i-th empty cluster (in increasing id) receives the i-th farthest point, which leaves its old cluster
    (its row is subtracted from that cluster's sum and count) and is relabelled. If every point sits on its
    centre (more clusters than distinct points) nothing moves and an empty cluster keeps its previous centre."""
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if not empty or float(dist.max()) == 0.0:
        return
    order = torch.argsort(-dist, stable=True)[:len(empty)].tolist()
    rows = dense_rows(X, order)
    for new_c, p, row in zip(empty, order, rows):
        old_c = int(labels[p])
        centers_sum[old_c] -= row
        counts[old_c] -= 1
        centers_sum[new_c] = row
        counts[new_c] = 1
        labels[p] = new_c


def _kmeans_plusplus(X, x_sq, k, gen, chunk_size):
    """Greedy k-means++ (scikit-learn's _kmeans_plusplus): the first centre uniformly at random;
    then, per centre, 2 + ⌊ln k⌋ candidates drawn with probability ∝ D(x)² and the one that
    lowers the potential Σ_i min_c D(x_i, c)² most is kept. Returns centres [k, d] and row ids."""
    N = X.shape[0]
    n_local_trials = 2 + int(math.log(k))
    first = int(torch.randint(N, (1,), generator=gen))
    ids = [first]
    centers = torch.empty(k, X.shape[1], dtype=X.dtype, device=X.device)
    centers[0] = dense_rows(X, [first])[0]
    closest = distances_to(X, x_sq, centers[:1], chunk_size)[:, 0]  # [N]
    potential = float(closest.sum())
    for c in range(1, k):
        draws = torch.rand(n_local_trials, generator=gen, dtype=torch.float64) * potential
        cum = torch.cumsum(closest, 0).cpu()
        cand = torch.searchsorted(cum, draws).clamp_max_(N - 1)  # [trials]
        cand_rows = dense_rows(X, cand)  # [trials, d]
        d_cand = torch.minimum(distances_to(X, x_sq, cand_rows, chunk_size), closest[:, None])
        pots = d_cand.sum(0)  # [trials]
        best = int(torch.argmin(pots))
        potential = float(pots[best])
        closest = d_cand[:, best].contiguous()
        centers[c] = cand_rows[best]
        ids.append(int(cand[best]))
    return centers, ids


def l2_normalize_rows(X, eps: float = 1e-12) -> torch.Tensor:
    """Rows scaled to unit L2 norm (zero rows stay zero); dense stays dense, sparse stays CSR."""
    X = as_features(X)
    norms = row_sq_norms(X).sqrt().clamp_min(eps).to(X.dtype)  # [N]
    return divide_rows(X, norms)  # X / norms[:, None], for CSR too


def choose_k(X, candidates=(8, 16, 32, 64), *, sample: int = 2000, seed: int = 0, **kmeans_kw):
    """"--k auto": run kmeans for each candidate k on all rows, score each clustering by the
    silhouette on one fixed random sample of `sample` rows, return (best k, {k: silhouette}).
    Ties go to the smaller k. Candidates ≥ N are skipped."""
    X = as_features(X)
    N = X.shape[0]
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(N, generator=gen)[:min(sample, N)].sort().values
    Xs = dense_rows(X, idx.tolist()) if X.layout != torch.strided else X[idx]
    scores = {}
    for k in sorted(set(int(c) for c in candidates)):
        if not 2 <= k < N:
            continue
        labels, _, _ = kmeans(X, k, seed=seed, **kmeans_kw)
        sub = labels[idx.to(labels.device)]
        scores[k] = silhouette_score(Xs, sub) if len(torch.unique(sub)) > 1 else -1.0
    if not scores:
        raise ValueError(f"no candidate k in {list(candidates)} fits N={N} rows")
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


# Difficulty: ElasticNet proxy
def enet_coordinate_descent_plain(X, y, l1, l2, *, sweeps: int = 1000, tol: float = 1e-10):
    """The textbook algorithm ElasticNet runs, without its accelerations (Friedman et al. 2010):
    minimise ½‖y − Xw‖² + l1‖w‖₁ + ½ l2‖w‖² by cycling over the coordinates j = 1..d:

        ρ_j = x_jᵀ(r + x_j w_j)                      (r = y − Xw, the residual)
        w_j ← S(ρ_j, l1) / (‖x_j‖² + l2),           S(z, t) = sign(z)·max(|z| − t, 0)

    until a whole sweep moves no coefficient by more than tol. O(n·d) per sweep; the solver that
    ElasticNet uses (estimators_fast.enet_coordinate_descent) makes the same update on a
    working set with a Gram matrix and stops on the duality gap. Returns w [d]."""
    X = np.asarray(X, dtype=np.float64)
    r = np.asarray(y, dtype=np.float64).copy()  # residual at w = 0
    w = np.zeros(X.shape[1])
    norm2 = (X * X).sum(0)  # [d]
    for _ in range(sweeps):
        largest_step = 0.0
        for j in range(X.shape[1]):
            if norm2[j] == 0:
                continue
            rho = X[:, j] @ r + norm2[j] * w[j]
            new = np.sign(rho) * max(abs(rho) - l1, 0.0) / (norm2[j] + l2)
            r -= (new - w[j]) * X[:, j]
            largest_step = max(largest_step, abs(new - w[j]))
            w[j] = new
        if largest_step <= tol:
            break
    return w


class ElasticNet:
    """Linear regression with combined L1/L2 penalty, scikit-learn's objective:

        1/(2n)‖y − Xw − b‖² + α·ρ‖w‖₁ + ½·α·(1 − ρ)‖w‖²,   ρ = l1_ratio,

    solved by enet_coordinate_descent (sklearn's duality-gap stopping rule; `dual_gap_` is reported
    divided by n, as sklearn does). The intercept is fitted by centring X and y (it is not
    penalised). standardize=True (default) z-scores each feature with the training mean and
    standard deviation (a constant feature gets scale 1) before the fit: coef_ lives in the
    standardised space and predict applies the same transform. fit(X, y, coef_init=...) warm starts."""

    def __init__(self, alpha=1.0, l1_ratio=0.5, max_iter=1000, tol=1e-4, fit_intercept=True, standardize=True):
        if alpha < 0 or not 0 <= l1_ratio <= 1:
            raise ValueError(f"need alpha >= 0 and 0 <= l1_ratio <= 1, got {alpha}, {l1_ratio}")
        self.alpha, self.l1_ratio = float(alpha), float(l1_ratio)
        self.max_iter, self.tol = int(max_iter), float(tol)
        self.fit_intercept, self.standardize = fit_intercept, standardize

    def _transform(self, X: np.ndarray) -> np.ndarray:
        return (X - self.shift_) / self.scale_ if self.standardize else X

    def fit(self, X, y, coef_init=None):
        X = as_numpy(X)
        y = as_vector(y, X.shape[0])
        n, d = X.shape
        if self.standardize:
            Zc, self.shift_, self.scale_ = zscore(X)  # centred by construction
            z_mean = np.zeros(d)
        else:
            z_mean = X.mean(0) if self.fit_intercept else np.zeros(d)
            Zc = X - z_mean if self.fit_intercept else X
        y_mean = float(y.mean()) if self.fit_intercept else 0.0
        l1 = self.alpha * self.l1_ratio * n
        l2 = self.alpha * (1.0 - self.l1_ratio) * n
        w, gap, _, n_iter = enet_coordinate_descent(Zc, y - y_mean, l1, l2, max_iter=self.max_iter,
                                                    tol=self.tol, w=coef_init)
        self.coef_ = w
        self.intercept_ = y_mean - float(z_mean @ w)
        self.dual_gap_ = gap / n
        self.n_iter_ = n_iter
        return self

    def predict(self, X) -> np.ndarray:
        return linear_scores(self, X)


def alpha_grid(X, y, *, l1_ratio=0.5, n_alphas=30, eps=1e-3, standardize=True, fit_intercept=True) -> np.ndarray:
    """scikit-learn's _alpha_grid: α_max = max_j |x_jᵀ(y − ȳ)| / (n·ρ) on the (standardised, centred)
    design -- the smallest α with w = 0 -- then n_alphas log-spaced values down to eps·α_max."""
    X = as_numpy(X)
    y = as_vector(y, X.shape[0])
    if standardize:
        std = X.std(0)
        X = (X - X.mean(0)) / np.where(std > 0, std, 1.0)
    if fit_intercept:
        X = X - X.mean(0)
        y = y - y.mean()
    alpha_max = float(np.max(np.abs(X.T @ y))) / (X.shape[0] * max(l1_ratio, 1e-3))
    if alpha_max <= np.finfo(np.float64).resolution:
        return np.full(n_alphas, np.finfo(np.float64).resolution)
    return np.geomspace(alpha_max, alpha_max * eps, num=n_alphas)


def kfold(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """A seeded permutation of range(n) cut into `folds` parts of sizes differing by at most one."""
    if not 2 <= folds <= n:
        raise ValueError(f"{folds} folds of {n} rows: need 2 <= folds <= rows")
    return np.array_split(np.random.default_rng(seed).permutation(n), folds)


def fit_alpha(X, y, *, l1_ratio=0.5, n_alphas=30, eps=1e-3, folds=5, seed=0, max_iter=1000, tol=1e-4, standardize=True):
    """Choose α by k-fold cross-validation (scikit-learn's ElasticNetCV), then refit on all rows. The grid is
    alpha_grid on all rows (largest α first). For each of `folds` seeded folds the path is fit on the other folds,
    each α warm-starting from the previous one, and scored by its MSE on the fold. The α with the lowest mean MSE
    wins (ties: the larger α, the sparser model) and is refit on all rows. info: alphas, cv_mse (mean over folds,
    per α), cv_mse_folds [folds, α], alpha, folds, n."""
    X = as_numpy(X)
    y = as_vector(y, X.shape[0])
    alphas = alpha_grid(X, y, l1_ratio=l1_ratio, n_alphas=n_alphas, eps=eps, standardize=standardize)
    parts = kfold(X.shape[0], folds, seed)
    mse = np.zeros((folds, len(alphas)))  # [folds, α]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # path points may stop at max_iter
        for f, held in enumerate(parts):
            train = np.concatenate([p for g, p in enumerate(parts) if g != f])
            coef = None
            for i, a in enumerate(alphas):
                m = ElasticNet(a, l1_ratio, max_iter, tol, standardize=standardize)
                m.fit(X[train], y[train], coef_init=coef)
                coef = m.coef_
                mse[f, i] = np.mean((m.predict(X[held]) - y[held]) ** 2)
    best = int(np.argmin(mse.mean(0)))  # argmin takes the first minimum, i.e. the largest α
    model = ElasticNet(alphas[best], l1_ratio, max_iter, tol, standardize=standardize).fit(X, y)
    info = dict(alphas=alphas.tolist(), cv_mse=mse.mean(0).tolist(), cv_mse_folds=mse.tolist(),
                alpha=float(alphas[best]), folds=folds, n=int(X.shape[0]))
    return model, info


# Quality: L2 logistic probe
class LogisticProbe:
    """L2-regularised logistic regression, scikit-learn's convention:

        minimise  C · Σ_i [log(1 + e^{η_i}) − y_i·η_i] + ½‖w‖²,   η = Xw + b, b unpenalised,

    solved by damped Newton (IRLS with a backtracking line search) until the largest Newton step
    is ≤ tol·(1 + max|θ|); when d > n, Newton runs on the exact n-dimensional reduction of
    estimators_fast.row_space. standardize and coef_'s space: as in ElasticNet."""

    def __init__(self, C=1.0, max_iter=100, tol=1e-8, standardize=True):
        if C <= 0:
            raise ValueError(f"C must be > 0, got {C}")
        self.C, self.max_iter, self.tol = float(C), int(max_iter), float(tol)
        self.standardize = standardize

    def _transform(self, X: np.ndarray) -> np.ndarray:
        return (X - self.shift_) / self.scale_ if self.standardize else X

    def fit(self, X, y):
        X = as_numpy(X)
        y = as_vector(y, X.shape[0])
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("LogisticProbe labels must be 0 or 1")
        if y.min() == y.max():
            raise ValueError(f"LogisticProbe needs both classes, all {X.shape[0]} labels are {int(y[0])}")
        Z = X
        if self.standardize:
            Z, self.shift_, self.scale_ = zscore(X)  # [n, d]
        Q, F = row_space(Z)  # Z = F·Qᵀ with F [n, min(n, d)]; Q is None when d <= n (F = Z)
        theta, self.n_iter_ = self._newton(F, y)
        z, self.intercept_ = theta[:-1], float(theta[-1])
        self.coef_ = Q @ z if Q is not None else z
        return self

    def _newton(self, F, y):
        n, m = F.shape
        A = np.hstack([F, np.ones((n, 1))])  # [n, m+1]; last column is the intercept
        penalty = np.ones(m + 1)
        penalty[-1] = 0.0  # intercept unpenalised
        theta = np.zeros(m + 1)

        def objective(t):
            eta = A @ t
            return self.C * float(np.sum(log1pexp(eta) - y * eta)) + 0.5 * float((penalty * t) @ t)

        f = objective(theta)
        for it in range(1, self.max_iter + 1):
            p = sigmoid(A @ theta)  # [n]
            grad = self.C * (A.T @ (p - y)) + penalty * theta
            H = self.C * (A.T * (p * (1 - p))) @ A + np.diag(penalty)  # [m+1, m+1]
            H[-1, -1] += 1e-12 * n  # guards only the all-saturated corner case
            step = np.linalg.solve(H, grad)
            t = 1.0
            while True:  # Armijo backtracking; Newton's full step is accepted near the optimum
                cand = theta - t * step
                f_new = objective(cand)
                if f_new <= f - 1e-4 * t * float(grad @ step) or t < 1e-10:
                    break
                t *= 0.5
            theta, f = cand, f_new
            if t * np.max(np.abs(step)) <= self.tol * (1.0 + np.max(np.abs(theta))):
                return theta, it
        warnings.warn(f"LogisticProbe did not converge in {self.max_iter} Newton steps", RuntimeWarning)
        return theta, self.max_iter

    def decision_function(self, X) -> np.ndarray:
        return linear_scores(self, X)

    def predict_proba(self, X) -> np.ndarray:
        """P(y = 1 | x) for every row, [n]."""
        return sigmoid(self.decision_function(X))

# Metrics


def spearman(a, b) -> float:
    """Spearman's ρ: Pearson correlation of average ranks (NaN when either side is constant)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"spearman needs equal lengths, got {a.size} and {b.size}")
    ra, rb = _average_ranks(a) - (a.size + 1) / 2, _average_ranks(b) - (b.size + 1) / 2
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denom if denom > 0 else float("nan")


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of the ranks they span."""
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    ranks = np.empty(len(a))
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def r2_score(y, yhat) -> float:
    """1 − Σ(y − ŷ)² / Σ(y − ȳ)² (NaN for constant y)."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    yhat = np.asarray(yhat, dtype=np.float64).reshape(-1)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - yhat) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


def auc_score(y_true, scores) -> float:
    """ROC AUC by the Mann-Whitney statistic with average ranks: P(score⁺ > score⁻) + ½P(tie)."""
    y = np.asarray(y_true).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return (float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def binary_metrics(y_true, scores, threshold: float = 0.5) -> dict:
    """precision and recall of `scores >= threshold` for class 1, and the threshold-free AUC."""
    y = np.asarray(y_true).reshape(-1).astype(bool)
    pred = np.asarray(scores, dtype=np.float64).reshape(-1) >= threshold
    tp = int((pred & y).sum())
    precision = tp / int(pred.sum()) if pred.any() else float("nan")
    recall = tp / int(y.sum()) if y.any() else float("nan")
    return dict(precision=precision, recall=recall, auc=auc_score(y, scores))


def grouped_holdout_metrics(X, y, groups, *, seed: int, C: float = 1.0) -> dict:
    """Precision/recall/AUC, for class 0, of a LogisticProbe(C) fit on 80% of the label groups and
    scored on the held-out 20% (groups chosen by a permutation seeded seed + 2).

    In SAERL a group is an original problem with its corrupted copies: they fall on the same side of
    the split, so the metric does not reward telling a problem from its own near-duplicate."""
    names = sorted(set(groups))
    order = np.random.default_rng(seed + 2).permutation(len(names))
    held = {names[i] for i in order[: max(1, len(names) // 5)]}
    test = np.array([i for i, g in enumerate(groups) if g in held])
    train = np.array([i for i, g in enumerate(groups) if g not in held])
    if len(set(y[train].tolist())) < 2 or len(set(y[test].tolist())) < 2:
        return {"note": "held-out split lacks one class; no metrics", "n": int(len(test))}
    probe = LogisticProbe(C=C).fit(X[train], y[train])
    # the probe's job is to find the bad rows: precision/recall of label 0; NaN becomes None (strict JSON)
    m = binary_metrics((y[test] == 0).astype(int), 1.0 - probe.predict_proba(X[test]))
    return ({k: (float(v) if math.isfinite(float(v)) else None) for k, v in m.items()}
            | {"n": int(len(test)), "negatives": int((y[test] == 0).sum())})


def normalized_mutual_info(a, b) -> float:
    """NMI(a, b) = 2·I(a; b) / (H(a) + H(b)) over two labelings of the same items (scikit-learn's
    default arithmetic-mean normaliser); 0 when both labelings are constant."""
    n = len(a)
    ca, cb, joint = {}, {}, {}
    for x, y in zip(a, b):
        ca[x] = ca.get(x, 0) + 1
        cb[y] = cb.get(y, 0) + 1
        joint[(x, y)] = joint.get((x, y), 0) + 1
    mi = sum(c / n * math.log(c * n / (ca[x] * cb[y])) for (x, y), c in joint.items())
    ha = -sum(c / n * math.log(c / n) for c in ca.values())
    hb = -sum(c / n * math.log(c / n) for c in cb.values())
    return 0.0 if ha + hb == 0 else float(2 * mi / (ha + hb))


def silhouette_score(X, labels, *, chunk_size: int = 1024) -> float:
    """Mean silhouette (b − a) / max(a, b) with Euclidean distances; a = mean distance to the own
    cluster (self excluded), b = smallest mean distance to another cluster; 0 for singletons
    (scikit-learn's convention). O(n²) time, O(chunk_size · n) memory: use it on a sample."""
    X = as_features(X)
    labels = torch.as_tensor(labels, device=X.device).long()
    n = X.shape[0]
    k = int(labels.max()) + 1
    sizes = torch.bincount(labels, minlength=k).double()  # [k]
    if int((sizes > 0).sum()) < 2:
        raise ValueError("silhouette needs at least two non-empty clusters")
    Xd = X.to_dense() if X.layout != torch.strided else X  # a sample: small by contract
    Xd = Xd.double()
    x_sq = (Xd ** 2).sum(1)
    Xt = Xd.t().contiguous()  # [d, n]
    onehot = torch.nn.functional.one_hot(labels, k).double()  # [n, k]
    total = 0.0
    for s in range(0, n, chunk_size):
        d = sq_distances(Xd[s:s + chunk_size], x_sq[s:s + chunk_size], Xt, x_sq).sqrt()  # [m, n]
        per_cluster = d @ onehot  # [m, k] summed distances
        own = labels[s:s + chunk_size]
        own_size = sizes[own]
        a = per_cluster.gather(1, own[:, None])[:, 0] / (own_size - 1).clamp_min(1)
        mean_other = per_cluster / sizes.clamp_min(1)[None, :]
        mean_other[torch.arange(len(own)), own] = float("inf")
        mean_other[:, sizes == 0] = float("inf")
        b = mean_other.min(1).values
        sil = (b - a) / torch.maximum(a, b).clamp_min(1e-300)
        total += float(torch.where(own_size > 1, sil, torch.zeros_like(sil)).sum())
    return total / n


def nested_cv_predictions(X, y, *, folds=5, seed=0, **fit_kw) -> tuple[np.ndarray, list[float]]:
    """Out-of-fold predictions of fit_alpha's whole procedure (nested cross-validation): each outer
    fold is predicted by the model that fit_alpha (its α chosen by its own inner k-fold CV on the
    other outer folds only) returns, so no row's prediction has seen that row, not even through the
    choice of α. Returns (predictions [n], the α each outer fold chose)."""
    X = as_numpy(X)
    y = as_vector(y, X.shape[0])
    pred = np.empty(X.shape[0])
    alphas = []
    for f, held in enumerate(kfold(X.shape[0], folds, seed)):
        train = np.setdiff1d(np.arange(X.shape[0]), held)
        model, info = fit_alpha(X[train], y[train], folds=folds, seed=seed + 1 + f, **fit_kw)
        pred[held] = model.predict(X[held])
        alphas.append(info["alpha"])
    return pred, alphas
