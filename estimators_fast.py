"""estimators_fast.py -- the speed-ups and plumbing of estimators.py: nothing here changes what an
estimator computes, only how fast it runs and which input kinds it takes.
Imports: numpy, torch and the standard library only (estimators.py and this file lift out together).

    as_features, row_chunk, dense_rows, row_sq_norms, divide_rows   dense or torch sparse (COO/CSR) rows,
                              never densified
    mean_feature_variance, sq_distances, distances_to, cluster_sums   k-means in row chunks, centre sums as a GEMM
    as_numpy, as_vector, zscore, linear_scores         ElasticNet's and the probe's input checks and transform
    enet_coordinate_descent   ElasticNet's solver: the textbook update (estimators.enet_coordinate_descent_plain)
                              on a working set with a Gram matrix, stopped on the duality gap
    row_space, log1pexp, sigmoid   the probe's exact reduction when d > n and its stable link
"""
from __future__ import annotations

import warnings

import numpy as np
import torch


# k-means: input kinds (dense, torch COO/CSR), chunked distances, centre sums as a GEMM


def as_features(X, device=None) -> torch.Tensor:
    """A float tensor, dense or sparse CSR (COO is coalesced and converted, never densified)."""
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(X)
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"features must be a torch tensor or numpy array, got {type(X).__name__}")
    if X.dim() != 2:
        raise ValueError(f"features must be a 2-D matrix [N, d], got shape {tuple(X.shape)}")
    if device is not None:
        X = X.to(device)
    if not X.dtype.is_floating_point:
        X = X.float()
    if X.layout == torch.sparse_coo:
        X = X.coalesce().to_sparse_csr()
    elif X.layout == torch.strided:
        X = X.contiguous()
    elif X.layout != torch.sparse_csr:
        raise ValueError(f"features layout {X.layout} not supported; expected dense, COO or CSR")
    return X


def csr_parts(X: torch.Tensor):
    return X.crow_indices(), X.col_indices(), X.values()


