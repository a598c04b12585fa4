"""Every flag of every entry point is checked before anything loads (issue 24): a value out of range, or a
combination that cannot run, stops with ONE line naming the flag, the value given and what is allowed
(exit status 2, as argparse's own errors; no traceback). The bad values are chosen by hand from what each
flag means; the cases a review found first, then every field of every config dataclass, with a check that
no field was forgotten."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate
import grpo
import sae
import run_folder
import saerl
import toy
from config import Config, GRPOConfig, resolve
from runtime import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def refuse(main, argv, capsys) -> str:
    """main(argv) must exit with status 2 and exactly one line on stderr; returns that line."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def nothing_loads(monkeypatch):
    """Loading a model or building the toy world fails the test: bad flags must be refused before either."""
    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded or the toy world built before the flags were checked")

    for module in (run_folder, grpo, evaluate, sae):
        monkeypatch.setattr(module, "load_model", loaded)
    monkeypatch.setattr(toy, "build_world", loaded)


# ------------------------------------------------------------------------------------------------ saerl.py
# (flags, what the one line must show): the review's cases, each of which used to run on, crash late or
# inside numpy, or exit 0 having done nothing
REVIEW = [(["--limit", "-5"], "--limit -5"),            # took problems[:-5], 1,195 of 1,200
          (["--seeds", "0"], "--seeds 0"),              # exited 0 having trained nothing
          (["--eval-every", "-1"], "--eval-every -1"),  # turned evaluation off
          (["--steps", "0"], "--steps 0"),              # FileNotFoundError
          (["--group-size", "1"], "--group-size 1"),    # failed after the step-0 evaluation
          (["--group-size", "1", "--adv-scale", "none"], "--group-size 1"),  # r - mean = 0: nothing to learn
          (["--quality-drop", "1.5"], "--quality-drop 1.5"),
          (["--mix", "2"], "--mix 2"),
          (["--top-m", "0"], "--top-m 0"),
          (["--label-size", "1"], "--label-size 1"),    # failed inside numpy
          (["--temperature", "0"], "--temperature 0")]  # "loss is nan" at step 0
EVERY_FIELD = [(["--sae-layer", "-1"], "--sae-layer -1"),
               (["--sae-id", "blocks.1.hook_resid_post"], "--sae-id blocks.1.hook_resid_post"),  # no --sae
               (["--sae-width", "0"], "--sae-width 0"),
               (["--sae-k", "0"], "--sae-k 0"),
               (["--sae-width", "64", "--sae-k", "65"], "--sae-k 65 with --sae-width 64"),
               (["--sae-k", "600"], "--sae-k 600 with --sae-width 512"),  # the toy world's width
               (["--sae-tokens", "0"], "--sae-tokens 0"),
               (["--limit", "0"], "--limit 0"),
               (["--k", "0"], "--k 0"),
               (["--k", "many"], "--k many"),
               (["--mix", "-0.1"], "--mix -0.1"),
               (["--quality-drop", "1"], "--quality-drop 1"),  # would drop every problem
               (["--difficulty-labels", "rollouts:0"], "--difficulty-labels rollouts:0"),
               (["--difficulty-labels", "field:"], "--difficulty-labels field:"),
               (["--difficulty-labels", "level"], "--difficulty-labels level"),
               (["--label-size", "4"], "--label-size 4"),  # 2 held out, 2 left: fit_alpha needs 3
               (["--probe-features", "0"], "--probe-features 0"),
               (["--schedule", "sorted"], "--schedule sorted"),
               (["--pace", "fast"], "--pace fast"),
               (["--seeds", "-1"], "--seeds -1"),
               (["--target", "1.5"], "--target 1.5"),
               (["--benchmarks", "math500,nosuch"], "--benchmarks math500,nosuch"),
               (["--eval-limit", "0"], "--eval-limit 0"),
               (["--max-eval-tokens", "0"], "--max-eval-tokens 0"),
               (["--eval-batch-size", "0"], "--eval-batch-size 0"),
               (["--eval-samples", "0"], "--eval-samples 0"),
               (["--eval-temperature", "0"], "--eval-temperature 0"),
               (["--preset", "ppo"], "--preset ppo"),
               (["--seed", "-1"], "--seed -1"),  # numpy's default_rng refuses negative seeds
               (["--name", "a/b"], "--name a/b"),
               (["--name", ""], "--name ''"),
               (["--stage", "all"], "--stage all"),
               (["--export", "openrlhf"], "--export openrlhf"),
               (["--export", "verl", "--template", "plain"], "--export verl with --template plain"),
               (["--oracle", "filter,topics"], "--oracle filter,topics"),
               (["--device", "gpu"], "--device gpu"),
               (["--train-data", "no/such/file.jsonl"], "--train-data no/such/file.jsonl")]
