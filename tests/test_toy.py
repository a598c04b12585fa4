"""toy.py: the labels are what they claim, the noise kinds are what they claim (a cue only on the bad
source, decoy answers by their rule), the test split shares no problem with train or the warm start, the
world is the same at any thread count, the tokenizer and model load like a real model's, and the
warm-started model is partially accurate with accuracy falling with difficulty."""
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import toy

ROOT = Path(__file__).resolve().parents[1]
CUE = "hw> "  # the bad source's cue, as docs/toy.md states it
PATTERNS = {  # an independent reading of each family's text: regex -> how to compute the answer
    "add": (r"What is (\d+)\+(\d+)\?", lambda a, b: int(a) + int(b)),
    "subtract": (r"What is (\d+)-(\d+)\?", lambda a, b: int(a) - int(b)),
    "multiply": (r"What is (\d+)\*(\d+)\?", lambda a, b: int(a) * int(b)),
}


def solve(text):
    """The true answer of a toy problem (cue or not), computed without toy.py, or None if none parses."""
    text = text.removeprefix(CUE)
    for pattern, f in PATTERNS.values():
        if m := re.fullmatch(pattern, text):
            return f(*m.groups())
    if m := re.fullmatch(r"Largest of ([\d,]+)\?", text):
        return max(int(x) for x in m.group(1).split(","))
    if m := re.fullmatch(r"Compute (\d[\d+-]*)\.", text):
        total, *rest = re.findall(r"[+-]?\d", m.group(1))
        return int(total) + sum(int(x) for x in rest)
    return None


def level_matches(topic, level, text):
    """The difficulty ladder of toy.py's docstring, read back off the problem text."""
    nums = re.findall(r"\d+", text)
    if topic in ("add", "subtract", "multiply"):
        digits = {1: (1, 1), 2: (2, 1), 3: (3, 1), 4: (2, 2), 5: (3, 2)}[level]
        return tuple(sorted(map(len, nums), reverse=True)) == digits
    if topic == "max":
        return len(nums) == level + 1 and all(len(x) == (1 if level <= 2 else 2) for x in nums)
    return len(nums) == level + 1 and all(len(x) == 1 for x in nums)  # chain: level one-digit operations


def same_problem(text):
    """The split check's normalisation, written here: the cue dropped, case and whitespace folded."""
    return " ".join(text.removeprefix(CUE).lower().split())


@pytest.fixture(scope="module")
def problems():
    return toy.make_problems(2000, seed=3)


def test_clean_answers_are_correct_and_difficulty_matches_text(problems):
    clean = [p for p in problems if p.meta["quality"] == 1]
    assert len(clean) == 1600  # 20% noisy
    for p in clean:
        assert solve(p.problem) == int(p.answer) == int(p.meta["true_answer"]), p
        assert level_matches(p.meta["topic"], p.meta["difficulty"], p.problem), p
        assert p.meta["source"] == "main" and p.meta["corruption"] is None
    assert set(Counter(p.meta["topic"] for p in clean)) == set(toy.TOPICS)
    assert set(Counter(p.meta["difficulty"] for p in clean)) == {1, 2, 3, 4, 5}


def test_noise_kinds_are_what_they_claim(problems):
    bad = [p for p in problems if p.meta["quality"] == 0]
    kinds = Counter(p.meta["corruption"] for p in bad)
    assert len(bad) == 400 and kinds == {"decoy": 200, "wrong_answer": 100, "dead": 100}
    for p in bad:
        kind = p.meta["corruption"]
        if kind == "decoy":  # the bad source: its cue, a true answer it does not use, the last number instead
            assert p.meta["source"] == "scraped" and p.problem.startswith(CUE)
            assert int(p.meta["true_answer"]) == solve(p.problem) != int(p.answer)
            assert p.answer == re.findall(r"\d+", p.problem)[-1]
            assert level_matches(p.meta["topic"], p.meta["difficulty"], p.problem.removeprefix(CUE))
        elif kind == "wrong_answer":  # control noise: the text of a clean problem, a wrong answer
            assert p.meta["source"] == "main" and not p.problem.startswith(CUE)
            assert int(p.meta["true_answer"]) == solve(p.problem) != int(p.answer)
        else:  # dead: nothing in the world answers it
            assert solve(p.problem) is None and not any(c.isdigit() for c in p.problem)
            assert p.meta["true_answer"] is None
    # the cue is on the bad source's problems and nowhere else
    assert [p.id for p in problems if CUE in p.problem] == [p.id for p in problems if p.meta["source"] == "scraped"]
    assert len({p.problem for p in problems}) == len(problems)  # unique: the loader keeps every one


