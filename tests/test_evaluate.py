"""verifier.py and evaluate.py: answer extraction, safety bounds, reward, gold reports, intervals, generation and evaluation.

The equivalence rules themselves are specified by the hand-judged table in test_verifier_table.py. Here the
end-to-end tests use a ~40k-parameter Qwen2 with a character tokenizer, trained for a fraction of a second to
answer every prompt with \\boxed{1}: its verdicts are then known without trusting the code under test.
"""
import json
import re
import time
from pathlib import Path

import pytest
import torch

import data
import evaluate as ev
from verifier import extract_answer, gold_parse_report, is_equiv, math_reward, normalize_answer, verify

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCH = REPO.parent / "shared" / "data" / "bench"


# ------------------------------------------------------------------------------------------------ extraction
@pytest.mark.parametrize("text,expected", [
    ("First \\boxed{3}, then on reflection \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("so $\\boxed{\\frac{1}{\\sqrt{2}}}$", "\\frac{1}{\\sqrt{2}}"),
    ("\\fbox{42}", "42"),
    ("the result is \\boxed 5$ done", "5"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("\\boxed{3} and then \\boxed{4", "3"),  # the last *balanced* box
    ("So the answer is 42.", "42"),
    ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
    ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18\n#### 18", "18"),
    ("We have 3 apples and 5 pears; I am not sure.", None),  # never the first number of a solution
    ("", None),
    (None, None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("raw,expected", [
    ("\\left( \\dfrac{1}{2}, 3 \\right).", "(\\frac{1}{2},3)"),
    ("$x = \\frac12$", "\\frac{1}{2}"),
    ("1{,}000\\text{ cm}", "1000"),
    ("30^{\\circ}", "30"),
    ("12\\%", "12"),
    ("\\text{No Solution}", "No Solution"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


# ------------------------------------------------------------------------------------------------ bounds
TOWER = "5^{5^{5^{5}}}"
NESTED = "{" * 100_000 + "1" + "}" * 100_000
MEGABYTE = "1" * 1_000_000
ADVERSARIAL = {
    "tower": TOWER,
    "tower-boxed": f"\\boxed{{{TOWER}}}",
    "nested-braces": NESTED,
    "nested-boxed": "\\boxed" + NESTED,
    "megabyte-digits": MEGABYTE,
    "megabyte-boxes": "\\boxed{" * 150_000,
    "megabyte-parens": "(" * 1_000_000,
    "huge-sci": "1e1000000",
    "huge-power": "10^{10^{6}}",
    "factorial": "100000!",
}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_inputs_return_within_50ms(name):
    text = ADVERSARIAL[name]
    for call in (lambda: verify(text, "5"), lambda: is_equiv(text, "3125"), lambda: is_equiv("7", text),
                 lambda: is_equiv(text, text + "1"), lambda: math_reward(text, text)):
        start = time.perf_counter()
        call()
        assert time.perf_counter() - start < 0.05, name


def test_tower_is_not_evaluated_but_not_equal_to_small_numbers():
    assert not is_equiv(TOWER, "5")
    assert not is_equiv(TOWER, "3125")
    assert is_equiv("5^{5}", "3125")  # small powers are computed exactly


def test_large_exact_powers_stay_exact():
    assert is_equiv("2^{100}", "1267650600228229401496703205376")
    assert not is_equiv("2^{100}", "1267650600228229401496703205377")


def test_no_code_execution_primitives_in_source():
    pattern = re.compile(r"(^|[^.\w])(eval|exec|sympify|parse_expr)\(")
    for path in REPO.glob("*.py"):  # model output reaches verifier.py, but no module may run text as code
        hits = [line for line in path.read_text().splitlines() if pattern.search(line)]
        assert not hits, (path.name, hits)


# ------------------------------------------------------------------------------------------------ reward
def test_math_reward_is_one_for_a_correct_boxed_answer_and_zero_otherwise():
    assert math_reward("Adding up, \\boxed{28800}.", "28800") == 1.0
    assert math_reward("Adding up, \\boxed{28801}.", "28800") == 0.0
    assert math_reward("I give up.", "28800") == 0.0


def test_empty_gold_never_rewards_and_warns():
    with pytest.warns(UserWarning, match="empty"):
        assert verify("\\boxed{}", "") is False
    with pytest.warns(UserWarning):
        assert math_reward("\\boxed{ }", "  $ $ ") == 0.0


def test_math_reward_is_fast_for_plain_integers():
    pairs = [(f"so the total is \\boxed{{{i * 7}}}", str(i * 7 + (i % 2))) for i in range(2000)]
    start = time.perf_counter()
    rewards = [math_reward(c, g) for c, g in pairs]
    assert time.perf_counter() - start < 2.0
    assert sum(rewards) == 1000  # every even i is right, every odd i is off by one


def test_gold_parse_report_counts_kinds_and_shows_unparsed_examples():
    golds = ["12", "\\frac{1}{2}", "x^2+1", "(1,2]", "(1,2)", "\\{1,2\\}", "B", "\\text{even}", "", "1,2,10",
             "\\begin{pmatrix}1\\\\2\\end{pmatrix}"]
    report = gold_parse_report(golds)
    assert report["total"] == 11
    assert report["counts"] == {"number": 2, "expression": 1, "interval": 1, "tuple": 1, "set": 1, "choice": 1,
                                "text": 1, "empty": 1, "list": 1, "matrix": 1}
    assert report["unparsed"] == 2
    assert report["examples"] == ["\\text{even}", ""]


# ------------------------------------------------------------------------------------------------ statistics
def test_wilson_interval_matches_published_values():
    low, high = ev.wilson_interval(8, 10)  # textbook: 0.490 - 0.943
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    low, high = ev.wilson_interval(0, 10)  # upper bound z^2/(n+z^2) = 3.8416/13.8416
    assert low == 0.0 and high == pytest.approx(0.27754, abs=1e-4)


def test_mean_interval_is_normal_over_problems():
    # mean 0.5, sample sd sqrt(1/6) = 0.40825, half width 1.96 * 0.40825 / 2 = 0.40008
    low, high = ev.mean_interval([0.0, 1.0, 0.5, 0.5])
    assert low == pytest.approx(0.09992, abs=1e-4) and high == pytest.approx(0.90008, abs=1e-4)


def test_markdown_table_has_one_row_per_benchmark_and_a_mean():
    results = [{"benchmark": "a", "metric": "pass@1", "n_problems": 10, "accuracy": 0.5, "ci_low": 0.2, "ci_high": 0.8},
               {"benchmark": "b", "metric": "pass@1", "n_problems": 30, "accuracy": 0.25, "ci_low": 0.1,
                "ci_high": 0.4}]
    lines = ev.markdown_table(results).splitlines()
    assert lines[2] == "| a | pass@1 | 10 | 50.0 | 20.0 – 80.0 |"
    assert lines[4] == "| mean | | 40 | 37.5 | |"


# ------------------------------------------------------------------------------------------------ benchmarks
def test_registry_names_hub_ids_and_local_files():
    assert ev.resolve_benchmark("math500")[1].source == "HuggingFaceH4/MATH-500"
    assert ev.resolve_benchmark("gsm8k")[1].source == "openai/gsm8k:main"
    assert ev.resolve_benchmark("mine=/tmp/x.jsonl") == ("mine", ev.Benchmark("/tmp/x.jsonl"))
    with pytest.raises(ValueError, match="math500"):
        ev.resolve_benchmark("no-such-benchmark")


def test_unreachable_hub_benchmark_names_the_local_file_to_pass():
    with pytest.raises(data.DataError, match="--bench aime24="):
        ev.load_benchmark("aime24")


# ------------------------------------------------------------------------------------------------ tiny model
PROMPTS = ["1+0", "12-11", "2*1-1", "9-8", "31-30", "4-3"]


@pytest.fixture(scope="module")
def tiny():
    """A 1-layer Qwen2 with a character tokenizer, trained to answer every chatml prompt with \\boxed{1}."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 40k-parameter model is 30x slower with threads competing on a busy machine
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(special + [chr(c) for c in range(32, 127)] + ["\n", "<unk>"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token="<unk>", additional_special_tokens=["<|im_start|>"])
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(vocab), hidden_size=48, intermediate_size=96,
                                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, tie_word_embeddings=True))
    prompts = [data.format_prompt(q, tokenizer, "chatml") for q in PROMPTS]
    enc = tokenizer([p + "\\boxed{1}<|im_end|>" for p in prompts], return_tensors="pt", padding=True,
                    padding_side="left")
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)  # [B, T]
    for i, p in enumerate(prompts):  # learn the answer only, not the prompt
        n_pad = int((enc.attention_mask[i] == 0).sum())
        labels[i, :n_pad + len(tokenizer(p).input_ids)] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = model(**enc, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    yield model, tokenizer
    torch.set_num_threads(threads)


def _problems(golds):
    return [data.Problem(id=f"p{i}", problem=q, answer=g) for i, (q, g) in enumerate(zip(PROMPTS, golds))]


def test_generate_completions_left_pads_and_stops_at_eos(tiny):
    model, tokenizer = tiny
    prompts = [data.format_prompt(q, tokenizer, "chatml") for q in PROMPTS]  # lengths 3 to 5 characters
    batched = ev.generate_completions(model, tokenizer, prompts, max_new_tokens=16, batch_size=4)
    one_by_one = [ev.generate_completions(model, tokenizer, [p], max_new_tokens=16)[0] for p in prompts[:2]]
    assert batched == [["\\boxed{1}"]] * len(prompts)  # no prompt text, nothing after <|im_end|>
    assert one_by_one == batched[:2]


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tiny):
    model, tokenizer = tiny
    prompts = [data.format_prompt(q, tokenizer, "chatml") for q in PROMPTS[:2]]
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = ev.generate_completions(model, tokenizer, prompts, n=3, temperature=1.5, max_new_tokens=12, seed=7)
    assert torch.rand(1) == expected_next
    again = ev.generate_completions(model, tokenizer, prompts, n=3, temperature=1.5, max_new_tokens=12, seed=7)
    assert first == again and [len(group) for group in first] == [3, 3]


def test_evaluate_greedy_pass_at_1_end_to_end(tiny, tmp_path):
    model, tokenizer = tiny
    problems = _problems(["1", "2", "1.0", "\\frac{2}{2}", "3", "7"])
    problems[5].meta["answer_alternatives"] = ["7", "1"]  # an alternative form of the reference counts
    result = ev.evaluate(model, tokenizer, problems, template="chatml", max_new_tokens=16, batch_size=4,
                         out_dir=tmp_path, name="toy")
    assert result["metric"] == "pass@1" and result["n_problems"] == 6
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(ev.wilson_interval(4, 6))
    rows = data.read_jsonl(tmp_path / "toy.jsonl")
    assert [r["correct"] for r in rows] == [True, False, True, True, False, True]
    assert all(r["completion"] == "\\boxed{1}" and r["extracted"] == "1" for r in rows)


def test_evaluate_avg_at_n_writes_every_sample(tiny, tmp_path):
    model, tokenizer = tiny
    result = ev.evaluate(model, tokenizer, _problems(["1", "5", "1"]), template="chatml", n=4, temperature=1.0,
                         max_new_tokens=12, out_dir=tmp_path, name="toy")
    rows = data.read_jsonl(tmp_path / "toy.jsonl")
    assert result["metric"] == "avg@4" and result["interval"] == "normal over problems" and len(rows) == 12
    per_problem = [sum(r["correct"] for r in rows if r["id"] == f"p{i}") / 4 for i in range(3)]
    assert per_problem[1] == 0.0
    assert result["accuracy"] == pytest.approx(sum(per_problem) / 3)


def test_cli_evaluates_a_saved_model_on_a_local_benchmark(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    bench = tmp_path / "toy.jsonl"
    bench.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in [("1+0", "1"), ("9-7", "2")]))
    out = tmp_path / "out"
    results = ev.main(["--model", str(tmp_path / "model"), "--benchmarks", "", "--bench", f"toy={bench}",
                       "--template", "chatml", "--max-new-tokens", "12", "--out", str(out)])
    assert [r["accuracy"] for r in results] == [0.5]
    assert "| toy | pass@1 | 2 | 50.0 |" in (out / "results.md").read_text()
    assert len(data.read_jsonl(out / "toy.jsonl")) == 2


# ------------------------------------------------------------------------------------------------ real golds
@pytest.mark.skipif(not SHARED_BENCH.is_dir(), reason="shared/data/bench is not present")
def test_every_shared_benchmark_gold_is_equivalent_to_itself_and_its_boxed_form():
    for path in sorted(SHARED_BENCH.glob("*.jsonl")):
        problems = data.load_problems(path, verbose=False)
        assert problems, path.name
        golds = [p.answer for p in problems]
        not_self = [g for g in golds if not is_equiv(g, g)]
        not_boxed = [g for g in golds if not verify(f"Thus the answer is $\\boxed{{{g}}}$.", g)]
        assert not not_self and not not_boxed, (path.name, not_self[:5], not_boxed[:5])
        report = gold_parse_report(golds)
        print(f"{path.name}: {report['total']} golds, {report['unparsed']} not parsed as math, kinds "
              f"{report['counts']}, e.g. {report['examples'][:3]}")


# ------------------------------------------------------------------------------------------------ run report
def test_cluster_summary_top_features_dense_and_sparse():
    feats = torch.zeros(4, 6)
    feats[0, 2], feats[1, 2], feats[1, 5] = 1.0, 3.0, 0.5  # cluster 7: means f2 = 2, f5 = 0.25
    feats[2, 0], feats[3, 1] = 4.0, 1.0                    # cluster 3: means f0 = 2, f1 = 0.5
    problems = [data.Problem(id=f"p{i}", problem=f"what is {i} plus {i + 1}", answer=str(2 * i + 1)) for i in range(4)]
    args = ([7, 7, 3, 3], [0.1, 0.3, 0.9, 0.5])
    text = ev.cluster_summary(*args, feats, problems, top=2)
    assert "## Cluster 3" in text and "## Cluster 7" in text
    assert "`0` (2), `1` (0.5)" in text and "`2` (2), `5` (0.25)" in text
    assert "mean predicted difficulty: 0.7" in text and "`p3`" in text
    assert text == ev.cluster_summary(*args, feats.to_sparse_coo(), problems, top=2)
