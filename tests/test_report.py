"""Specification of report.py: clusters.md's per-cluster summary and the steps-to-target numbers of report.md."""
import pytest
import torch

import data
import report as rp


def test_cluster_summary_top_features_dense_and_sparse():
    feats = torch.zeros(4, 6)
    feats[0, 2], feats[1, 2], feats[1, 5] = 1.0, 3.0, 0.5  # cluster 7: means f2 = 2, f5 = 0.25
    feats[2, 0], feats[3, 1] = 4.0, 1.0                    # cluster 3: means f0 = 2, f1 = 0.5
    problems = [data.Problem(id=f"p{i}", problem=f"what is {i} plus {i + 1}", answer=str(2 * i + 1)) for i in range(4)]
    args = ([7, 7, 3, 3], [0.1, 0.3, 0.9, 0.5])
    text = rp.cluster_summary(*args, feats, problems, top=2)
    assert "## Cluster 3" in text and "## Cluster 7" in text
    assert "`0` (2), `1` (0.5)" in text and "`2` (2), `5` (0.25)" in text
    assert "mean predicted difficulty: 0.7" in text and "`p3`" in text
    assert text == rp.cluster_summary(*args, feats.to_sparse_coo(), problems, top=2)


def test_target_is_given_or_vanilla_mean_final():
    assert rp.target_accuracy(0.5, {"vanilla": [0.1, 0.3]}) == 0.5
    assert rp.target_accuracy(None, {"vanilla": [0.1, 0.3], "saerl": [0.9]}) == pytest.approx(0.2)  # vanilla's mean
    assert rp.target_accuracy(None, {"saerl": [0.9]}) is None and rp.target_accuracy(None, {"vanilla": []}) is None


def test_steps_to_target_is_the_first_evaluated_step_that_reaches_it():
    points = [(0, 0.1), (10, 0.25), (20, 0.2), (30, 0.4)]
    assert rp.steps_to_target(points, 0.25) == 10 and rp.steps_to_target(points, 0.3) == 30
    assert rp.steps_to_target(points, 0.5) is None