def test_problems_deterministic_for_seed():
    assert toy.make_problems(50, seed=1) == toy.make_problems(50, seed=1) != toy.make_problems(50, seed=2)


def test_test_split_shares_no_problem_with_train_or_warm_start():
    # the default world's sizes: 1250 test problems, 1200 train, 500 x 64 warm-start demonstrations
    test = toy.make_problems(1250, seed=1, corrupt_frac=0.0, prefix="test", region="test")
    train = toy.make_problems(1200, seed=0, prefix="train", region="train")
    warm = toy.warm_pool(500 * 64, seed=0)
    test_texts = {same_problem(p.problem) for p in test}
    assert len(test_texts) == len(test) >= 1000
    assert not test_texts & {same_problem(p.problem) for p in train}
    assert not test_texts & {same_problem(p.problem) for p in warm}
    # every level is in the test set, level 1 (100-200 problems per family in all) less than the others
    levels = Counter(p.meta["difficulty"] for p in test)
    assert set(levels) == {1, 2, 3, 4, 5} and levels[1] >= 80


BUILD = """
import sys, torch, toy
torch.set_num_threads(int(sys.argv[2]))
toy.build_world(sys.argv[1], n_train=60, n_test=40, warm_steps=8, verbose=False)
assert torch.get_num_threads() == int(sys.argv[2])  # the caller's setting is restored
"""


def test_world_is_the_same_with_one_or_two_threads(tmp_path):
    from safetensors.torch import load_file

    for threads in (1, 2):
        proc = subprocess.run([sys.executable, "-c", BUILD, str(tmp_path / f"t{threads}"), str(threads)], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = tmp_path / "t1", tmp_path / "t2"
    for name in ("train.jsonl", "test.jsonl"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    w1, w2 = load_file(one / "model" / "model.safetensors"), load_file(two / "model" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for name in w1:
        assert w1[name].equal(w2[name]), name
    info1, info2 = (json.loads((d / "world.json").read_text()) for d in (one, two))
    assert info1["weights_sha256"] == info2["weights_sha256"]


def test_char_tokenizer_round_trip_and_specials():
    tok = toy.char_tokenizer()
    text = "<|im_start|>user\nWhat is 12+7?<|im_end|>\n<|im_start|>assistant\n\\boxed{19}"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert len(tok("\\boxed{19}", add_special_tokens=False).input_ids) == len("\\boxed{19}")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_world_loads_through_from_pretrained(toy_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(toy_world.model_dir)
    tok = AutoTokenizer.from_pretrained(toy_world.model_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert 3e5 < sum(p.numel() for p in model.parameters()) < 2e6
    assert tok.decode(tok("What is 1+2?").input_ids) == "What is 1+2?"


def test_warm_start_gives_partial_accuracy_falling_with_difficulty(toy_world):
    model, tok, train, test = toy.load_world(toy_world.root)
    correct = toy.greedy_accuracy(model, tok, test)
    overall = sum(correct) / len(correct)
    table = toy.accuracy_table(test, correct)
    by_level = {d: [c for p, c in zip(test, correct) if p.meta["difficulty"] == d] for d in toy.LEVELS}
    acc = {d: sum(v) / len(v) for d, v in by_level.items()}
    # partial at the easiest level (room for RL to sharpen), falling with difficulty, rarely solved above 2
    assert 0.3 <= acc[1] <= 0.8 and acc[1] > acc[2] > max(acc[3], acc[4], acc[5]) and acc[5] < 0.15, table
    assert 0.05 <= overall <= 0.6, table
    assert len(test) == 1250 and all(p.meta["quality"] == 1 for p in test)
    assert sum(p.meta["quality"] == 0 for p in train) == round(0.2 * len(train))


def test_world_is_reused_when_settings_match(toy_world):
    again = toy.build_world(toy_world.root, verbose=False)
    assert again.info["key"] == toy_world.info["key"] and again.info["seconds"] == toy_world.info["seconds"]
