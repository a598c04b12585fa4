"""Specification of estimators.py: k-means, silhouette, choose_k, ElasticNet, the logistic probe and
the metrics. Expected values come from hand derivations or slow obvious re-implementations written
here, never from the code under test."""
import math

import numpy as np
import pytest
import torch

import estimators
from conftest import assert_close_to_scale


# ------------------------------------------------------------------------------------------------
# k-means
# ------------------------------------------------------------------------------------------------


def blobs(n_per=40, k=4, d=6, spread=0.2, sep=10.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * sep
    X = np.concatenate([c + spread * rng.normal(size=(n_per, d)) for c in centres])
    truth = np.repeat(np.arange(k), n_per)
    return X, truth


def same_partition(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return bool(np.array_equal(a[:, None] == a[None, :], b[:, None] == b[None, :]))


def brute_inertia(X, centres, labels):
    return sum(float(((X[i] - centres[labels[i]]) ** 2).sum()) for i in range(len(X)))


def test_kmeans_recovers_separated_blobs():
    X, truth = blobs()
    labels, centres, inertia = estimators.kmeans(torch.tensor(X), 4, seed=1)
    assert same_partition(labels.numpy(), truth)


def test_kmeans_inertia_and_labels_match_brute_force():
    X = np.random.default_rng(3).normal(size=(150, 5))
    labels, centres, inertia = estimators.kmeans(torch.tensor(X), 6, seed=0, max_iter=3)
    C = centres.numpy()
    nearest = [int(np.argmin([((x - c) ** 2).sum() for c in C])) for x in X]
    assert labels.tolist() == nearest  # final E-step even when max_iter stops Lloyd early
    assert inertia == pytest.approx(brute_inertia(X, C, nearest), rel=1e-10)


def test_kmeans_plusplus_seeds_one_centre_per_blob():
    X, truth = blobs(n_per=30, k=5, spread=0.01, sep=100.0, seed=2)
    Xt = torch.tensor(X)
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        _, ids = estimators._kmeans_plusplus(Xt, (Xt ** 2).sum(1), 5, gen, 64)
        assert sorted(truth[ids].tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("k,trials", [(2, 2), (7, 3), (8, 4), (21, 5)])
def test_kmeans_plusplus_draws_2_plus_floor_ln_k_candidates(k, trials):
    # The generator after seeding must have advanced by exactly one first-centre draw plus
    # `trials` uniforms per further centre (2 + ⌊ln k⌋: ln 7 = 1.95, ln 8 = 2.08, ln 21 = 3.04).
    X = torch.tensor(np.random.default_rng(0).normal(size=(60, 3)))
    gen = torch.Generator().manual_seed(11)
    estimators._kmeans_plusplus(X, (X ** 2).sum(1), k, gen, 16)
    ref = torch.Generator().manual_seed(11)
    torch.randint(60, (1,), generator=ref)
    for _ in range(k - 1):
        torch.rand(trials, generator=ref, dtype=torch.float64)
    assert torch.equal(torch.rand(4, generator=gen), torch.rand(4, generator=ref))


def test_empty_cluster_takes_the_farthest_point():
    # Centre 2 starts far from all data, so it is empty after the first E-step. Distances to the
    # assigned centres are 1, 0, 4 | 1, 0, 1: the farthest point is x = 3, which becomes centre 2;
    # cluster 0 keeps {0, 1} (mean 0.5). Final inertia 0.25 + 0.25 + 0 + 1 + 0 + 1 = 2.5.
    X = torch.tensor([[0.0], [1.0], [3.0], [10.0], [11.0], [12.0]], dtype=torch.float64)
    init = torch.tensor([[1.0], [11.0], [1000.0]], dtype=torch.float64)
    labels, centres, inertia = estimators.kmeans(X, 3, init=init)
    assert labels.tolist() == [0, 0, 2, 1, 1, 1]
    assert centres[:, 0].tolist() == [0.5, 11.0, 3.0]
    assert inertia == pytest.approx(2.5)


def test_more_clusters_than_distinct_points_is_not_an_error():
    X = torch.tensor([[0.0], [0.0], [5.0], [5.0]], dtype=torch.float64)
    init = torch.tensor([[0.0], [5.0], [100.0]], dtype=torch.float64)
    labels, centres, inertia = estimators.kmeans(X, 3, init=init)
    assert labels.tolist() == [0, 0, 1, 1] and inertia == 0.0
    assert float(centres[2, 0]) == 100.0  # nothing to relocate: the empty centre stays


def random_sparse(n=240, d=400, nnz=12, seed=0):
    rng = np.random.default_rng(seed)
    dense = np.zeros((n, d))
    for i in range(n):
        cols = rng.choice(d, nnz, replace=False)
        dense[i, cols] = rng.random(nnz) + (i % 3 == 0) * 2.0 * (cols < 40)
    return dense


def test_sparse_input_gives_the_dense_result():
    dense = torch.tensor(random_sparse())
    out_dense = estimators.kmeans(dense, 5, seed=4, chunk_size=50)
    for sparse in (dense.to_sparse_coo(), dense.to_sparse_csr()):
        labels, centres, inertia = estimators.kmeans(sparse, 5, seed=4, chunk_size=50)
        assert torch.equal(labels, out_dense[0])
        assert torch.allclose(centres, out_dense[1], atol=1e-12)
        assert inertia == pytest.approx(out_dense[2], rel=1e-10)


def test_l2_normalize_rows_dense_and_sparse():
    dense = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    expected = np.array([[0.6, 0.8, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert np.allclose(estimators.l2_normalize_rows(torch.tensor(dense)).numpy(), expected)
    out = estimators.l2_normalize_rows(torch.tensor(dense).to_sparse_coo())
    assert out.layout == torch.sparse_csr and np.allclose(out.to_dense().numpy(), expected)


def test_silhouette_matches_a_loop():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(30, 3))
    labels = np.array([0] * 12 + [1] * 10 + [2] * 7 + [3])  # cluster 3 is a singleton
    D = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    total = 0.0
    for i in range(30):
        own = labels == labels[i]
        if own.sum() == 1:
            continue
        a = D[i, own].sum() / (own.sum() - 1)
        b = min(D[i, labels == c].mean() for c in set(labels) if c != labels[i])
        total += (b - a) / max(a, b)
    expected = total / 30
    assert estimators.silhouette_score(torch.tensor(X), torch.tensor(labels)) == pytest.approx(expected)


def test_choose_k_finds_three_blobs():
    X, _ = blobs(n_per=30, k=3, spread=0.3, seed=7)
    best, scores = estimators.choose_k(torch.tensor(X), [2, 3, 5, 8], sample=60)
    assert best == 3 and set(scores) == {2, 3, 5, 8}


# ------------------------------------------------------------------------------------------------
# ElasticNet
# ------------------------------------------------------------------------------------------------


def soft(z, t):
    return np.sign(z) * max(abs(z) - t, 0.0)


def test_elasticnet_closed_form_on_orthogonal_design():
    # With orthogonal columns the objective separates per coordinate:
    # min_w 1/(2n)(‖x_j‖² w² − 2 w x_jᵀy) + αρ|w| + ½α(1−ρ)w²
    # ⇒ w_j = S(x_jᵀy / n, αρ) / (‖x_j‖²/n + α(1−ρ)).
    rng = np.random.default_rng(0)
    n, d, alpha, rho = 50, 6, 0.3, 0.7
    Q, _ = np.linalg.qr(rng.normal(size=(n, d)))
    X = Q * np.array([7.0, 5.0, 3.0, 2.0, 1.0, 0.5])  # orthogonal, unequal column norms
    y = X @ np.array([1.0, -0.5, 0.2, 0.0, 2.0, -3.0]) + 0.1 * rng.normal(size=n)
    expected = [soft(X[:, j] @ y / n, alpha * rho) / (X[:, j] @ X[:, j] / n + alpha * (1 - rho))
                for j in range(d)]
    m = estimators.ElasticNet(alpha, rho, tol=1e-12, fit_intercept=False, standardize=False).fit(X, y)
    assert np.allclose(m.coef_, expected, atol=1e-10)
    assert 0 < sum(e == 0 for e in expected) < d  # the threshold is exercised both ways


@pytest.mark.parametrize("alpha", [0.0, 1e-10])
def test_elasticnet_tends_to_least_squares(alpha):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 5)) + 3.0
    y = X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 4.0 + rng.normal(size=80)
    sol, *_ = np.linalg.lstsq(np.hstack([X, np.ones((80, 1))]), y, rcond=None)
    m = estimators.ElasticNet(alpha, 0.5, tol=1e-10, max_iter=10000, standardize=False).fit(X, y)
    assert np.allclose(m.coef_, sol[:5], atol=1e-6) and m.intercept_ == pytest.approx(sol[5])


@pytest.mark.parametrize("shape", [(120, 30), (40, 90)])
def test_elasticnet_satisfies_kkt_and_small_gap(shape):
    n, d = shape
    rng = np.random.default_rng(2)
    X = rng.normal(size=(n, d)) @ (np.eye(d) + 0.3 * rng.normal(size=(d, d)))  # correlated
    y = X[:, :4] @ np.array([2.0, -1.0, 1.5, 0.5]) + rng.normal(size=n)
    alpha, rho = 0.05, 0.6
    m = estimators.ElasticNet(alpha, rho, tol=1e-10, max_iter=5000, standardize=False).fit(X, y)
    Xc, yc = X - X.mean(0), y - y.mean()
    g = Xc.T @ (yc - Xc @ m.coef_) / n - alpha * (1 - rho) * m.coef_  # KKT: g ∈ αρ ∂|w|
    nz = m.coef_ != 0
    assert np.allclose(g[nz], alpha * rho * np.sign(m.coef_[nz]), atol=1e-6)
    assert np.all(np.abs(g[~nz]) <= alpha * rho + 1e-6)
    assert 0 <= m.dual_gap_ <= 1e-10 * (yc @ yc) / n
    assert m.intercept_ == pytest.approx(y.mean() - X.mean(0) @ m.coef_)


def test_elasticnet_standardize_is_zscore_then_fit():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(60, 4)) * np.array([1.0, 10.0, 0.1, 3.0]) + 5.0
    X[:, 3] = 2.0  # constant feature: scale 1, coefficient 0
    y = X[:, 0] + 0.2 * X[:, 1] + rng.normal(size=60)
    std = X.std(0)
    std[3] = 1.0
    Z = (X - X.mean(0)) / std
    a = estimators.ElasticNet(0.1, 0.5, tol=1e-12).fit(X, y)
    b = estimators.ElasticNet(0.1, 0.5, tol=1e-12, standardize=False).fit(Z, y)
    assert np.allclose(a.coef_, b.coef_, atol=1e-10) and a.coef_[3] == 0
    assert np.allclose(a.predict(X[:7]), Z[:7] @ b.coef_ + b.intercept_)


def test_fit_alpha_path_starts_at_alpha_max():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(100, 20))
    y = X[:, 0] - X[:, 1] + 0.5 * rng.normal(size=100)
    model, info = estimators.fit_alpha(X, y, l1_ratio=0.5, n_alphas=12, seed=0)
    Z = (X - X.mean(0)) / X.std(0)  # alpha_grid on all rows, by hand
    a_max = np.max(np.abs(Z.T @ (y - y.mean()))) / (100 * 0.5)
    assert estimators.alpha_grid(X, y, n_alphas=12)[0] == pytest.approx(a_max)
    assert not estimators.ElasticNet(a_max, 0.5).fit(X, y).coef_.any()
    assert estimators.ElasticNet(0.95 * a_max, 0.5).fit(X, y).coef_.any()
    assert info["alpha"] == info["alphas"][int(np.argmin(info["cv_mse"]))]
    assert info["folds"] == 5 and np.shape(info["cv_mse_folds"]) == (5, 12)
    assert info["alpha"] < info["alphas"][0]  # the signal is real: some shrinkage below α_max wins


def _cv_data(seed=7, n=60, p=8):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    y = X[:, 0] - 0.5 * X[:, 1] + 0.8 * rng.normal(size=n)
    return X, y


def test_fit_alpha_is_kfold_cv_by_the_slow_obvious_route():
    # reference: every (fold, α) fit from scratch (no warm start along the path) to a tight tolerance,
    # the held-out MSE averaged over folds by hand, the argmin taken by hand
    X, y = _cv_data()
    model, info = estimators.fit_alpha(X, y, n_alphas=10, folds=4, seed=3, tol=1e-10, max_iter=100_000)
    perm = np.random.default_rng(3).permutation(len(y))
    folds = [perm[0:15], perm[15:30], perm[30:45], perm[45:60]]
    alphas = estimators.alpha_grid(X, y, n_alphas=10)
    mse = np.zeros((4, 10))
    for f, held in enumerate(folds):
        train = np.setdiff1d(np.arange(len(y)), held)
        for i, a in enumerate(alphas):
            m = estimators.ElasticNet(a, 0.5, tol=1e-12, max_iter=100_000).fit(X[train], y[train])
            mse[f, i] = np.mean((m.predict(X[held]) - y[held]) ** 2)
    assert_close_to_scale(np.array(info["cv_mse_folds"]), mse, rel=1e-6)
    assert info["alpha"] == pytest.approx(alphas[int(np.argmin(mse.mean(0)))])
    refit = estimators.ElasticNet(info["alpha"], 0.5, tol=1e-12, max_iter=100_000).fit(X, y)
    assert_close_to_scale(model.coef_, refit.coef_, rel=1e-6)


def test_fit_alpha_matches_sklearn_elasticnetcv_on_the_same_folds():
    sklearn = pytest.importorskip("sklearn.linear_model")
    X, y = _cv_data(seed=8, n=80, p=10)
    Z = (X - X.mean(0)) / X.std(0)  # sklearn's ElasticNetCV does not standardise: compare on z-scores
    _, info = estimators.fit_alpha(Z, y, n_alphas=15, folds=5, seed=1, tol=1e-10, max_iter=100_000,
                                   standardize=False)
    folds = estimators.kfold(len(y), 5, 1)
    splits = [(np.setdiff1d(np.arange(len(y)), held), held) for held in folds]
    cv = sklearn.ElasticNetCV(l1_ratio=0.5, alphas=np.array(info["alphas"]), cv=splits, tol=1e-10,
                              max_iter=100_000).fit(Z, y)
    assert info["alpha"] == pytest.approx(cv.alpha_)
    assert_close_to_scale(np.array(info["cv_mse_folds"]), cv.mse_path_.T, rel=1e-5)


def test_nested_cv_prediction_of_a_row_never_sees_that_row():
    # the whole procedure (α choice included) runs without the row: corrupting a row's label moves
    # the other folds' predictions but not its own
    X, y = _cv_data(seed=9, n=50, p=6)
    pred, alphas = estimators.nested_cv_predictions(X, y, folds=5, seed=2, n_alphas=8)
    assert len(alphas) == 5 and pred.shape == y.shape
    outer = estimators.kfold(len(y), 5, 2)
    i = int(outer[1][0])
    y2 = y.copy()
    y2[i] += 100.0
    pred2, _ = estimators.nested_cv_predictions(X, y2, folds=5, seed=2, n_alphas=8)
    assert pred2[i] == pred[i]
    same_fold = np.isin(np.arange(len(y)), outer[1])
    assert np.array_equal(pred2[same_fold], pred[same_fold])
    assert not np.allclose(pred2[~same_fold], pred[~same_fold])
    assert estimators.spearman(y, pred) > 0.5  # and it predicts


def test_spearman_with_ties_by_hand():
    # ranks a = 1, 2.5, 2.5, 4 and b = 1, 3, 2, 4; centred products sum to 4.5,
    # squares to 4.5 and 5, so ρ = 4.5 / √22.5 = √0.9.
    assert estimators.spearman([1, 2, 2, 3], [10, 30, 20, 40]) == pytest.approx(math.sqrt(0.9))
    assert estimators.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(estimators.spearman([1, 1, 1], [1, 2, 3]))


def test_r2_by_hand():
    assert estimators.r2_score([1, 2, 3], [1, 2, 4]) == pytest.approx(0.5)  # 1 − 1/2


# ------------------------------------------------------------------------------------------------
# Quality probe
# ------------------------------------------------------------------------------------------------


def plain_newton(X, y, C, iters=60):
    """Undamped Newton on C·Σ logloss + ½‖w‖² with an unpenalised intercept, full Hessian."""
    Z = (X - X.mean(0)) / X.std(0)
    A = np.hstack([Z, np.ones((len(y), 1))])
    P = np.eye(A.shape[1])
    P[-1, -1] = 0.0
    t = np.zeros(A.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-A @ t))
        g = C * A.T @ (p - y) + P @ t
        H = C * A.T @ np.diag(p * (1 - p)) @ A + P
        t = t - np.linalg.solve(H, g)
    return t[:-1], t[-1]


