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


def test_steps_to_target_interpolates_at_the_first_crossing():
    points = [(0, 0.1), (10, 0.25), (20, 0.2), (30, 0.4)]
    assert rp.steps_to_target(points, 0.25) == 10  # reached exactly at an evaluation
    # 0.3 is first reached between step 20 (0.2) and 30 (0.4): halfway, step 25 (not 30, nor the dip's 10)
    assert rp.steps_to_target(points, 0.3) == pytest.approx(25.0)
    # 0.16 between 0 (0.1) and 10 (0.25): 0.06 / 0.15 of the way, step 4
    assert rp.steps_to_target(points, 0.16) == pytest.approx(4.0)
    assert rp.steps_to_target(points, 0.05) == 0.0  # the first evaluation already reaches it
    assert rp.steps_to_target(points, 0.5) is None
    # a 0.0002 difference no longer decides "reached" against "not reached": it moves the step a little
    assert rp.steps_to_target([(0, 0.10), (40, 0.1398)], 0.14) is None
    assert rp.steps_to_target([(0, 0.10), (40, 0.1402)], 0.14) == pytest.approx(40 * 0.04 / 0.0402)


def test_paired_lines_by_hand():
    # seed 0: differences +1, 0, 0, -0.5 (mean 0.125, sample sd 0.629, half 1.96 * 0.629 / 2 = 0.6166)
    # seed 1: differences 0, +0.5, 0, +0.5 (mean 0.25, sd 0.2887, half 0.2829)
    items = {"vanilla": {0: [0, 0.5, 1, 1], 1: [0, 0, 0.5, 0]},
             "saerl": {0: [1, 0.5, 1, 0.5], 1: [0, 0.5, 0.5, 0.5]}}
    lines = rp.paired_lines(items, "avg@2")
    row = next(line for line in lines if line.startswith("- saerl"))
    assert "seed 0: +12.5 [-49.2, +74.2]" in row and "seed 1: +25.0 [-3.3, +53.3]" in row
    # over seeds 12.5 and 25: mean 18.75, sd 8.84, t(0.975, 1) = 12.71: half 12.71 * 8.84 / sqrt 2 = 79.4
    assert "over seeds +18.8 [-60.7, +98.2] (n = 2)" in row


def test_filter_truth_lines_count_unseen_rows_apart():
    # 6 problems: rows 0-2 labelled (the probe saw them), 3-5 unseen; known-bad: 0, 3, 4; kept: 1, 2, 4, 5
    probs = [data.Problem(id=f"p{i}", problem=f"q{i}", answer="1", meta={"quality": int(i not in (0, 3, 4))})
             for i in range(6)]
    text = " ".join(rp.filter_truth_lines(probs, kept={1, 2, 4, 5}, labelled={0, 1, 2}))
    # unseen 3, 4, 5: bad 3, 4; dropped 3 -> caught 1 of 2 (recall 0.50), 1 of 1 dropped bad (precision 1.00)
    assert "on the 3 rows the probe never saw: dropped 1 of 2 known-bad (recall 0.50); 1 of the 1 dropped" in text
    # all rows: bad 0, 3, 4; dropped 0, 3 -> caught 2 of 3, precision 2 of 2
    assert "dropped 2 of 3 known-bad (recall 0.67); 2 of the 2 dropped are known-bad (precision 1.00)" in text


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


def test_forest_svg_places_each_interval_on_one_axis_with_zero():
    import xml.etree.ElementTree as ET

    rows = [("a", 1.0, -1.0, 3.0), ("b", -2.0, -4.0, 0.0)]
    root = ET.fromstring(rp.forest_svg(rows, axis="points"))
    ns = "{http://www.w3.org/2000/svg}"
    dots = root.findall(f"{ns}circle")
    lines = [e for e in root.findall(f"{ns}line") if e.get("class") == "interval"]
    zero = next(e for e in root.findall(f"{ns}line") if e.get("class") == "zero")
    assert len(dots) == 2 and len(lines) == 2
    xs = {name: float(d.get("cx")) for (name, *_), d in zip(rows, dots)}
    assert xs["b"] < float(zero.get("x1")) < xs["a"]  # -2 left of zero, +1 right of it
    # the axis is linear: b's interval [-4, 0] ends at the zero line, a's [-1, 3] is 4/4 as wide
    b_line, a_line = lines[1], lines[0]
    assert float(b_line.get("x2")) == pytest.approx(float(zero.get("x1")), abs=0.06)
    width_a = float(a_line.get("x2")) - float(a_line.get("x1"))
    width_b = float(b_line.get("x2")) - float(b_line.get("x1"))
    assert width_a == pytest.approx(width_b, abs=0.2)
