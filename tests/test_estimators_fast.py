"""Specification of estimators_fast.py: the speed-ups give what the textbook steps of estimators.py give.
Expected values come from hand derivations or the plain re-implementations, never from the code under test."""
import numpy as np
import pytest
import torch

import estimators
import estimators_fast
from test_estimators import random_sparse


def test_tolerance_scale_is_mean_feature_variance():
    dense = random_sparse(n=50, d=30, nnz=5)
    expected = float(np.var(dense, axis=0).mean())
    for X in (torch.tensor(dense), torch.tensor(dense).to_sparse_csr()):
        X = estimators_fast.as_features(X)
        assert estimators_fast.mean_feature_variance(X, estimators_fast.row_sq_norms(X)) == pytest.approx(expected)


def test_textbook_coordinate_descent_reaches_the_fast_solvers_minimum():
    # the plain cyclic update of the docstring, run to convergence, against ElasticNet's solver
    rng = np.random.default_rng(11)
    X = rng.normal(size=(40, 12))
    y = X[:, 0] - 2 * X[:, 3] + 0.3 * rng.normal(size=40)
    l1, l2 = 3.0, 2.0
    w_plain = estimators.enet_coordinate_descent_plain(X, y, l1, l2, tol=1e-12)
    w_fast, *_ = estimators_fast.enet_coordinate_descent(X, y, l1, l2, tol=1e-12)
    assert np.allclose(w_plain, w_fast, atol=1e-8)
    # and it is the minimiser: KKT holds at w_plain
    g = X.T @ (y - X @ w_plain) - l2 * w_plain
    on = w_plain != 0
    assert np.allclose(g[on], l1 * np.sign(w_plain[on]), atol=1e-6) and np.all(np.abs(g[~on]) <= l1 + 1e-6)
