"""Specification of the SAERL method (saerl.py, top section): k-means, ElasticNet, logistic probe,
automatic quality labels, filter and batch schedule. Expected values come from hand derivations or
slow obvious re-implementations written here, never from the code under test."""
import math

import numpy as np
import pytest
import torch

import saerl
from data import Problem


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
    labels, centres, inertia = saerl.kmeans(torch.tensor(X), 4, seed=1)
    assert same_partition(labels.numpy(), truth)


def test_kmeans_inertia_and_labels_match_brute_force():
    X = np.random.default_rng(3).normal(size=(150, 5))
    labels, centres, inertia = saerl.kmeans(torch.tensor(X), 6, seed=0, max_iter=3)
    C = centres.numpy()
    nearest = [int(np.argmin([((x - c) ** 2).sum() for c in C])) for x in X]
    assert labels.tolist() == nearest  # final E-step even when max_iter stops Lloyd early
    assert inertia == pytest.approx(brute_inertia(X, C, nearest), rel=1e-10)


def test_kmeans_plusplus_seeds_one_centre_per_blob():
    X, truth = blobs(n_per=30, k=5, spread=0.01, sep=100.0, seed=2)
    Xt = torch.tensor(X)
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        _, ids = saerl._kmeans_plusplus(Xt, (Xt ** 2).sum(1), 5, gen, 64)
        assert sorted(truth[ids].tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("k,trials", [(2, 2), (7, 3), (8, 4), (21, 5)])
def test_kmeans_plusplus_draws_2_plus_floor_ln_k_candidates(k, trials):
    # The generator after seeding must have advanced by exactly one first-centre draw plus
    # `trials` uniforms per further centre (2 + ⌊ln k⌋: ln 7 = 1.95, ln 8 = 2.08, ln 21 = 3.04).
    X = torch.tensor(np.random.default_rng(0).normal(size=(60, 3)))
    gen = torch.Generator().manual_seed(11)
    saerl._kmeans_plusplus(X, (X ** 2).sum(1), k, gen, 16)
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
    labels, centres, inertia = saerl.kmeans(X, 3, init=init)
    assert labels.tolist() == [0, 0, 2, 1, 1, 1]
    assert centres[:, 0].tolist() == [0.5, 11.0, 3.0]
    assert inertia == pytest.approx(2.5)


def test_more_clusters_than_distinct_points_is_not_an_error():
    X = torch.tensor([[0.0], [0.0], [5.0], [5.0]], dtype=torch.float64)
    init = torch.tensor([[0.0], [5.0], [100.0]], dtype=torch.float64)
    labels, centres, inertia = saerl.kmeans(X, 3, init=init)
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
    out_dense = saerl.kmeans(dense, 5, seed=4, chunk_size=50)
    for sparse in (dense.to_sparse_coo(), dense.to_sparse_csr()):
        labels, centres, inertia = saerl.kmeans(sparse, 5, seed=4, chunk_size=50)
        assert torch.equal(labels, out_dense[0])
        assert torch.allclose(centres, out_dense[1], atol=1e-12)
        assert inertia == pytest.approx(out_dense[2], rel=1e-10)


def test_tolerance_scale_is_mean_feature_variance():
    dense = random_sparse(n=50, d=30, nnz=5)
    expected = float(np.var(dense, axis=0).mean())
    for X in (torch.tensor(dense), torch.tensor(dense).to_sparse_csr()):
        X = saerl._as_features(X)
        assert saerl._mean_feature_variance(X, saerl._row_sq_norms(X)) == pytest.approx(expected)


def test_l2_normalize_rows_dense_and_sparse():
    dense = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    expected = np.array([[0.6, 0.8, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert np.allclose(saerl.l2_normalize_rows(torch.tensor(dense)).numpy(), expected)
    out = saerl.l2_normalize_rows(torch.tensor(dense).to_sparse_coo())
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
    assert saerl.silhouette_score(torch.tensor(X), torch.tensor(labels)) == pytest.approx(expected)


def test_choose_k_finds_three_blobs():
    X, _ = blobs(n_per=30, k=3, spread=0.3, seed=7)
    best, scores = saerl.choose_k(torch.tensor(X), [2, 3, 5, 8], sample=60)
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
    m = saerl.ElasticNet(alpha, rho, tol=1e-12, fit_intercept=False, standardize=False).fit(X, y)
    assert np.allclose(m.coef_, expected, atol=1e-10)
    assert 0 < sum(e == 0 for e in expected) < d  # the threshold is exercised both ways


@pytest.mark.parametrize("alpha", [0.0, 1e-10])
def test_elasticnet_tends_to_least_squares(alpha):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 5)) + 3.0
    y = X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 4.0 + rng.normal(size=80)
    sol, *_ = np.linalg.lstsq(np.hstack([X, np.ones((80, 1))]), y, rcond=None)
    m = saerl.ElasticNet(alpha, 0.5, tol=1e-10, max_iter=10000, standardize=False).fit(X, y)
    assert np.allclose(m.coef_, sol[:5], atol=1e-6) and m.intercept_ == pytest.approx(sol[5])


@pytest.mark.parametrize("shape", [(120, 30), (40, 90)])
def test_elasticnet_satisfies_kkt_and_small_gap(shape):
    n, d = shape
    rng = np.random.default_rng(2)
    X = rng.normal(size=(n, d)) @ (np.eye(d) + 0.3 * rng.normal(size=(d, d)))  # correlated
    y = X[:, :4] @ np.array([2.0, -1.0, 1.5, 0.5]) + rng.normal(size=n)
    alpha, rho = 0.05, 0.6
    m = saerl.ElasticNet(alpha, rho, tol=1e-10, max_iter=5000, standardize=False).fit(X, y)
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
    a = saerl.ElasticNet(0.1, 0.5, tol=1e-12).fit(X, y)
    b = saerl.ElasticNet(0.1, 0.5, tol=1e-12, standardize=False).fit(Z, y)
    assert np.allclose(a.coef_, b.coef_, atol=1e-10) and a.coef_[3] == 0
    assert np.allclose(a.predict(X[:7]), Z[:7] @ b.coef_ + b.intercept_)


def test_fit_alpha_path_starts_at_alpha_max():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(100, 20))
    y = X[:, 0] - X[:, 1] + 0.5 * rng.normal(size=100)
    model, info = saerl.fit_alpha(X, y, l1_ratio=0.5, n_alphas=12, seed=0)
    Z = (X - X.mean(0)) / X.std(0)  # alpha_grid on all rows, by hand
    a_max = np.max(np.abs(Z.T @ (y - y.mean()))) / (100 * 0.5)
    assert saerl.alpha_grid(X, y, n_alphas=12)[0] == pytest.approx(a_max)
    assert not saerl.ElasticNet(a_max, 0.5).fit(X, y).coef_.any()
    assert saerl.ElasticNet(0.95 * a_max, 0.5).fit(X, y).coef_.any()
    assert info["alpha"] == info["alphas"][int(np.argmin(info["val_mse"]))]
    assert info["n_val"] == 20 and info["n_train"] == 80
    assert np.nanmax(info["val_spearman"]) > 0.8  # NaN at α_max: constant prediction


def test_spearman_with_ties_by_hand():
    # ranks a = 1, 2.5, 2.5, 4 and b = 1, 3, 2, 4; centred products sum to 4.5,
    # squares to 4.5 and 5, so ρ = 4.5 / √22.5 = √0.9.
    assert saerl.spearman([1, 2, 2, 3], [10, 30, 20, 40]) == pytest.approx(math.sqrt(0.9))
    assert saerl.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(saerl.spearman([1, 1, 1], [1, 2, 3]))


def test_r2_by_hand():
    assert saerl.r2_score([1, 2, 3], [1, 2, 4]) == pytest.approx(0.5)  # 1 − 1/2


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
    probe = saerl.LogisticProbe(C=0.5).fit(X, y)
    assert np.allclose(probe.coef_, w, atol=1e-7) and probe.intercept_ == pytest.approx(b)
    z = ((X - X.mean(0)) / X.std(0)) @ w + b
    assert np.allclose(probe.predict_proba(X), 1 / (1 + np.exp(-z)))


def test_auc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, size=60)
    s = rng.integers(0, 6, size=60).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
    assert saerl.binary_metrics(y, s)["auc"] == pytest.approx(pairs)