def row_chunk(X: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Rows [start, end) of X as a matrix of the same kind (a CSR slice is built from the parts)."""
    if X.layout == torch.strided:
        return X[start:end]
    crow, col, val = csr_parts(X)
    a, b = int(crow[start]), int(crow[end])
    return torch.sparse_csr_tensor(crow[start:end + 1] - a, col[a:b], val[a:b],
                                   size=(end - start, X.shape[1]), check_invariants=False)


def dense_rows(X: torch.Tensor, idx) -> torch.Tensor:
    """Selected rows of X as a dense [len(idx), d] matrix (only these rows are densified)."""
    idx = [int(i) for i in idx]
    if X.layout == torch.strided:
        return X[idx].clone()
    crow, col, val = csr_parts(X)
    out = torch.zeros(len(idx), X.shape[1], dtype=X.dtype, device=X.device)
    for r, i in enumerate(idx):
        a, b = int(crow[i]), int(crow[i + 1])
        out[r, col[a:b]] = val[a:b]
    return out


def divide_rows(X: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """X / factors[:, None]; a CSR matrix stays CSR (its values divided by their row's factor)."""
    if X.layout == torch.strided:
        return X / factors[:, None]
    crow, col, val = csr_parts(X)
    row_of_nnz = torch.repeat_interleave(torch.arange(X.shape[0], device=X.device), crow.diff())
    return torch.sparse_csr_tensor(crow, col, val / factors[row_of_nnz], size=X.shape, check_invariants=False)


def row_sq_norms(X: torch.Tensor) -> torch.Tensor:
    """‖x_i‖² for every row, [N], accumulated in float64."""
    if X.layout == torch.strided:  # in row chunks: no float64 copy of the whole matrix
        return torch.cat([(X[s:s + 4096] * X[s:s + 4096]).sum(1, dtype=torch.float64)
                          for s in range(0, len(X), 4096)])
    crow, _, val = csr_parts(X)
    out = torch.zeros(X.shape[0], dtype=torch.float64, device=X.device)
    for s in range(0, X.shape[0], 65536):  # in row chunks: no per-non-zero temporaries
        e = min(X.shape[0], s + 65536)
        rows = torch.repeat_interleave(torch.arange(s, e, device=X.device), crow[s:e + 1].diff())
        out.index_add_(0, rows, val[int(crow[s]):int(crow[e])].double() ** 2)
    return out


def mean_feature_variance(X: torch.Tensor, x_sq: torch.Tensor) -> float:
    """mean_j Var(X[:, j]) = (Σ_ij x_ij² / N − Σ_j mean_j²) / d, without densifying sparse X."""
    N, d = X.shape
    if X.layout == torch.strided:
        col_mean = X.sum(0, dtype=torch.float64) / N
    else:
        _, col, val = csr_parts(X)
        col_mean = torch.zeros(d, dtype=torch.float64, device=X.device)
        for s in range(0, val.numel(), 1 << 22):
            col_mean.index_add_(0, col[s:s + (1 << 22)], val[s:s + (1 << 22)].double())
        col_mean.div_(N)
    return float((x_sq.sum() / N - (col_mean ** 2).sum()) / d)


def sq_distances(Xc: torch.Tensor, xc_sq: torch.Tensor, Ct: torch.Tensor, c_sq: torch.Tensor):
    """‖x − c‖² = ‖x‖² − 2x·c + ‖c‖² for a row chunk, [m, k], clipped at 0 (rounding).
    Ct is the contiguous transpose of the centres, [d, k]."""
    d2 = xc_sq[:, None] + c_sq[None, :]  # [m, k], float64
    return d2.add_(Xc @ Ct, alpha=-2.0).clamp_min_(0.0)  # Xc @ Ct: sparse @ dense for CSR chunks


def distances_to(X, x_sq, C, chunk_size):
    """Full [N, m] squared distances to a few centres m (used by k-means++ only)."""
    c_sq = (C * C).sum(1, dtype=torch.float64)
    Ct = C.t().contiguous()  # [d, m]
    return torch.cat([sq_distances(row_chunk(X, s, min(X.shape[0], s + chunk_size)),
                                    x_sq[s:s + chunk_size], Ct, c_sq)
                      for s in range(0, X.shape[0], chunk_size)])


def cluster_sums(X, Xt, labels, k, chunk_size):
    """M-step sums Σ_{i in c} x_i, [k, d], and counts, [k].

    Dense rows: a one-hot [m, k] matrix per row chunk, multiplied in (a GEMM is several times
    faster than index_add on CPU). Sparse X: the transposed CSR Xt [d, N] times a one-hot label
    matrix, a group of clusters at a time so the one-hot part stays bounded.
    """
    N, d = X.shape
    counts = torch.bincount(labels, minlength=k).to(torch.float64)
    sums = torch.zeros(k, d, dtype=X.dtype, device=X.device)
    arange_k = torch.arange(k, device=X.device)
    if X.layout == torch.strided:
        for s in range(0, N, chunk_size):
            onehot = (labels[s:s + chunk_size, None] == arange_k[None, :]).to(X.dtype)  # [m, k]
            sums.addmm_(onehot.t(), X[s:s + chunk_size])
        return sums, counts
    group = max(1, (chunk_size * 4096) // max(N, 1))  # one-hot part ≤ chunk_size·4096 entries
    for k0 in range(0, k, group):
        k1 = min(k, k0 + group)
        onehot = (labels[:, None] == torch.arange(k0, k1, device=X.device)[None, :]).to(X.dtype)
        sums[k0:k1] = (Xt @ onehot).t()  # [k1-k0, d]
    return sums, counts


# ElasticNet: input checks, standardisation, the accelerated coordinate descent


def as_numpy(X, name: str = "X") -> np.ndarray:
    """A dense float64 numpy matrix from numpy / dense or sparse torch input (sparse is densified:
    the labelled subset is small by design)."""
    if isinstance(X, torch.Tensor):
        X = (X.to_dense() if X.layout != torch.strided else X).detach().cpu().double().numpy()
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix [n, d], got shape {X.shape}")
    return X


def as_vector(y, n: int, name: str = "y") -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().double().numpy()
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries, expected {n} (one per row of X)")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return y


def zscore(X: np.ndarray):
    """(X − mean) / std per column in two passes (a constant column gets scale 1): Z, mean, std."""
    mean = X.mean(0)
    Z = X - mean  # [n, d]
    std = np.sqrt(np.einsum("ij,ij->j", Z, Z) / X.shape[0])
    scale = np.where(std > 0, std, 1.0)
    Z /= scale
    return Z, mean, scale


def linear_scores(model, X) -> np.ndarray:
    """X (standardised as at fit time) @ coef_ + intercept_, for ElasticNet and LogisticProbe."""
    X = as_numpy(X)
    if X.shape[1] != model.coef_.shape[0]:
        raise ValueError(f"X has {X.shape[1]} features, {type(model).__name__} was fit on {model.coef_.shape[0]}")
    return model._transform(X) @ model.coef_ + model.intercept_


def enet_coordinate_descent(X, y, l1, l2, *, max_iter=1000, tol=1e-4, w=None, polish_max=400):
    """Minimise ½‖y − Xw‖² + l1‖w‖₁ + ½ l2‖w‖² by cyclic coordinate descent (Friedman et al. 2010;
    scikit-learn's enet_coordinate_descent; its objective is n_samples times ElasticNet's).

    Update: w_j ← S(x_jᵀr + w_j‖x_j‖², l1) / (‖x_j‖² + l2), S the soft threshold. Stopping is
    sklearn's: after a sweep whose largest update is ≤ tol·max|w|, the duality gap (over all
    coordinates) is computed and the fit stops when gap ≤ tol·‖y‖². Three accelerations leave that
    certificate untouched: (1) sweeps visit a working set that only grows — coordinates that are
    non-zero or violate the KKT condition |x_jᵀr| ≤ l1, re-checked at every gap evaluation
    (glmnet's active set); at most max(16, |set|) of the worst violators join per check, so the
    set stays near the support instead of holding every feature correlated with y at w = 0; (2)
    sweeps use the working set's Gram matrix, grown block by block as coordinates join (sklearn's
    `precompute`, restricted to the working set), so an update costs O(|A|) instead of O(n) and
    c = X_Aᵀr is kept current instead of the residual; (3) when the sweeps settle on a support S
    of at most `polish_max` coordinates, one solve (X_SᵀX_S + l2·I) w_S = X_Sᵀy − l1·sign(w_S)
    is accepted if it keeps every sign: it is then the exact minimiser on that orthant face, so
    the objective cannot rise. Returns (w, gap, tol·‖y‖², sweeps)."""
    n, d = X.shape
    w = np.zeros(d) if w is None else np.array(w, dtype=np.float64).reshape(-1)
    if w.shape != (d,):
        raise ValueError(f"warm-start coefficients have {w.size} entries, X has {d} features")
    norm2 = np.einsum("ij,ij->j", X, X)  # [d]
    usable = norm2 > 0  # all-zero columns keep w_j = 0, as in sklearn
    w[~usable] = 0.0
    tol_abs = tol * float(y @ y)
    ws = np.zeros(0, dtype=np.int64)  # working set, in the order coordinates joined
    XA_rows = np.zeros((0, n))  # its columns of X as contiguous rows, [a, n]
    G = np.zeros((0, 0))  # its Gram matrix, [a, a]
    sweeps = 0
    while True:
        R = y - X @ w  # [n]
        XtR = X.T @ R  # [d]
        gap = _enet_gap(w, l1, l2, float(R @ R), float(R @ y), XtR)
        if gap <= tol_abs or sweeps >= max_iter:
            break
        grow = usable & ((np.abs(XtR) > l1) | (l1 == 0))
        grow[ws] = False
        new = np.flatnonzero(grow)
        n_add = max(16, ws.size)  # violators join at most doubling the working set per check
        if l1 > 0 and new.size > n_add:
            new = new[np.argsort(-np.abs(XtR[new]), kind="stable")[:n_add]]
        warm = w != 0  # non-zero (warm-start) coordinates always join
        warm[ws] = False
        new = np.union1d(new, np.flatnonzero(warm))
        if new.size:
            X_new = np.ascontiguousarray(X[:, new].T)  # [m, n]
            cross = XA_rows @ X_new.T  # [a, m]
            G = np.block([[G, cross], [cross.T, X_new @ X_new.T]])
            XA_rows = np.concatenate([XA_rows, X_new])
            ws = np.concatenate([ws, new])
        if ws.size == 0:
            break  # w = 0 already satisfies every KKT condition
        wA = w[ws].copy()
        c = XtR[ws].copy()  # X_Aᵀr, kept current as coordinates move
        sweeps = _cd_sweeps(G, c, wA, l1, l2, tol, max_iter - sweeps, sweeps)
        S = np.flatnonzero(wA)  # positions in the working set
        if 0 < S.size <= polish_max:
            w_S = _polish_support(G[np.ix_(S, S)], XA_rows[S] @ y, wA[S], l1, l2)
            if w_S is not None:
                wA[S] = w_S
        w[ws] = wA
    if gap > tol_abs:
        warnings.warn(f"ElasticNet did not converge in {max_iter} sweeps: duality gap {gap:.3e} "
                      f"> tolerance {tol_abs:.3e}; raise max_iter or tol", RuntimeWarning)
    return w, gap, tol_abs, sweeps


def _cd_sweeps(G, c, w, l1, l2, tol, budget, sweeps):
    """Cyclic sweeps with the active Gram matrix G [a, a] and c = X_Aᵀr, until the largest update
    of a sweep is ≤ tol·max|w| (sklearn's trigger for a gap check) or the budget is spent.
    c and w are updated in place. (Scalars are plain Python floats: this loop is the hot path.)"""
    rows = list(G)
    denom = [g + l2 for g in np.diag(G).tolist()]
    diag = np.diag(G).tolist()
    wl = w.tolist()
    item = c.item
    for _ in range(max(1, budget)):
        sweeps += 1
        d_w_max = w_max = 0.0
        for j in range(len(wl)):
            w_j = wl[j]
            tmp = item(j) + w_j * diag[j]
            if tmp > l1:
                new = (tmp - l1) / denom[j]
            elif tmp < -l1:
                new = (tmp + l1) / denom[j]
            else:
                new = 0.0
            if new != w_j:
                c -= (new - w_j) * rows[j]  # r moves by −Δ·x_j, so X_Aᵀr moves by −Δ·G[j]
                wl[j] = new
                step = abs(new - w_j)
                if step > d_w_max:
                    d_w_max = step
            if abs(new) > w_max:
                w_max = abs(new)
        if w_max == 0.0 or d_w_max / w_max <= tol:
            break
    w[:] = wl
    return sweeps


def _polish_support(G_SS, Xty_S, w_S, l1, l2):
    """Solve the stationarity equations on the support with signs fixed; return the solution,
    or None when a sign flips (see enet_coordinate_descent, acceleration 3)."""
    signs = np.sign(w_S)
    try:
        sol = np.linalg.solve(G_SS + l2 * np.eye(len(w_S)), Xty_S - l1 * signs)
    except np.linalg.LinAlgError:
        return None
    return sol if np.all(np.sign(sol) == signs) else None


def _enet_gap(w, l1, l2, R_norm2, Ry, XtR):
    """Duality gap of P(w) = ½‖y − Xw‖² + l1‖w‖₁ + ½ l2‖w‖² (scikit-learn's cd_fast gap_enet).

    l1 > 0: dual point v = R·min(1, l1/‖XᵀR − l2·w‖∞) (formulation A); l1 = 0 < l2: formulation B;
    l1 = l2 = 0 (OLS): the first-order condition ‖XᵀR‖²."""
    w_l2 = float(w @ w)
    if l1 == 0:
        norm = float(XtR @ XtR)
        if l2 == 0:
            return norm
        return R_norm2 + 0.5 * l2 * w_l2 - Ry + norm / (2 * l2)
    dual_norm = float(np.max(np.abs(XtR - l2 * w))) if w.size else 0.0
    scale = min(1.0, l1 / dual_norm) if dual_norm > 0 else 1.0
    primal = 0.5 * (R_norm2 + l2 * w_l2) + l1 * float(np.abs(w).sum())
    dual = -0.5 * scale ** 2 * (R_norm2 + l2 * w_l2) + scale * Ry
    return primal - dual


# The probe's numerics


def row_space(Z: np.ndarray):
    """The logistic probe's exact reduction when d > n: with the thin QR Zᵀ = Q·R, the optimal w lies
    in span(Q) (the loss only sees Zw and the penalty prefers the row space), so w = Q·z, Zw = Rᵀz and
    ‖w‖ = ‖z‖; Newton then works with m = min(n, d) unknowns: O(n·m²) time, O(m²) memory beyond Z.
    Returns (Q [d, n], Rᵀ [n, n]); (None, Z) when d <= n."""
    n, d = Z.shape
    if d <= n:
        return None, Z
    Q, R = np.linalg.qr(Z.T)  # Q [d, n], R [n, n]
    return Q, R.T


def log1pexp(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-log1pexp(-z))
