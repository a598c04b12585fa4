"""export.py: the engineered order as TRL and verl datasets (issue 23). Row order, fields and prompts are
checked against hand-written expectations; the files read back through data.load_problems; and, where the
libraries are installed (a venv: see README "Other trainers"), the examples run against the real TRL
GRPOTrainer and verl's own dataset and sampler hook, which must consume the rows in SAERL's order."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from data import SYSTEM_PROMPT, Problem, load_problems, write_problems
from export import export_rows, export_run
from runtime import DataError, read_jsonl
from schedule import write_schedule

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = [Problem(f"p{i}", f"What is {i}+1?", str(i + 1), {"topic": "add"}) for i in range(12)]
BATCHES = [["p5", "p2", "p9"], ["p0", "p11", "p7"], ["p3", "p1", "p4"]]  # p6, p8, p10: dropped by the filter
ORDER = [pid for batch in BATCHES for pid in batch]


def test_trl_rows_in_training_order_with_the_template_as_messages():
    rows = export_rows(PROBLEMS, BATCHES, "trl", "qwen-math")
    assert [r["id"] for r in rows] == ORDER
    assert [(r["step"], r["position"]) for r in rows] == [(s, j) for s in range(3) for j in range(3)]
    assert rows[0] == {"prompt": [{"role": "system", "content": SYSTEM_PROMPT},
                                  {"role": "user", "content": "What is 5+1?"}],
                       "solution": "6", "answer": "6", "id": "p5", "step": 0, "position": 0}


def test_verl_rows_carry_ground_truth_and_where_they_belong():
    problems = PROBLEMS[:11] + [Problem("p11", "What is 11+1?", "12", {"data_source": "openai/gsm8k"})]
    rows = export_rows(problems, BATCHES, "verl", "chatml", data_source="train.jsonl")
    assert rows[3] == {"data_source": "train.jsonl", "prompt": [{"role": "user", "content": "What is 0+1?"}],
                       "ability": "math", "reward_model": {"style": "rule", "ground_truth": "1"},
                       "extra_info": {"index": 3, "id": "p0", "step": 1, "position": 0}}
    assert rows[4]["data_source"] == "openai/gsm8k"  # a verl dataset's own routing is kept
    assert [r["extra_info"]["index"] for r in rows] == list(range(9))


def test_bad_schedule_and_format_and_template_are_refused():
    with pytest.raises(DataError, match="schedule step 1 names problem id 'q9'"):
        export_rows(PROBLEMS, [["p1"], ["q9"]], "trl", "qwen-math")
    with pytest.raises(ValueError, match="unknown export format 'openrlhf'"):
        export_rows(PROBLEMS, BATCHES, "openrlhf", "qwen-math")
    with pytest.raises(ValueError, match="template 'plain' has none"):
        export_rows(PROBLEMS, BATCHES, "verl", "plain")
    assert export_rows(PROBLEMS, BATCHES, "trl", "plain")[0]["prompt"].startswith("What is 5+1?\n")


def make_run(tmp_path, template="chatml"):
    run = tmp_path / "run"
    write_problems(run / "problems.jsonl", PROBLEMS)
    write_schedule(run / "schedule.jsonl", BATCHES)
    (run / "config.json").write_text(json.dumps({"pipeline": {"train_data": "/data/train.jsonl"},
                                                 "grpo": {"template": template}}))
    return run


@pytest.mark.parametrize("fmt", ["trl", "verl"])
def test_exported_file_reads_back_as_the_scheduled_problems(tmp_path, fmt):
    [path, *_] = export_run(make_run(tmp_path), fmt)
    assert path == tmp_path / "run" / "export" / f"{fmt}.jsonl"
    back = load_problems(path, verbose=False)  # the message-list prompt and the nested ground truth read back
    by_id = {p.id: p for p in PROBLEMS}
    assert [(p.problem, p.answer) for p in back] == [(by_id[i].problem, by_id[i].answer) for i in ORDER]
    if fmt == "verl":
        assert read_jsonl(path)[0]["data_source"] == "train.jsonl"  # the run's training data, by name


def test_verl_parquet_when_pyarrow_is_there(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    paths = export_run(make_run(tmp_path), "verl")
    assert [p.name for p in paths] == ["verl.jsonl", "verl.parquet"]
    assert pq.read_table(paths[1]).to_pylist() == read_jsonl(paths[0])


def test_run_without_a_schedule_says_which_stage_to_run(tmp_path):
    write_problems(tmp_path / "problems.jsonl", PROBLEMS)  # the problems stage ran, the schedule stage did not
    with pytest.raises(DataError, match="no schedule.jsonl: run saerl.py up to its schedule stage"):
        export_run(tmp_path, "trl")


# ---- the examples against the real libraries, where they are installed ----


def tiny_model_dir(tmp_path):
    import toy

    tok = toy.char_tokenizer()
    toy.tiny_model(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shuffle", [False, True])
def test_trl_example_trains_the_rows_in_saerl_order(tmp_path, shuffle):
    pytest.importorskip("trl")
    example = load_example("trl_saerl_order")
    [data] = export_run(make_run(tmp_path), "trl")
    seen = []

    def record(completions, id, **_):  # TRL passes the dataset's columns to reward functions by name
        seen.append(list(id))
        return [0.0] * len(completions)

    trainer = example.build_trainer(data, str(tiny_model_dir(tmp_path)), batch_size=3, group_size=2,
                                    output_dir=tmp_path / "trl", reward_funcs=(record, example.saerl_reward),
                                    max_steps=3, max_completion_length=4, use_cpu=True, bf16=False,
                                    report_to="none", save_strategy="no", shuffle_dataset=shuffle, seed=1)
    trainer.train()
    steps = [[pid for pid in ids[::2]] for ids in seen]  # each prompt once per group of G = 2 completions
    assert all(ids[::2] == ids[1::2] for ids in seen)
    if shuffle:  # TRL's default: the check above is one that can fail
        assert steps != BATCHES
    else:
        assert steps == BATCHES


def test_trl_example_reward_is_saerls_judge():
    example = load_example("trl_saerl_order")
    completions = [[{"role": "assistant", "content": "so \\boxed{\\frac{1}{2}}"}], "the answer is 3"]
    assert example.saerl_reward(completions, ["0.5", "4"]) == [1.0, 0.0]


def test_verl_sampler_through_verls_own_hook(tmp_path):
    pytest.importorskip("verl.experimental.dataset.sampler", reason="verl with data.sampler.class_path (0.4.1-0.7.x)")
    from omegaconf import OmegaConf
    from torchdata.stateful_dataloader import StatefulDataLoader
    from verl.trainer.main_ppo import create_rl_dataset, create_rl_sampler
    from verl.utils.dataset.rl_dataset import collate_fn
    from transformers import AutoTokenizer

    paths = export_run(make_run(tmp_path), "verl")
    rows = read_jsonl(paths[0])
    shuffled = tmp_path / "shuffled.jsonl"  # the sampler follows extra_info, not the file's order
    shuffled.write_text("".join(json.dumps(rows[i]) + "\n" for i in (4, 8, 0, 6, 2, 7, 1, 5, 3)))
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 512, "filter_overlong_prompts": False,
                               "return_raw_chat": True, "shuffle": True, "dataloader_num_workers": 0,
                               "cache_dir": str(tmp_path / "cache"),
                               "sampler": {"class_path": str(ROOT / "examples" / "verl_saerl_sampler.py"),
                                           "class_name": "SAERLOrderSampler"}})
    tok = AutoTokenizer.from_pretrained(tiny_model_dir(tmp_path))
    dataset = create_rl_dataset([str(shuffled)], config, tok, None)
    sampler = create_rl_sampler(config, dataset)  # verl loads the class from the file and checks its type
    loader = StatefulDataLoader(dataset, batch_size=3, sampler=sampler, collate_fn=collate_fn, drop_last=True)
    steps = [[info["id"] for info in batch["extra_info"]] for batch in loader]
    assert steps == BATCHES
    scorer = load_example("verl_saerl_sampler").compute_score
    assert scorer("x", "<|im_start|>assistant\nso \\boxed{6}", "6") == 1.0 and scorer("x", "\\boxed{7}", "6") == 0.0


def test_examples_compile():
    import py_compile

    for name in ("trl_saerl_order", "verl_saerl_sampler"):
        py_compile.compile(str(ROOT / "examples" / f"{name}.py"), doraise=True)


def test_saerl_export_flag_writes_the_schedule_order(tmp_path):
    """`saerl.py --stage schedule --export trl` on a miniature toy world: the file is schedule.jsonl's order."""
    import subprocess

    import toy

    world = toy.build_world(tmp_path / "world", n_train=160, n_test=40, warm_steps=40, verbose=False)
    cmd = [sys.executable, str(ROOT / "saerl.py"), "--model", str(world.model_dir), "--train-data",
           str(world.train_path), "--benchmarks", f"toy={world.test_path}", "--out", str(tmp_path), "--name", "mini",
           "--preset", "toy", "--sae-width", "64", "--sae-k", "8", "--sae-tokens", "20000", "--label-size", "80",
           "--k", "3", "--batch-size", "8", "--probe-features", "64", "--stage", "schedule", "--export", "trl"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "mini"
    schedule = read_jsonl(run / "schedule.jsonl")
    rows = read_jsonl(run / "export" / "trl.jsonl")
    assert [r["id"] for r in rows] == [pid for batch in schedule for pid in batch["ids"]]
    by_id = {p.id: p for p in load_problems(world.train_path, verbose=False)}
    assert all(r["prompt"] == [{"role": "user", "content": by_id[r["id"]].problem}] for r in rows)  # toy: chatml
    assert all(r["answer"] == by_id[r["id"]].answer for r in rows)