# fields with no range: free text, switches, or choices argparse already enforces
SAERL_FREE = {"model", "sae_model", "sae", "problem_field", "answer_field", "pooling", "no_curriculum", "no_cluster",
              "no_quality_filter", "compare", "out"}


@pytest.mark.parametrize("flags,shown", REVIEW + EVERY_FIELD, ids=[" ".join(f) for f, _ in REVIEW + EVERY_FIELD])
def test_saerl_refuses_a_bad_flag_in_one_line_before_anything_loads(flags, shown, tmp_path, capsys, nothing_loads):
    line = refuse(saerl.main, ["--out", str(tmp_path), *flags], capsys)
    assert line.startswith(f"saerl.py: {shown}") and ("expected" in line or "unknown benchmark" in line), line
    assert not any(tmp_path.iterdir())  # no run folder, no toy world


def test_every_saerl_flag_with_a_range_is_checked():
    named = {flags[0][2:].replace("-", "_") for flags, _ in REVIEW + EVERY_FIELD}
    own = {f.name for f in dataclasses.fields(saerl.Config)}
    assert own - named - SAERL_FREE == set()


def test_saerl_refuses_in_a_real_process_without_a_traceback(tmp_path):
    """--seeds 0 used to exit 0 having trained nothing."""
    proc = subprocess.run([sys.executable, str(ROOT / "saerl.py"), "--out", str(tmp_path), "--seeds", "0"], cwd=ROOT,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr == "saerl.py: --seeds 0: expected an integer >= 1\n", proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flags,shown", [(["--group-size", "1"], "--group-size 1"),
                                         (["--gpu-memory", "0"], "--gpu-memory 0"),
                                         (["--world-size", "0"], "--world-size 0")])
def test_plan_checks_the_flags_too(flags, shown, capsys, nothing_loads):
    assert refuse(saerl.main, ["--plan", *flags], capsys).startswith(f"saerl.py: {shown}")
    assert refuse(grpo.main, ["--model", "m", "--plan", *flags], capsys).startswith(f"grpo.py: {shown}")


# ------------------------------------------------------------------------------------------------ GRPOConfig
BAD_GRPO = dict(batch_size=0, group_size=1, num_steps=0, max_steps=0, template="qwen", temperature=0.0, top_p=0.0,
                max_new_tokens=0, gen_batch_size=0, rollout_engine="vllm", sync_every=0, rollout_dtype="int8",
                tis_cap=-1.0, parallel="zero3", loss_type="ppo", adv_scale="rank", eps_low=1.0, eps_high=-0.1,
                beta=-1.0, num_iterations=0, overlong="cut", lr=0.0, warmup_steps=-1, weight_decay=-0.1,
                adam_beta1=1.0, adam_beta2=-0.1, max_grad_norm=float("nan"), micro_batch_size=0,
                max_tokens_per_micro_batch=-1, packing="yes", logprob_chunk=0, seed=-1, save_every=0,
                keep_checkpoints=0, eval_every=-1, report_to="mlflow")
GRPO_FREE = {"skip_zero_std", "gradient_checkpointing", "bf16", "overlong_buffer"}  # the buffer: with soft, below


@pytest.mark.parametrize("name", sorted(BAD_GRPO))
def test_grpo_config_refuses_each_field_out_of_range_naming_its_flag(name):
    value = BAD_GRPO[name]
    with pytest.raises(ConfigError) as bad:
        GRPOConfig(**{name: value})
    message = str(bad.value)
    assert message.startswith(f"--{name.replace('_', '-')} {value}: expected ") and "\n" not in message, message
    assert f"GRPOConfig.{name}={value!r}" in message  # spelled as a field too, for a config built in code


