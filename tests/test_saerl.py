"""Specification of saerl.py's data operations: automatic quality labels and corrupted copies, the
quality filter (the batch schedule is specified in test_schedule.py, the cluster summary in test_report.py);
and `python saerl.py` end to end on a miniature toy world (outputs, caching, resuming, flags, stage times).
Expected values come from hand derivations or slow obvious re-implementations written here, never from the
code under test."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import run_folder
import saerl
import toy
from config import STAGES
from conftest import assert_close_to_scale
from data import Problem, load_problems
from features import PooledFeatures
from runtime import read_jsonl


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


def banana_problems(n=40):
    """n problems without a 'quality' field; every 4th reference answer is prose, not math."""
    problems = make_problems(n)
    for p in problems[::4]:
        p.answer = "banana split"
    return problems


def test_unparseable_reference_answers_are_labelled_suspect():
    problems = banana_problems()
    expected = [0 if i % 4 == 0 else 1 for i in range(40)]  # by construction above
    assert saerl.auto_quality_labels(problems, parse_ok=saerl.answers_parse(problems)) == expected


def test_fit_quality_counts_unparseable_answers_as_negatives():
    """The quality stage itself (fit_quality) on a dataset with no 'quality' field: its negatives are the
    10 "banana split" problems plus the corrupted copies, each copy encoded once."""
    problems = banana_problems()
    gen = torch.Generator().manual_seed(0)

    def features(n):
        values, indices = torch.rand(n, 8, generator=gen), torch.stack([torch.randperm(32, generator=gen)[:8]
                                                                        for _ in range(n)])
        return PooledFeatures(values, indices, 32)

    copies = []
    encoder = lambda batch: copies.extend(batch) or features(len(batch))  # noqa: E731
    cfg = saerl.Config(probe_features=32, seed=0)
    out = saerl.fit_quality(cfg, problems, features(40), {"subset": list(range(40))}, encoder)
    assert copies and out["n_labelled"] == 40 + len(copies)
    assert out["n_negative"] == 10 + len(copies)


def test_quality_filter_drops_lowest_with_index_ties():
    scores = [0.5, 0.1, 0.9, 0.1, 0.3, 0.7, 0.2, 0.8, 0.6, 0.4]
    # ⌊0.3·10⌋ = 3 dropped: the two 0.1s (rows 1 and 3) and 0.2 (row 6)
    assert saerl.quality_filter(scores, 0.3) == [0, 2, 4, 5, 7, 8, 9]
    assert saerl.quality_filter([1.0, 1.0, 1.0], 0.34) == [1, 2]  # tie: lower index goes first
    assert saerl.quality_filter(scores, 0.0) == list(range(10))


# ------------------------------------------------------------------------------------------------
# `python saerl.py` end to end on a miniature toy world: outputs, caching, resuming, flags
# ------------------------------------------------------------------------------------------------


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


def run_saerl(cmd, env_extra=None, **kw):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env_extra or {}))
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
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    for arm in ("vanilla-s0", "saerl-s0"):  # each arm's trained policy loads with from_pretrained
        final = AutoModelForCausalLM.from_pretrained(run / "arms" / arm / "final").state_dict()
        last = load_file(str(run / "arms" / arm / "checkpoints" / "step_000004" / "model.safetensors"))
        assert all(torch.equal(final[k], v) for k, v in last.items())
    saerl_log = read_jsonl(run / "arms" / "saerl-s0" / "train_log.jsonl")
    assert [row["problem_ids"] for row in saerl_log] == [row["ids"] for row in schedule[:4]]
    vanilla_ids = {i for row in read_jsonl(run / "arms" / "vanilla-s0" / "train_log.jsonl") for i in row["problem_ids"]}
    assert vanilla_ids <= {p.id for p in problems}

    report = (run / "report.md").read_text()
    assert "vanilla" in report and "saerl" in report and "Spearman" in report and "Kept" in report
    assert "| 4 |" in report  # the accuracy table reaches the last step
    assert "avg@4 (mean reward of 4 samples at temperature 1)" in report  # the toy preset's evaluation
    assert (run / "clusters.md").read_text().count("## Cluster") == 3 or "Cluster" in (run / "clusters.md").read_text()

    times = report[report.index("## Where the time went"):]  # each stage's wall time, in stage order
    assert [line.split("|")[1].strip() for line in times.splitlines()[4:13]] == list(STAGES[:-1])
    assert "stage times: problems" in proc.stderr

    again = run_saerl(saerl_cmd(mini_world, tmp_path))  # same command: every stage is cached
    assert again.returncode == 0, again.stderr[-3000:]
    assert "computing" not in again.stderr and again.stderr.count("cached") >= 8
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in
            (run / "report.md").read_text().split("## Where the time went")[1].splitlines()[4:13]}
    assert all(note.strip() == "cached" for _, note in rows.values()), rows  # shown as cached, and quick
    # (the sae and train stages still load a model and read its checkpoints back)
    assert all(float(t.split()[0]) < 5.0 for stage, (t, _) in rows.items() if stage not in ("sae", "train")), rows


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_torchrun_two_ranks_run_the_pipeline_as_one_process(mini_world, tmp_path):
    """torchrun --nproc_per_node 2 saerl.py: rank 0 computes the data stages, rank 1 reads them back,
    both train (FSDP2 shards) and evaluate their shares; one process on the same data stages (copied,
    so only training runs) ends at the same weights and the same evaluation."""
    import shutil

    from safetensors.torch import load_file

    flags = ["--steps", "2", "--gen-batch-size", "4", "--parallel", "fsdp2"]
    two = run_saerl([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                     *saerl_cmd(mini_world, tmp_path / "two", *flags)[1:]], env_extra={"OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    assert "[saerl rank 0] sae: computing" in two.stderr and "[saerl rank 1] sae: cached" in two.stderr
    assert "[saerl rank 1] features: computing" not in two.stderr
    assert (tmp_path / "two" / "mini" / "report.md").exists()
    shutil.copytree(tmp_path / "two" / "mini", tmp_path / "one" / "mini",
                    ignore=lambda d, names: [n for n in names if n in ("arms", "report.md", "report.svg")])
    one = run_saerl(saerl_cmd(mini_world, tmp_path / "one", *flags), env_extra={"OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-3000:]
    assert "schedule: cached" in one.stderr and "train: cached" not in one.stderr
    for arm in ("vanilla-s0", "saerl-s0"):
        a, b = (load_file(str(tmp_path / d / "mini" / "arms" / arm / "checkpoints" / "step_000002" / "model.safetensors"))
                for d in ("two", "one"))
        assert a.keys() == b.keys()
        scale = max(float(b[k].abs().max()) for k in b)  # the model's scale, not one small bias's
        for k in a:
            assert_close_to_scale(a[k], b[k], rel=1e-5, msg=f"{arm} {k}", scale=scale)
        evals = [read_jsonl(tmp_path / d / "mini" / "arms" / arm / "eval_log.jsonl") for d in ("two", "one")]
        assert evals[0] == evals[1] and [r["step"] for r in evals[0]] == [0, 2]


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
    floor = {}  # pace -> per cluster, the least quantile the last stratum's pick can have
    for pace in ("epoch", "budget"):
        proc = run_saerl(saerl_cmd(mini_world, tmp_path / pace, "--stage", "schedule", "--no-compare",
                                   "--pace", pace))
        assert proc.returncode == 0, proc.stderr[-3000:]
        run = tmp_path / pace / "mini"
        scores = {s["id"]: s for s in read_jsonl(run / "scores.jsonl") if s["kept"]}
        batches = json.loads((run / "schedules.json").read_text())["saerl-s0"]
        ids = [i for b in batches for i in b]
        assert [len(b) for b in batches] == [8] * 4 and len(set(ids)) == 32  # --steps 4 x --batch-size 8
        reach[pace], floor[pace] = {}, {}
        for c in {scores[i]["cluster"] for i in ids}:
            mine = sorted(s["difficulty"] for s in scores.values() if s["cluster"] == c)
            top = max(scores[i]["difficulty"] for i in ids if scores[i]["cluster"] == c)
            reach[pace][c] = sum(d <= top for d in mine) / len(mine)
            # m picks, one per stratum of the cluster's n problems in easy-to-hard order: the last
            # stratum starts at position floor((m - 1) n / m), so the last pick has at least that
            # many problems below it, plus itself
            m, n = sum(scores[i]["cluster"] == c for i in ids), len(mine)
            floor[pace][c] = ((m - 1) * n // m + 1) / n
    # 32 of ~144 kept problems: the epoch's first 4 batches stop in each cluster's easier part; the
    # paced subset reaches each cluster's hardest stratum
    assert max(reach["epoch"].values()) < 0.5, reach
    assert len(reach["budget"]) == 3, reach
    assert all(reach["budget"][c] >= floor["budget"][c] > 0.5 for c in reach["budget"]), (reach, floor)
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


def test_pooling_max_recomputes_the_features_and_bounds_the_mean(mini_world, tmp_path):
    proc = run_saerl(saerl_cmd(mini_world, tmp_path, "--stage", "features"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    mean = PooledFeatures.load(tmp_path / "mini" / "features.safetensors").dense()
    proc = run_saerl(saerl_cmd(mini_world, tmp_path, "--stage", "features", "--pooling", "max"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sae: cached" in proc.stderr and "features: computing" in proc.stderr
    top = PooledFeatures.load(tmp_path / "mini" / "features.safetensors").dense()
    # codes are >= 0, so a feature's largest code over the tokens is at least its mean; d_sae 64 < top-m
    # keeps every feature, and on tokens that differ the two poolings differ
    assert top.shape == mean.shape and bool((top >= mean - 1e-6).all()) and not torch.allclose(top, mean)


def test_main_sets_the_cuda_allocator_before_anything_runs(monkeypatch):
    """expandable_segments must be in the environment before CUDA starts (grpo.py's main sets it too)."""
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    seen = {}

    def fake_run(cfg, overrides):
        seen["conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")

    monkeypatch.setattr(saerl, "run", fake_run)
    monkeypatch.setattr(saerl, "init_distributed", lambda **kw: (0, 1))
    saerl.main([])
    assert seen["conf"] == "expandable_segments:True"


def test_the_sae_stage_model_is_freed_before_training(mini_world, tmp_path, monkeypatch):
    """Training must not run beside the SAE stage's copy of the model (+2.9 GiB at 1.5B, unplanned)."""
    import gc
    import weakref

    loaded = []
    real_load_once = saerl.load_once

    def recording_load_once(models, name, device):
        pair = real_load_once(models, name, device)
        loaded.append(weakref.ref(pair[0]))
        return pair

    class Stop(Exception):
        pass

    def check_then_stop(*args, **kwargs):
        gc.collect()
        raise Stop([ref() is None for ref in loaded])

    monkeypatch.setattr(saerl, "load_once", recording_load_once)
    monkeypatch.setattr(saerl, "train_arms", check_then_stop)
    argv = saerl_cmd(mini_world, tmp_path)[2:]
    with pytest.raises(Stop) as stopped:
        saerl.main(argv)
    freed = stopped.value.args[0]
    assert freed and all(freed), freed


# ------------------------------------------------------------------------------------------------
# One run per run folder, Ctrl-C, a run started in another directory (issue 24)
# ------------------------------------------------------------------------------------------------


def start_saerl(cmd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc, seconds=500):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None and not condition():
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before the test could act: " + proc.stderr.read()[-2000:]


def test_a_second_run_on_the_same_folder_stops_at_once_naming_the_first(mini_world, tmp_path):
    """Two identical commands used to both exit 0, their train_log.jsonl holding steps 0,1,0,2,1,3,..."""
    cmd = saerl_cmd(mini_world, tmp_path)
    lock = tmp_path / "mini" / "run.lock"
    first = start_saerl(cmd)
    try:
        wait_for(lambda: lock.exists() and f'"pid": {first.pid}' in lock.read_text(), first)
        start = time.time()
        second = run_saerl(cmd)
        assert second.returncode == 1 and time.time() - start < 60, second.stderr[-2000:]
        assert f"saerl.py: {tmp_path / 'mini'} is in use by pid {first.pid} on " in second.stderr, second.stderr[-2000:]
        assert "Traceback" not in second.stderr and "computing" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    third = run_saerl(saerl_cmd(mini_world, tmp_path, "--stage", "problems"))  # the dead run's lock is free
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"taking over the lock of pid {first.pid} " in third.stderr


def test_ctrl_c_stops_with_one_line_saying_where_to_resume(mini_world, tmp_path):
    proc = start_saerl(saerl_cmd(mini_world, tmp_path, "--steps", "6"))
    arm = tmp_path / "mini" / "arms" / "vanilla-s0"
    wait_for(lambda: (arm / "train_log.jsonl").exists() and len(read_jsonl(arm / "train_log.jsonl")) >= 2, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    newest = max(p.name for p in (arm / "checkpoints").iterdir() if p.name.startswith("step_"))  # --save-every 1
    assert stderr.strip().splitlines()[-1] == (f"saerl.py: interrupted during stage train (arm vanilla-s0, last "
                                               f"checkpoint {newest}); run the same command to resume")
    assert (tmp_path / "mini" / "run.lock").read_text() == ""  # a clean exit: nothing left for the next run


def test_a_run_from_another_directory_says_where_its_folders_are(tmp_path, monkeypatch, capsys):
    """--out is relative to the current directory: a toy run started elsewhere builds a toy world there
    (about 100 s); it says so with full paths, and points at the repository's world when one exists."""
    elsewhere, repo_world = tmp_path / "elsewhere", tmp_path / "repo" / "runs" / "toy_world"
    elsewhere.mkdir()
    repo_world.mkdir(parents=True)
    (repo_world / "world.json").write_text("{}")
    built = []

    class Stop(Exception):
        pass

    def build_world(out_dir, **kwargs):
        built.append(Path(out_dir).resolve())
        raise Stop

    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(run_folder, "REPO_TOY_WORLD", repo_world)
    monkeypatch.setattr(run_folder.toy, "build_world", build_world)
    with pytest.raises(Stop):
        saerl.main(["--stage", "problems"])
    assert built == [elsewhere / "runs" / "toy_world"]
    err = capsys.readouterr().err
    assert f"run folder {elsewhere / 'runs' / 'toy'}\n" in err
    assert (f"building the toy world in {elsewhere / 'runs' / 'toy_world'} (about 100 s on a CPU, once for this "
            f"--out); {repo_world} holds one already: --out {repo_world.parent} uses it") in err


def test_oracle_ablations_use_the_known_truth(mini_world, tmp_path):
    # --oracle replaces each estimator by the toy world's truth: the filter drops exactly the known-bad
    # rows, the "predicted" difficulty is the known difficulty, the clusters are the known topics
    proc = run_saerl(saerl_cmd(mini_world, tmp_path, "--oracle", "filter,difficulty,clusters", "--stage", "clusters"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "mini"
    problems = load_problems(mini_world.train_path, verbose=False)
    quality = json.loads((run / "quality.json").read_text())
    assert quality["kept"] == [i for i, p in enumerate(problems) if p.meta["quality"] == 1]
    assert 0 < len(quality["kept"]) < len(problems)
    difficulty = json.loads((run / "difficulty.json").read_text())
    assert difficulty["predicted"] == [float(p.meta["difficulty"]) for p in problems]
    clusters = json.loads((run / "clusters.json").read_text())
    topics = [problems[i].meta["topic"] for i in quality["kept"]]
    assert clusters["k"] == len(set(topics))
    same_topic = {(a, b) for a in range(len(topics)) for b in range(len(topics)) if topics[a] == topics[b]}
    same_label = {(a, b) for a in range(len(topics)) for b in range(len(topics))
                  if clusters["labels"][a] == clusters["labels"][b]}
    assert same_topic == same_label


def test_mixed_schedule_arm_trains_batches_mixed_over_clusters(mini_world, tmp_path):
    proc = run_saerl(saerl_cmd(mini_world, tmp_path, "--schedule", "mixed", "--stage", "schedule"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "mini"
    schedules = json.loads((run / "schedules.json").read_text())
    assert set(schedules) == {"vanilla-s0", "saerl-mixed-s0"}
    cluster_of = {s["id"]: s["cluster"] for s in read_jsonl(run / "scores.jsonl") if s["kept"]}
    first = schedules["saerl-mixed-s0"][0]
    assert len({cluster_of[i] for i in first}) > 1  # the first batch already holds several clusters
