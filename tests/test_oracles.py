"""Specification of oracles.py: the --oracle ablations read the truth from the problems' meta fields."""
import pytest

from data import Problem
from oracles import oracle_clusters, oracle_difficulty, oracle_quality


def problems(**columns):
    n = len(next(iter(columns.values())))
    return [Problem(id=f"p{i}", problem="x", answer="1", meta={k: v[i] for k, v in columns.items()}) for i in range(n)]


def test_oracle_quality_keeps_every_problem_whose_quality_is_not_zero():
    out = oracle_quality(problems(quality=[1, 0, 1, 0]))
    assert out["kept"] == [0, 2] and out["scores"] == [1.0, 0.0, 1.0, 0.0]
    assert out["n_negative"] == 2 and out["drop"] == 0.5 and out["oracle"] is True


def test_oracle_difficulty_and_clusters_are_the_known_values():
    assert oracle_difficulty(problems(difficulty=[3, 1.5]))["predicted"] == [3.0, 1.5]
    k, labels = oracle_clusters(problems(topic=["geo", "alg", "geo"]))
    assert k == 2 and labels.tolist() == [1, 0, 1]  # topics numbered in sorted order: alg 0, geo 1


def test_a_missing_truth_is_named():
    with pytest.raises(SystemExit, match=r"--oracle clusters: 1 problems have no 'topic' field \(first: \['p1'\]\)"):
        oracle_clusters(problems(topic=["geo", None]))