def test_grpo_config_refuses_a_soft_overlong_buffer_longer_than_the_completion():
    with pytest.raises(ConfigError, match=r"^--overlong-buffer 512 with --max-new-tokens 16: expected"):
        GRPOConfig(overlong="soft", max_new_tokens=16, overlong_buffer=512)
    GRPOConfig(overlong="soft", max_new_tokens=16, overlong_buffer=16)


def test_every_grpo_field_with_a_range_is_checked():
    assert {f.name for f in dataclasses.fields(GRPOConfig)} - set(BAD_GRPO) - GRPO_FREE == set()
    for name in GRPOConfig.PRESETS:  # and the presets themselves pass
        GRPOConfig.preset(name)


# ------------------------------------------------------------------------------------------------ grpo.py
def grpo_argv(tmp_path, *flags):
    data = tmp_path / "train.jsonl"
    data.write_text('{"problem": "1+1", "answer": "2"}\n')
    return ["--model", "m", "--train-data", str(data), "--out", str(tmp_path / "out"), *flags]


@pytest.mark.parametrize("flags,shown", [(["--group-size", "1"], "--group-size 1"),
                                         (["--temperature", "0"], "--temperature 0"),
                                         (["--limit", "0"], "--limit 0"),
                                         (["--plan-prompt-tokens", "0"], "--plan-prompt-tokens 0"),
                                         (["--schedule", "no/such/schedule.jsonl"], "--schedule no/such")])
def test_grpo_cli_refuses_a_bad_flag_before_the_model_loads(flags, shown, tmp_path, capsys, nothing_loads):
    line = refuse(grpo.main, grpo_argv(tmp_path, *flags), capsys)
    assert line.startswith(f"grpo.py: {shown}") and "expected" in line, line
    assert not (tmp_path / "out").exists()


def test_grpo_cli_trains_a_given_schedule_with_max_steps_not_num_steps(tmp_path, capsys, nothing_loads):
    """--num-steps sizes the random schedule only; it used to be ignored silently beside --schedule."""
    schedule = tmp_path / "schedule.jsonl"
    schedule.write_text('{"step": 0, "ids": ["p0"]}\n')
    line = refuse(grpo.main, grpo_argv(tmp_path, "--schedule", str(schedule), "--num-steps", "2"), capsys)
    assert line.startswith(f"grpo.py: --num-steps 2 with --schedule {schedule}: expected --max-steps N")
    grpo.check_cli(grpo.build_parser().parse_args(grpo_argv(tmp_path, "--schedule", str(schedule),
                                                            "--max-steps", "2")))  # the documented way


def test_grpo_cli_requires_training_data(capsys, nothing_loads):
    assert refuse(grpo.main, ["--model", "m"], capsys).startswith("grpo.py: --train-data is required")


# ------------------------------------------------------------------------------------------------ evaluate.py
BAD_EVAL = [(["--max-new-tokens", "0"], "--max-new-tokens 0"),  # reported 0.0% and exited 0
            (["--n", "0"], "--n 0"),                            # divided by zero
            (["--n", "4"], "--n 4 with --temperature 0"),       # four copies of one greedy completion
            (["--temperature", "-1"], "--temperature -1"),
            (["--top-p", "0"], "--top-p 0"),
            (["--batch-size", "0"], "--batch-size 0"),
            (["--limit", "0"], "--limit 0"),
            (["--seed", "-1"], "--seed -1"),
            (["--template", "qwen"], "--template qwen"),
            (["--device", "gpu"], "--device gpu"),
            (["--benchmarks", "nosuch"], "--benchmarks nosuch"),
            (["--bench", "nosuch"], "--bench nosuch")]


@pytest.mark.parametrize("flags,shown", BAD_EVAL, ids=[" ".join(f) for f, _ in BAD_EVAL])
def test_evaluate_refuses_a_bad_flag_before_the_model_loads(flags, shown, tmp_path, capsys, nothing_loads):
    line = refuse(evaluate.main, ["--model", "m", "--out", str(tmp_path / "out"), *flags], capsys)
    assert line.startswith(f"evaluate.py: {shown}"), line
    assert "expected" in line or "unknown benchmark" in line, line