@pytest.mark.parametrize("n,d", [(80, 5), (25, 40)])
def test_logistic_probe_matches_plain_newton(n, d):
    rng = np.random.default_rng(8)
    X = rng.normal(size=(n, d)) * 2.0 + 1.0
    y = (X[:, 0] - X[:, 1] + rng.normal(size=n) > 1.0).astype(float)
    w, b = plain_newton(X, y, C=0.5)
    probe = estimators.LogisticProbe(C=0.5).fit(X, y)
    assert np.allclose(probe.coef_, w, atol=1e-7) and probe.intercept_ == pytest.approx(b)
    z = ((X - X.mean(0)) / X.std(0)) @ w + b
    assert np.allclose(probe.predict_proba(X), 1 / (1 + np.exp(-z)))


def test_auc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, size=60)
    s = rng.integers(0, 6, size=60).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
    assert estimators.binary_metrics(y, s)["auc"] == pytest.approx(pairs)


def test_precision_recall_by_hand():
    m = estimators.binary_metrics([1, 1, 0, 0, 1], [0.9, 0.4, 0.6, 0.1, 0.5])
    # predicted positive (≥ 0.5): rows 0, 2, 4 → tp 2 of 3 predicted, 2 of 3 actual
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)


def test_nmi_by_hand():
    # a = [0, 0, 1, 1], b = [0, 0, 0, 1]: H(a) = ln 2, H(b) = −(¾ ln ¾ + ¼ ln ¼),
    # I = Σ p(x,y) ln(p(x,y) / p(x)p(y)) over (0,0): ½, (1,0): ¼, (1,1): ¼
    ha = math.log(2)
    hb = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    mi = 0.5 * math.log(0.5 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.25))
    assert estimators.normalized_mutual_info([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(2 * mi / (ha + hb))
    assert estimators.normalized_mutual_info([0, 0, 1, 1], ["x", "x", "y", "y"]) == pytest.approx(1.0)
    assert estimators.normalized_mutual_info([0, 0, 0], [1, 1, 1]) == 0.0
