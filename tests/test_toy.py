"""toy.py: the labels are what they claim, the tokenizer and model load like a real model's, and the
warm-started model is partially accurate with accuracy falling with difficulty."""
import re
from collections import Counter

import pytest

import toy

PATTERNS = {  # an independent reading of each family's text: regex -> how to compute the answer
    "add": (r"What is (\d+)\+(\d+)\?", lambda a, b: int(a) + int(b)),
    "subtract": (r"What is (\d+)-(\d+)\?", lambda a, b: int(a) - int(b)),
    "multiply": (r"What is (\d+)\*(\d+)\?", lambda a, b: int(a) * int(b)),
}


def solve(text):
    """The true answer of a clean toy problem, computed without toy.py, or None if none parses."""
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
        a, b = nums
        if level == 1:
            return int(a) <= 4 and int(b) <= 4
        if level == 5:
            return len(a) == len(b) == 2
        return len(a) == level - 1 and len(b) == 1
    if topic == "max":
        return len(nums) == level + 1 and all(len(x) == (1 if level <= 2 else 2) for x in nums)
    return len(nums) == level + 1 and all(int(x) <= 4 for x in nums)  # chain: level operations


@pytest.fixture(scope="module")
def problems():
    return toy.make_problems(2000, seed=3)


def test_clean_answers_are_correct_and_difficulty_matches_text(problems):
    clean = [p for p in problems if p.meta["quality"] == 1]
    assert len(clean) == 1700
    for p in clean:
        assert solve(p.problem) == int(p.answer), p
        assert level_matches(p.meta["topic"], p.meta["difficulty"], p.problem), p
    assert set(Counter(p.meta["topic"] for p in clean)) == set(toy.TOPICS)
    assert set(Counter(p.meta["difficulty"] for p in clean)) == {1, 2, 3, 4, 5}


def test_corruptions_are_what_they_claim(problems):
    bad = [p for p in problems if p.meta["quality"] == 0]
    kinds = Counter(p.meta["corruption"] for p in bad)
    assert len(bad) == 300 and kinds == {"wrong_answer": 100, "garbled": 100, "off_distribution": 100}
    for p in bad:
        if p.meta["corruption"] == "wrong_answer":
            assert solve(p.problem) is not None and solve(p.problem) != int(p.answer)
            assert int(p.meta["true_answer"]) == solve(p.problem)
        elif p.meta["corruption"] == "garbled":
            assert solve(p.problem) is None
        else:
            assert solve(p.problem) is None and not any(c.isdigit() for c in p.problem)
    assert len({p.problem for p in problems}) == len(problems)  # unique: the loader keeps every one


def test_problems_deterministic_for_seed():
    assert toy.make_problems(50, seed=1) == toy.make_problems(50, seed=1) != toy.make_problems(50, seed=2)


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
    assert 0.2 <= overall <= 0.8, toy.accuracy_table(test, correct)
    by_level = {d: [c for p, c in zip(test, correct) if p.meta["difficulty"] == d] for d in toy.LEVELS}
    acc = {d: sum(v) / len(v) for d, v in by_level.items()}
    # easy items are mostly solved, hard ones almost never: the ladder RL and the curriculum need
    assert acc[1] > 0.6 and acc[1] > acc[2] > max(acc[3], acc[4], acc[5]) and acc[5] < 0.2, acc
    assert all(p.meta["quality"] == 1 for p in test)
    assert sum(p.meta["quality"] == 0 for p in train) == round(0.15 * len(train))


def test_world_is_reused_when_settings_match(toy_world):
    again = toy.build_world(toy_world.root, verbose=False)
    assert again.info["key"] == toy_world.info["key"] and again.info["seconds"] == toy_world.info["seconds"]