def test_evaluate_needs_a_benchmark(capsys, nothing_loads):
    line = refuse(evaluate.main, ["--model", "m", "--benchmarks", ""], capsys)
    assert line.startswith("evaluate.py: no benchmark to evaluate")


def test_every_evaluate_flag_with_a_range_is_checked():
    named = {flags[0][2:].replace("-", "_") for flags, _ in BAD_EVAL}
    assert {f.name for f in dataclasses.fields(evaluate.EvalConfig)} - named - {"model", "out"} == set()


# ------------------------------------------------------------------------------------------------ sae.py, toy.py
TRAIN = ["train", "--model", "m", "--data", "d.jsonl", "--layer", "1", "--out", "o"]
ENCODE = ["encode", "--model", "m", "--data", "d.jsonl", "--sae", "s", "--out", "o"]
BAD_SAE = [(TRAIN + ["--k", "0"], "--k 0"), (TRAIN + ["--d-sae", "8", "--k", "9"], "--k 9 with --d-sae 8"),
           (TRAIN + ["--d-sae", "0"], "--d-sae 0"), (TRAIN + ["--tokens", "0"], "--tokens 0"),
           (TRAIN + ["--batch-tokens", "0"], "--batch-tokens 0"), (TRAIN + ["--lr", "0"], "--lr 0"),
           (TRAIN + ["--seed", "-1"], "--seed -1"), (TRAIN[:5] + ["--layer=-1", "--out", "o"], "--layer -1"),
           (TRAIN + ["--limit", "0"], "--limit 0"), (TRAIN + ["--batch-size", "0"], "--batch-size 0"),
           (TRAIN + ["--max-length", "0"], "--max-length 0"), (TRAIN + ["--template", "qwen"], "--template qwen"),
           (TRAIN + ["--device", "gpu"], "--device gpu"),
           (ENCODE + ["--top-m", "0"], "--top-m 0"), (ENCODE + ["--layer=-1"], "--layer -1")]


@pytest.mark.parametrize("argv,shown", BAD_SAE, ids=[shown for _, shown in BAD_SAE])
def test_sae_refuses_a_bad_flag_before_the_model_loads(argv, shown, capsys, nothing_loads):
    assert refuse(sae.main, argv, capsys).startswith(f"sae.py: {shown}")


BAD_WORLD = [(["--warm-steps", "0"], "--warm-steps 0"),  # divided by zero
             (["--n-train", "0"], "--n-train 0"),        # built an empty world
             (["--n-test", "0"], "--n-test 0"), (["--seed", "-1"], "--seed -1"),
             (["--corrupt-frac", "1.5"], "--corrupt-frac 1.5"), (["--bare-frac", "1"], "--bare-frac 1")]


@pytest.mark.parametrize("flags,shown", BAD_WORLD, ids=[" ".join(f) for f, _ in BAD_WORLD])
def test_toy_refuses_a_bad_flag_before_building(flags, shown, tmp_path, capsys, nothing_loads):
    assert refuse(toy.main, ["--out", str(tmp_path / "w"), *flags], capsys).startswith(f"toy.py: {shown}")
    assert not (tmp_path / "w").exists()


def test_every_toy_flag_with_a_range_is_checked():
    named = {flags[0][2:].replace("-", "_") for flags, _ in BAD_WORLD}
    assert {f.name for f in dataclasses.fields(toy.WorldArgs)} - named - {"out"} == set()


def test_pace_default_depends_on_the_world_and_a_given_flag_wins():
    # the real run's budget is a third of its kept problems, so its curriculum is paced over the budget;
    # the toy keeps the engineered epoch's first steps
    assert resolve(Config())[0].pace == "epoch"
    assert resolve(Config(model="/some/local/model"))[0].pace == "budget"
    assert resolve(Config(model="/some/local/model", pace="epoch"))[0].pace == "epoch"
    assert resolve(Config(pace="budget"))[0].pace == "budget"
