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


def test_mean_and_interval_by_hand():
    import report

    assert report.mean_and_interval([0.3]) == (0.3, 0.3, 0.3)
    # three seeds 0.1, 0.2, 0.3: mean 0.2, sample sd 0.1, t(0.975, 2) = 4.303 -> half width 4.303 * 0.1 / sqrt(3)
    mean, lo, hi = report.mean_and_interval([0.1, 0.2, 0.3])
    assert abs(mean - 0.2) < 1e-12 and abs(hi - mean - 0.24844) < 1e-3 and abs(mean - lo - 0.24844) < 1e-3


def test_accuracy_svg_draws_each_arm_with_a_band_only_over_several_seeds():
    import xml.etree.ElementTree as ET

    import report

    curves = {"vanilla": {0: [(0, 0.20), (10, 0.30)], 1: [(0, 0.22), (10, 0.26)]},
              "saerl": {0: [(0, 0.21), (10, 0.40)]}}
    root = ET.fromstring(report.accuracy_svg(curves))
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    bands = root.findall(f"{ns}polygon")
    assert len(lines) == 2 and len(bands) == 1  # vanilla has two seeds, saerl one
    (v0, v1), (s0, s1) = ([tuple(map(float, p.split(","))) for p in line.get("points").split()] for line in lines)
    assert v0[0] == s0[0] < v1[0] == s1[0]  # step 0 left, step 10 right, the same axis for both arms
    assert s1[1] < v1[1] < v0[1]  # higher accuracy is drawn higher: saerl's 0.40 above vanilla's mean 0.28
    text = " ".join(t.text or "" for t in root.iter(f"{ns}text"))
    assert "vanilla 2 seeds, 95% band" in text and "saerl 1 seed" in text and "GRPO step" in text


def test_plot_curves_writes_the_svg_and_links_it(tmp_path):
    import report

    md = report.plot_curves({"vanilla": {0: [(0, 0.1), (5, 0.2)]}}, tmp_path / "report.svg")
    assert md == "![held-out accuracy per step](report.svg)"
    assert (tmp_path / "report.svg").read_text().startswith("<svg")
