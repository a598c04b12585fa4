"""pipeline.py / `python saerl.py`: the whole pipeline on a miniature toy world, its outputs, caching
and resume after a kill."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import toy
from data import load_problems, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
MINI = ["--preset", "toy", "--sae-width", "64", "--sae-k", "8", "--sae-tokens", "20000", "--label-size", "80",
        "--k", "3", "--steps", "4", "--batch-size", "8", "--group-size", "4", "--eval-every", "2",
        "--eval-limit", "40", "--save-every", "1", "--probe-features", "64"]


@pytest.fixture(scope="module")
def mini_world(tmp_path_factory):
    return toy.build_world(tmp_path_factory.mktemp("mini_world"), n_train=160, n_test=40, warm_steps=40,
                           verbose=False)


def saerl_cmd(world, out, *extra):
    return [sys.executable, str(ROOT / "saerl.py"), "--model", str(world.model_dir), "--train-data",
            str(world.train_path), "--benchmarks", f"toy={world.test_path}", "--out", str(out),
            "--name", "mini", *MINI, *extra]


def run_saerl(cmd, **kw):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)


def test_end_to_end_outputs(mini_world, tmp_path):
    proc = run_saerl(saerl_cmd(mini_world, tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "mini"
    problems = load_problems(mini_world.train_path, verbose=False)
    n = len(problems)
    config = json.loads((run / "config.json").read_text())
    assert config["pipeline"]["mix"] == 0.25 and config["grpo"]["group_size"] == 4

    scores = read_jsonl(run / "scores.jsonl")
    assert [s["id"] for s in scores] == [p.id for p in problems]
    kept = {s["id"] for s in scores if s["kept"]}
    assert len(kept) == n - int(0.1 * n)  # --quality-drop 0.1 drops floor(0.1 N)
    assert all(s["cluster"] in (0, 1, 2) for s in scores if s["kept"])

    schedule = read_jsonl(run / "schedule.jsonl")  # one engineered epoch: every kept problem exactly once
    ids = [i for row in schedule for i in row["ids"]]
    assert sorted(ids) == sorted(kept)
    assert [row["step"] for row in schedule] == list(range(len(schedule)))
    assert all(len(row["ids"]) == 8 for row in schedule[:-1]) and 1 <= len(schedule[-1]["ids"]) <= 8

    for arm in ("vanilla-s0", "saerl-s0"):
        log = read_jsonl(run / "arms" / arm / "train_log.jsonl")
        assert [row["step"] for row in log] == [0, 1, 2, 3]
        evals = read_jsonl(run / "arms" / arm / "eval_log.jsonl")
        assert [row["step"] for row in evals] == [0, 2, 4] and all(0 <= row["toy"] <= 1 for row in evals)
    saerl_log = read_jsonl(run / "arms" / "saerl-s0" / "train_log.jsonl")
    assert [row["problem_ids"] for row in saerl_log] == [row["ids"] for row in schedule[:4]]
    vanilla_ids = {i for row in read_jsonl(run / "arms" / "vanilla-s0" / "train_log.jsonl") for i in row["problem_ids"]}
    assert vanilla_ids <= {p.id for p in problems}

    report = (run / "report.md").read_text()
    assert "vanilla" in report and "saerl" in report and "Spearman" in report and "Kept" in report
    assert "| 4 |" in report  # the accuracy table reaches the last step
    assert "avg@4 (mean reward of 4 samples at temperature 1)" in report  # the toy preset's evaluation
    assert (run / "clusters.md").read_text().count("## Cluster") == 3 or "Cluster" in (run / "clusters.md").read_text()

    again = run_saerl(saerl_cmd(mini_world, tmp_path))  # same command: every stage is cached
    assert again.returncode == 0, again.stderr[-3000:]
    assert "computing" not in again.stderr and again.stderr.count("cached") >= 8


def test_killed_run_resumes(mini_world, tmp_path):
    cmd = saerl_cmd(mini_world, tmp_path, "--steps", "6")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "mini" / "arms" / "vanilla-s0" / "train_log.jsonl"
    deadline = time.time() + 500
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(read_jsonl(log)) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(read_jsonl(log))
    assert 2 <= done_before < 6

    again = run_saerl(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resum" in again.stderr.lower()
    steps = [row["step"] for row in read_jsonl(log)]
    assert steps == list(range(6))  # each step once: resumed, not restarted
    assert "sae: cached" in again.stderr and "features: cached" in again.stderr


def test_help_lists_every_flag_with_a_line():
    proc = run_saerl([sys.executable, str(ROOT / "saerl.py"), "--help"])
    assert proc.returncode == 0, proc.stderr
    for flag in ("--model", "--sae-model", "--sae-layer", "--train-data", "--k", "--mix", "--quality-drop",
                 "--difficulty-labels", "--schedule", "--no-curriculum", "--no-cluster", "--no-quality-filter",
                 "--compare", "--seeds", "--benchmarks", "--stage", "--lr", "--group-size", "--loss-type"):
        assert flag in proc.stdout, flag


@pytest.mark.parametrize("flag,value", [("--eval-samples", "0"), ("--eval-temperature", "0"), ("--pace", "fast")])
def test_bad_evaluation_flags_are_named(tmp_path, flag, value):
    proc = run_saerl([sys.executable, str(ROOT / "saerl.py"), "--out", str(tmp_path), flag, value])
    assert proc.returncode != 0 and f"{flag} " in proc.stderr and "expected" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_eval_temperature_without_samples_is_refused(mini_world, tmp_path):
    proc = run_saerl(saerl_cmd(mini_world, tmp_path, "--eval-samples", "1", "--eval-temperature", "0.6"))
    assert proc.returncode != 0 and "--eval-temperature 0.6 applies to avg@N" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "mini" / "stages.json").exists()  # refused before any stage ran


def test_pace_budget_runs_each_cluster_easy_to_hard_within_the_budget(mini_world, tmp_path):
    reach = {}  # pace -> per cluster, the within-cluster difficulty quantile of its hardest trained problem
    for pace in ("epoch", "budget"):
        proc = run_saerl(saerl_cmd(mini_world, tmp_path / pace, "--stage", "schedule", "--no-compare",
                                   "--pace", pace))
        assert proc.returncode == 0, proc.stderr[-3000:]
        run = tmp_path / pace / "mini"
        scores = {s["id"]: s for s in read_jsonl(run / "scores.jsonl") if s["kept"]}
        batches = json.loads((run / "schedules.json").read_text())["saerl-s0"]
        ids = [i for b in batches for i in b]
        assert [len(b) for b in batches] == [8] * 4 and len(set(ids)) == 32  # --steps 4 x --batch-size 8
        reach[pace] = {}
        for c in {scores[i]["cluster"] for i in ids}:
            mine = sorted(s["difficulty"] for s in scores.values() if s["cluster"] == c)
            top = max(scores[i]["difficulty"] for i in ids if scores[i]["cluster"] == c)
            reach[pace][c] = sum(d <= top for d in mine) / len(mine)
    # 32 of ~144 kept problems: the epoch's first 4 batches stop in each cluster's easier part; the
    # paced subset draws m ~ 32/3 problems per cluster and its last pick lies in the hardest stratum,
    # at or above the quantile (m - 1)/m (m = 4 in the smallest cluster)
    assert max(reach["epoch"].values()) < 0.5, reach
    assert len(reach["budget"]) == 3 and min(reach["budget"].values()) > 0.7, reach
    # where it cannot act (random order) it says so and changes nothing
    proc = run_saerl(saerl_cmd(mini_world, tmp_path / "random", "--stage", "schedule", "--no-compare",
                               "--pace", "budget", "--schedule", "random"))
    assert proc.returncode == 0 and "--pace budget has no effect here" in proc.stderr, proc.stderr[-3000:]


def test_hub_ids_fail_fast_offline_naming_a_local_path(tmp_path):
    start = time.time()
    proc = run_saerl([sys.executable, str(ROOT / "saerl.py"), "--model", "Qwen/Qwen2.5-Math-1.5B",
                      "--out", str(tmp_path), "--stage", "problems"])
    assert proc.returncode != 0 and "local" in proc.stderr and "Traceback" not in proc.stderr
    assert time.time() - start < 60


@pytest.mark.parametrize("flags,arm", [(["--no-cluster", "--no-compare"], "saerl"),
                                       (["--schedule", "random", "--no-compare"], "saerl-random")])
def test_ablations_write_their_schedule(mini_world, tmp_path, flags, arm):
    proc = run_saerl(saerl_cmd(mini_world, tmp_path, "--stage", "schedule", *flags))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "mini"
    assert list(json.loads((run / "schedules.json").read_text())) == [f"{arm}-s0"]
    clusters = json.loads((run / "clusters.json").read_text())
    assert clusters["k"] == (1 if "--no-cluster" in flags else 3)
    assert not (run / "arms").exists()  # --stage schedule stops before training
    kept = {s["id"] for s in read_jsonl(run / "scores.jsonl") if s["kept"]}
    assert sorted(i for row in read_jsonl(run / "schedule.jsonl") for i in row["ids"]) == sorted(kept)
