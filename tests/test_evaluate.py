"""Specification of evaluate.py: intervals, the benchmark registry, generation and evaluation
(the verifier it judges with is specified in test_verifier*.py; the run report in test_report.py). Here the
end-to-end tests use a ~40k-parameter Qwen2 with a character tokenizer, trained for a fraction of a second to
answer every prompt with \\boxed{1}: its verdicts are then known without trusting the code under test.
"""
import json
from pathlib import Path

import pytest
import torch

import data
import evaluate as ev
import runtime
from verifier import gold_parse_report, is_equiv, verify

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCH = REPO.parent / "shared" / "data" / "bench"


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
    with pytest.raises(runtime.DataError, match="--bench aime24="):
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
    rows = runtime.read_jsonl(tmp_path / "toy.jsonl")
    assert [r["correct"] for r in rows] == [True, False, True, True, False, True]
    assert all(r["completion"] == "\\boxed{1}" and r["extracted"] == "1" for r in rows)


def test_evaluate_avg_at_n_writes_every_sample(tiny, tmp_path):
    model, tokenizer = tiny
    result = ev.evaluate(model, tokenizer, _problems(["1", "5", "1"]), template="chatml", n=4, temperature=1.0,
                         max_new_tokens=12, out_dir=tmp_path, name="toy")
    rows = runtime.read_jsonl(tmp_path / "toy.jsonl")
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
    assert len(runtime.read_jsonl(out / "toy.jsonl")) == 2


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