def test_precision_recall_by_hand():
    m = saerl.binary_metrics([1, 1, 0, 0, 1], [0.9, 0.4, 0.6, 0.1, 0.5])
    # predicted positive (≥ 0.5): rows 0, 2, 4 → tp 2 of 3 predicted, 2 of 3 actual
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)


def make_problems(n=20):
    return [Problem(id=f"p{i}", problem=f"what is {i} plus {i + 1} added together",
                    answer=str(2 * i + 1), meta={"topic": "add"}) for i in range(n)]


def test_corrupt_copies_kinds_and_labels():
    problems = make_problems()
    copies = saerl.corrupt_copies(problems, seed=3, frac=0.3)
    assert len(copies) == 6 and all(isinstance(c, Problem) for c in copies)
    by_id = {p.id: p for p in problems}
    kinds = set()
    for c in copies:
        src = by_id[c.meta["corrupt_copy_of"]]
        kind = c.meta["corruption"]
        kinds.add(kind)
        assert c.id == f"{src.id}#corrupt-{kind}" and c.meta["quality"] == 0
        assert c.meta["topic"] == "add"
        if kind == "shuffled":
            assert sorted(c.problem.split()) == sorted(src.problem.split())
            assert c.problem != src.problem and c.answer == src.answer
        elif kind == "truncated":
            assert src.problem.startswith(c.problem) and len(c.problem) < len(src.problem)
        else:
            assert c.answer != src.answer and c.answer in {p.answer for p in problems}
    assert kinds == set(saerl.CORRUPTIONS)
    again = saerl.corrupt_copies(problems, seed=3, frac=0.3)
    assert [c.to_row() for c in again] == [c.to_row() for c in copies]


