"""bench/gpu_check.py, the one prepared GPU check: on this CPU `--size small` runs every check and
records each one's verdict in the JSON; a check that raises is recorded as "error" and the next one
runs; the time budget and a missing toy world skip checks instead of failing the run."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402

CHECK_NAMES = ["1_left_pad", "2_engines", "3_decode_anatomy", "4_rollouts", "5_training", "6_toy_resume",
               "7_sae", "8_fsdp2"]
VERDICTS = ("ok", "fail", "error", "skipped")


@pytest.fixture(scope="module")
def mini_world(tmp_path_factory):
    """A toy-world folder as toy.load_world reads it (model/, train.jsonl, test.jsonl), without the
    warm start: the resume check compares two runs of the same model, so an untrained one will do."""
    import toy
    from data import write_problems

    root = tmp_path_factory.mktemp("mini_world")
    tok = toy.char_tokenizer()
    model = toy.tiny_model(tok, seed=0)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    write_problems(root / "train.jsonl", toy.make_problems(64, seed=0, prefix="train"))
    write_problems(root / "test.jsonl", toy.make_problems(16, seed=1, corrupt_frac=0.0, prefix="test"))
    return root


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_small_run_records_every_check(tmp_path, mini_world):
    out = tmp_path / "nested" / "g.json"  # --out may point anywhere; its folders are made
    gpu_check.main(["--size", "small", "--out", str(out), "--toy-world", str(mini_world)])
    result = read(out)
    for key in ("device", "torch", "transformers", "cuda", "size", "started", "ended"):
        assert key in result, key
    assert result["size"] == "small" and result["ended"] is not None
    assert list(result["checks"]) == CHECK_NAMES
    for name, entry in result["checks"].items():
        assert entry["verdict"].startswith(VERDICTS), (name, entry["verdict"])
    errors = {n: e.get("error") for n, e in result["checks"].items() if e["verdict"] != "ok"}
    assert not errors, errors  # on the CPU every check runs and passes
    runs = result["checks"]["1_left_pad"]["runs"]
    assert "fp32, as built" in runs
    for name, run in runs.items():
        assert run["logprobs_finite"] and run["grads_finite"] and run["prefill_real_finite"], name


def test_a_failing_check_is_an_error_and_the_next_one_runs(tmp_path):
    def broken(ctx):
        raise RuntimeError("boom")

    def fine(ctx):
        return {"value": 1}

    out = tmp_path / "g.json"
    result = gpu_check.run_checks([("broken", broken), ("fine", fine)], None, {"checks": {}}, out, budget_s=60)
    assert result["checks"]["broken"]["verdict"] == "error"
    assert "RuntimeError: boom" in result["checks"]["broken"]["error"]
    assert any("raise RuntimeError" in line for line in result["checks"]["broken"]["traceback"])
    assert result["checks"]["fine"]["verdict"] == "ok" and result["checks"]["fine"]["value"] == 1
    assert read(out) == json.loads(json.dumps(result))  # the file holds what ran


def test_the_json_is_written_after_each_check(tmp_path):
    out = tmp_path / "g.json"
    seen = []

    def first(ctx):
        return {}

    def second(ctx):
        seen.append(read(out)["checks"])  # what a kill at this moment would leave
        return {}

    gpu_check.run_checks([("first", first), ("second", second)], None, {"checks": {}}, out, budget_s=60)
    assert seen[0]["first"]["verdict"] == "ok" and seen[0]["second"]["verdict"] == "not run yet"


def test_no_check_starts_once_the_time_budget_is_spent(tmp_path):
    out = tmp_path / "g.json"
    result = gpu_check.main(["--size", "small", "--out", str(out), "--time-budget", "0"])
    assert [e["verdict"] for e in result["checks"].values()] == ["skipped: time budget"] * len(CHECK_NAMES)
    assert read(out)["checks"] == result["checks"]


def test_a_missing_toy_world_skips_the_toy_check(tmp_path):
    missing = tmp_path / "no_world"
    result = gpu_check.main(["--size", "small", "--out", str(tmp_path / "g.json"), "--toy-world", str(missing),
                             "--checks", "6"])
    assert result["checks"]["6_toy_resume"]["verdict"].startswith(f"skipped: no toy world at {missing}")
