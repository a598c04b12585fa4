"""Specification of run_folder.py's helpers that run without a model: a one-file JSON stage is computed once
and read back, scores.jsonl's rows, strict JSON numbers. (open_run_folder, the toy world and train_arms run
in test_saerl.py's end-to-end runs.)"""
import json

from data import Problem
from run_folder import cached_json, finite_or_none, problem_scores
from runtime import Stage, Stages


def test_cached_json_computes_once_and_reads_back(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": [1, 2.5]}

    for _ in range(2):
        stages = Stages(tmp_path, [Stage("labels", files=("labels.json",))], {}, log=lambda _: None)
        assert cached_json(stages, "labels", compute) == {"x": [1, 2.5]}
    assert calls == [1] and json.loads((tmp_path / "labels.json").read_text()) == {"x": [1, 2.5]}


def test_problem_scores_by_hand():
    problems = [Problem(id=f"p{i}", problem="x", answer="1") for i in range(3)]
    quality = {"kept": [0, 2], "scores": [0.9, 0.1, 0.7]}
    rows = problem_scores(problems, quality, {"predicted": [3.0, 1.0, 2.0]}, {"labels": [1, 0]})
    assert rows == [{"id": "p0", "quality": 0.9, "kept": True, "difficulty": 3.0, "cluster": 1},
                    {"id": "p1", "quality": 0.1, "kept": False, "difficulty": 1.0, "cluster": None},
                    {"id": "p2", "quality": 0.7, "kept": True, "difficulty": 2.0, "cluster": 0}]


def test_finite_or_none_keeps_json_strict():
    assert [finite_or_none(v) for v in (1, 0.5, float("nan"), float("-inf"))] == [1.0, 0.5, None, None]