def test_auto_quality_labels_by_hand():
    problems = make_problems(5)
    problems[4].meta["corrupt_copy_of"] = "p0"
    problems[2].meta["quality"] = 0  # a dataset's own field: not this function's business
    rollouts = [["1", "1", "1", "7"],    # majority agrees with the reference "1": keep
                ["9", "9", "9", "3"],    # 3/4 agree on 9 ≠ "3": suspect
                ["9", "9", "4", None],   # only 2/4 agree: keep
                ["5", "5"],              # agree with the reference: keep
                ["9", "9"]]              # a corrupted copy: suspect anyway
    parse_ok = [True, True, True, False, True]  # reference of row 3 does not parse
    labels = saerl.auto_quality_labels(problems, rollout_answers=rollouts, parse_ok=parse_ok)
    assert labels == [1, 0, 1, 0, 0]
    assert saerl.auto_quality_labels(problems[:4]) == [1, 1, 1, 1]


def test_quality_filter_drops_lowest_with_index_ties():
    scores = [0.5, 0.1, 0.9, 0.1, 0.3, 0.7, 0.2, 0.8, 0.6, 0.4]
    # ⌊0.3·10⌋ = 3 dropped: the two 0.1s (rows 1 and 3) and 0.2 (row 6)
    assert saerl.quality_filter(scores, 0.3) == [0, 2, 4, 5, 7, 8, 9]
    assert saerl.quality_filter([1.0, 1.0, 1.0], 0.34) == [1, 2]  # tie: lower index goes first
    assert saerl.quality_filter(scores, 0.0) == list(range(10))


# ------------------------------------------------------------------------------------------------
# Schedule
# ------------------------------------------------------------------------------------------------

CL = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2]
DIFF = [5, 4, 3, 2, 1, 1, 2, 3, 1, 1, 1, 1, 1, 1, 1]


