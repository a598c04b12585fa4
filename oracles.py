"""oracles.py -- the --oracle ablations: the known truth in place of an estimator, to measure what a
better quality probe, difficulty proxy or clustering would buy. The truth is a meta field of every problem
(the toy world's problems carry quality, difficulty and topic); saerl.py's fit_quality, fit_difficulty and
cluster_kept call these instead of their estimator when --oracle names them.
Imports: torch; nothing from this project.
"""
from __future__ import annotations

import torch


def oracle_quality(problems) -> dict:
    """quality.json from meta 'quality': every problem whose quality is 0 dropped, the rest kept."""
    truth = oracle_values(problems, "quality", "filter")
    n_bad = sum(v == 0 for v in truth)
    return {"scores": [float(v) for v in truth], "kept": [i for i, v in enumerate(truth) if v != 0], "labelled": [],
            "label_source": "the oracle (meta 'quality')", "metrics": {}, "n_labelled": 0, "n_negative": n_bad,
            "drop": n_bad / len(problems), "oracle": True}


def oracle_difficulty(problems) -> dict:
    """difficulty.json from meta 'difficulty': every problem's known difficulty as its prediction."""
    return {"predicted": [float(v) for v in oracle_values(problems, "difficulty", "difficulty")], "alpha": None,
            "held_out": {"spearman": None, "r2": None, "n": 0, "method": "oracle"}, "n_labelled": 0,
            "nonzero_coefficients": 0, "constant_labels": False, "oracle": True}


def oracle_clusters(problems) -> tuple[int, torch.Tensor]:
    """(k, cluster of each problem) from meta 'topic': one cluster per topic, numbered in sorted order."""
    topics = [str(v) for v in oracle_values(problems, "topic", "clusters")]
    names = sorted(set(topics))
    return len(names), torch.tensor([names.index(t) for t in topics])


def oracle_values(problems, field: str, what: str) -> list:
    """Every problem's meta[field], the truth an --oracle ablation uses instead of an estimator."""
    missing = [p.id for p in problems if p.meta.get(field) is None]
    if missing:
        raise SystemExit(f"--oracle {what}: {len(missing)} problems have no '{field}' field (first: {missing[:3]}); "
                         "the oracle ablations need the truth, which the toy world's problems carry")
    return [p.meta[field] for p in problems]