def test_schedule_worked_example():
    # B = 2. Cluster 0 easy-first is 4,3,2,1,0: batches [4,3] (progress 1/4), [2,1] (3/4), rest 0
    # at progress 9/10. Cluster 1: [5,6] (1/2), rest 7 at 5/6. Cluster 2 (all ties, by index):
    # [8,9] (1/6), [10,11] (1/2), [12,13] (5/6), rest 14 at 13/14. The pool 7, 0, 14 gives [7,0]
    # (mean 13/15) and the short final [14]. [10,11] and [5,6] tie at 1/2: the cluster rank
    # (seeded) orders them, so only that pair may swap places.
    out = saerl.build_schedule(CL, DIFF, 2, mix=0.0, seed=0)
    head = [[8, 9], [4, 3]]
    tail = [[2, 1], [12, 13], [7, 0], [14]]
    assert out[:2] == head and out[4:] == tail
    assert sorted(out[2:4]) == [[5, 6], [10, 11]]
    # mix = 1: s = ⌊1·2/2⌋ = 1, pairs (0,1), (2,3), (4,5), (6,7) swap their last items.
    mixed = saerl.build_schedule(CL, DIFF, 2, mix=1.0, seed=0)
    for j in range(0, 8, 2):
        a, b = out[j], out[j + 1]
        assert mixed[j] == a[:-1] + b[-1:] and mixed[j + 1] == b[:-1] + a[-1:]


def schedule_case(seed=0):
    rng = np.random.default_rng(seed)
    clusters = rng.integers(0, 7, size=301)
    difficulty = rng.random(301)
    return clusters, difficulty


@pytest.mark.parametrize("mix", [0.0, 0.25, 0.5, 1.0])
def test_schedule_every_problem_once_and_batch_sizes(mix):
    clusters, difficulty = schedule_case()
    out = saerl.build_schedule(clusters, difficulty, 16, mix=mix, seed=2)
    assert sorted(i for b in out for i in b) == list(range(301))
    assert [len(b) for b in out] == [16] * 18 + [301 - 18 * 16]


def test_schedule_before_mixing_is_pure_and_easy_to_hard():
    clusters, difficulty = schedule_case()
    out = saerl.build_schedule(clusters, difficulty, 16, mix=0.0, seed=2)
    pooled = []
    for b in out:
        if len(set(clusters[b])) == 1:  # a cluster's own batch: sorted easy first
            assert list(difficulty[b]) == sorted(difficulty[b])
        else:
            pooled.append(b)
    assert len(out) - len(pooled) >= 7 * (301 // 7 // 16) - 7
    for c in range(7):  # across a cluster's own batches, difficulty never decreases
        seq = [difficulty[i] for b in out if b not in pooled for i in b if clusters[i] == c]
        assert seq == sorted(seq)


@pytest.mark.parametrize("mix,s", [(0.25, 2), (0.5, 4), (1.0, 8)])
def test_schedule_swaps_exactly_floor_mix_b_over_2(mix, s):
    clusters, difficulty = schedule_case()
    pure = saerl.build_schedule(clusters, difficulty, 16, mix=0.0, seed=2)
    mixed = saerl.build_schedule(clusters, difficulty, 16, mix=mix, seed=2)
    moved = sum(a != b for p, m in zip(pure, mixed) for a, b in zip(p, m))
    pairs = len(pure) // 2  # 19 batches: pairs (0,1) … (16,17); the short last one is unpaired
    assert moved == 2 * s * pairs
    for p, m in zip(pure, mixed):
        assert p[:16 - s] == m[:16 - s]


def test_schedule_is_deterministic_and_seeded():
    clusters, difficulty = schedule_case()
    a = saerl.build_schedule(clusters, difficulty, 16, seed=5)
    assert a == saerl.build_schedule(clusters, difficulty, 16, seed=5)
    c = saerl.build_schedule(clusters, difficulty, 16, curriculum=False, seed=5)
    assert c != a and sorted(i for b in c for i in b) == list(range(301))
    assert c == saerl.build_schedule(clusters, None, 16, curriculum=False, seed=5)


def test_budget_subset_worked_example():
    # CL has clusters of 5, 3 and 7 rows (n = 15); n_take = 6. Shares 5*6/15 = 2, 3*6/15 = 1.2,
    # 7*6/15 = 2.8: floors 2, 1, 2 (sum 5), the one leftover row to the largest remainder (cluster 2).
    # Cluster 0 easy-to-hard is rows 4,3,2,1,0; m = 2 strata: positions [0, 2) and [2, 5), so one
    # of rows {4, 3} and one of {2, 1, 0}. Cluster 1 (rows 5,6,7, m = 1): any one. Cluster 2 (ties,
    # by index 8..14, m = 3): strata [0, 2), [2, 4), [4, 7) -> one of {8,9}, {10,11}, {12,13,14}.
    for seed in range(20):
        out = saerl.budget_subset(CL, DIFF, 6, seed=seed)
        assert out == sorted(out) and len(set(out)) == 6
        assert len({4, 3} & set(out)) == 1 and len({2, 1, 0} & set(out)) == 1
        assert len({5, 6, 7} & set(out)) == 1
        for stratum in ({8, 9}, {10, 11}, {12, 13, 14}):
            assert len(stratum & set(out)) == 1
    draws = {tuple(saerl.budget_subset(CL, DIFF, 6, seed=seed)) for seed in range(20)}
    assert len(draws) > 1 and saerl.budget_subset(CL, DIFF, 6, seed=3) == saerl.budget_subset(CL, DIFF, 6, seed=3)


def test_budget_subset_ties_counts_and_edges():
    # sizes 6, 3, 1 with n_take 5: shares 3, 1.5, 0.5 -> floors 3, 1, 0; remainders tie at 0.5 and
    # the smaller cluster id (1) takes the leftover row.
    cl = [0] * 6 + [1] * 3 + [2]
    out = saerl.budget_subset(cl, list(range(10)), 5, seed=0)
    assert [sum(cl[i] == c for i in out) for c in (0, 1, 2)] == [3, 2, 0]
    assert saerl.budget_subset(cl, None, 5, seed=0) != [] and len(saerl.budget_subset(cl, None, 5, seed=1)) == 5
    assert saerl.budget_subset(cl, None, 10) == list(range(10)) == saerl.budget_subset(cl, None, 99)
    assert saerl.budget_subset(cl, None, 0) == []
    with pytest.raises(ValueError, match="NaN"):
        saerl.budget_subset(cl, [float("nan")] * 10, 5)
    with pytest.raises(ValueError, match="entries"):
        saerl.budget_subset(cl, [1.0] * 9, 5)


def test_budget_subset_spans_each_clusters_difficulty_range():
    clusters, difficulty = schedule_case()
    out = saerl.budget_subset(clusters, difficulty, 64, seed=1)
    assert len(out) == 64
    for c in range(7):
        mine = sorted(difficulty[clusters == c])
        got = sorted(difficulty[i] for i in out if clusters[i] == c)
        # the first pick lies in the cluster's easiest stratum, the last in its hardest
        m, n_c = len(got), len(mine)
        assert m > 0, f"cluster {c} got no share; the case needs every cluster represented"
        assert got[0] <= mine[n_c // m - 1] and got[-1] >= mine[(m - 1) * n_c // m]


def test_random_schedule():
    out = saerl.random_schedule(10, 4, seed=1)
    assert [len(b) for b in out] == [4, 4, 2]
    assert sorted(i for b in out for i in b) == list(range(10))
    assert out == saerl.random_schedule(10, 4, seed=1) != saerl.random_schedule(10, 4, seed=2)


def test_cluster_summary_top_features_dense_and_sparse():
    feats = torch.zeros(4, 6)
    feats[0, 2], feats[1, 2], feats[1, 5] = 1.0, 3.0, 0.5  # cluster 7: means f2 = 2, f5 = 0.25
    feats[2, 0], feats[3, 1] = 4.0, 1.0                    # cluster 3: means f0 = 2, f1 = 0.5
    problems = make_problems(4)
    args = ([7, 7, 3, 3], [0.1, 0.3, 0.9, 0.5])
    text = saerl.cluster_summary(*args, feats, problems, top=2)
    assert "## Cluster 3" in text and "## Cluster 7" in text
    assert "`0` (2), `1` (0.5)" in text and "`2` (2), `5` (0.25)" in text
    assert "mean predicted difficulty: 0.7" in text and "`p3`" in text
    assert text == saerl.cluster_summary(*args, feats.to_sparse_coo(), problems, top=2)
