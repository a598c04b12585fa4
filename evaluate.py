"""evaluate.py -- benchmark evaluation: greedy pass@1 or sampled avg@n on math benchmarks, judged by
verifier.py (a SAERL run's report.md is report.py's).
Imports: data (problems, prompts), runtime (files, the model loader, CLI flags), sampler (decoding),
parallel (sharded evaluation) and verifier from this project -- never saerl.py or grpo.py.

The same template (data.format_prompt), decoding routine (generate_completions) and verifier serve the
training reward, the pipeline's in-loop evaluation and the final report.

    BENCHMARKS                                  math500, aime24, amc23, minerva, olympiadbench, gsm8k
    load_benchmark(spec) -> (name, problems)    a registry name, name=path, or a local file
    generate_completions(model, tok, prompts)   left-padded batched generation, seeded, stop at EOS
    evaluate(model, tok, benchmark, ...)        accuracy with a 95% interval, every completion to JSONL
    make_eval_fn(tok, benches, ...)             the trainer's in-loop evaluation: (step, model) -> row
    markdown_table(results)                     one row per benchmark, accuracy and interval
    python evaluate.py --model M --benchmarks math500,aime24 [--n 16 --temperature 0.6]
"""
from __future__ import annotations

import os

# Before torch loads OpenMP: a thread waiting for its peers sleeps instead of spinning, so a busy
# machine (another job on a core) no longer stalls every small op (docs/measurements.md). numpy's
# OpenBLAS threads spin regardless and its matrices here are small: one thread.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import sampler
from data import TEMPLATES, format_prompt, load_problems
from parallel import all_gather, dist_info
from runtime import (ConfigError, DataError, add_dataclass_args, atomic_write_text, check, check_device, command_line,
                     dataclass_from_args, flag, load_model, write_jsonl)
from verifier import extract_answer, gold_parse_report, is_equiv

# ================================================================================================ benchmarks
@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives. source: a Hub dataset id (":config" picks a config) or a local file.
    Field names of None fall back to data.py's aliases (problem|question|..., answer|final_answer|...)."""
    source: str
    split: str = "test"
    problem_field: str | None = None
    answer_field: str | None = None
    local_name: str | None = None  # the copy's file name in shared/data/bench, named in error messages


BENCHMARKS = {
    "math500": Benchmark("HuggingFaceH4/MATH-500", "test", "problem", "answer"),
    "aime24": Benchmark("math-ai/aime24", "test", None, None, "aime24.jsonl"),
    "amc23": Benchmark("math-ai/amc23", "test", None, None, "amc23.jsonl"),
    "minerva": Benchmark("math-ai/minervamath", "test", None, None, "minerva_math.jsonl"),
    "olympiadbench": Benchmark("math-ai/olympiadbench", "test", None, None, "olympiadbench.jsonl"),
    "gsm8k": Benchmark("openai/gsm8k:main", "test", "question", "answer", "gsm8k_test.jsonl"),
}
SHARED_BENCH_DIR = Path(__file__).resolve().parent.parent / "shared" / "data" / "bench"


def resolve_benchmark(spec: str) -> tuple[str, Benchmark]:
    """"math500" (registry), "name=path/to/file.jsonl", or a bare local path (named after its stem)."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        return name.strip(), Benchmark(path.strip())
    if spec in BENCHMARKS:
        return spec, BENCHMARKS[spec]
    if Path(spec).exists():
        return Path(spec).stem, Benchmark(spec)
    raise ValueError(f"unknown benchmark {spec!r}; expected one of {', '.join(BENCHMARKS)}, "
                     "a local .jsonl/.json file, or name=path")


def load_benchmark(spec: str, *, limit: int | None = None, seed: int = 0) -> tuple[str, list]:
    """(name, problems) through data.load_problems. A Hub copy that cannot be read names the local file to pass."""
    name, bench = resolve_benchmark(spec)
    try:
        problems = load_problems(bench.source, split=bench.split, limit=limit, seed=seed,
                                 problem_field=bench.problem_field, answer_field=bench.answer_field)
    except DataError as exc:
        local = SHARED_BENCH_DIR / (bench.local_name or f"{name}.jsonl")
        hint = f"--bench {name}={local}" if local.exists() else f"--bench {name}=path/to/{name}.jsonl"
        raise DataError(f"benchmark {name!r}: {exc}\n  pass a local copy instead: {hint}") from exc
    if not problems:
        raise DataError(f"benchmark {name!r} ({bench.source}) has no usable problems")
    return name, problems


# ------------------------------------------------------------------------------------------------ generation
def generate_completions(model, tokenizer, prompts: list[str], *, n: int = 1, temperature: float = 0.0,
                         top_p: float = 1.0, max_new_tokens: int = 1024, batch_size: int = 8,
                         seed: int = 0) -> list[list[str]]:
    """n completions per prompt (texts without the prompt): `sampler.complete`, the one decoding
    routine of training, evaluation, rollout labels and the toy.

    temperature 0 is greedy (one generation, repeated n times); otherwise sampling seeded by `seed`
    without touching the caller's global RNG state. A completion stops at the first EOS /
    <|im_end|> token. An fp32 model on CUDA generates under bf16 autocast."""
    return sampler.complete(model, tokenizer, prompts, n=n, temperature=temperature, top_p=top_p,
                            max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate(model, tokenizer, benchmark, *, template: str = "qwen-math", n: int = 1, temperature: float = 0.0,
             top_p: float = 1.0, max_new_tokens: int = 1024, batch_size: int = 8, out_dir=None,
             limit: int | None = None, seed: int = 0, name: str | None = None) -> dict:
    """Accuracy of a model on one benchmark: greedy pass@1 (n=1, temperature 0) or avg@n with sampling.

    benchmark: a registry name, "name=path", a local file, or a list of data.Problem. A problem counts a
    completion correct when its answer matches the reference or any listed alternative. 95% interval:
    Wilson score for pass@1; for avg@n a normal interval over problems (mean +- 1.96 sd/sqrt(N) of the
    per-problem accuracies, clipped to [0, 1]), since the n samples of one problem are not independent.
    With out_dir, every completion, extracted answer and verdict goes to out_dir/<name>.jsonl (atomic)."""
    if isinstance(benchmark, str):
        name_, problems = load_benchmark(benchmark, limit=limit, seed=seed)
        name = name or name_
    else:
        problems, name = list(benchmark)[:limit], name or "problems"
    t0 = time.perf_counter()
    prompts = [format_prompt(p.problem, tokenizer, template) for p in problems]
    # under torchrun each rank decodes a contiguous share of whole batches, seeded by the batch's
    # global position (sampler.complete), so the completions do not depend on the world size
    rank, world = dist_info()
    n_batches = -(-len(prompts) // batch_size)
    lo, hi = (min(len(prompts), n_batches * r // world * batch_size) for r in (rank, rank + 1))
    completions = generate_completions(model, tokenizer, prompts[lo:hi], n=n, temperature=temperature, top_p=top_p,
                                       max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed + lo)
    completions = [c for share in all_gather(completions) for c in share]
    rows, per_problem = [], []
    for problem, samples in zip(problems, completions):
        golds = [problem.answer] + list(problem.meta.get("answer_alternatives", []))
        n_correct = 0
        for k, text in enumerate(samples):
            extracted = extract_answer(text)
            correct = any(is_equiv(extracted, g) for g in golds)
            n_correct += correct
            rows.append({"benchmark": name, "id": problem.id, "sample": k, "gold": problem.answer,
                         "extracted": extracted, "correct": correct, "completion": text})
        per_problem.append(n_correct / n)
    accuracy = sum(per_problem) / len(per_problem)
    if n == 1:
        low, high = wilson_interval(int(sum(per_problem)), len(per_problem))
    else:
        low, high = mean_interval(per_problem)
    gold_report = gold_parse_report([p.answer for p in problems])
    if gold_report["unparsed"]:
        warnings.warn(f"{name}: {gold_report['unparsed']} of {gold_report['total']} gold answers are not math "
                      f"(graded as text, empty ones never correct), e.g. {gold_report['examples'][:3]}", stacklevel=2)
    result = {"benchmark": name, "metric": "pass@1" if n == 1 else f"avg@{n}", "n_problems": len(problems),
              "n": n, "temperature": temperature, "accuracy": accuracy, "ci_low": low, "ci_high": high,
              "interval": "wilson" if n == 1 else "normal over problems",
              "extracted_fraction": sum(r["extracted"] is not None for r in rows) / len(rows),
              "gold_report": gold_report, "seconds": time.perf_counter() - t0, "completions_path": None,
              "per_problem": per_problem}
    if out_dir is not None:
        path = Path(out_dir) / f"{name}.jsonl"
        if rank == 0:
            write_jsonl(path, rows)
        result["completions_path"] = str(path)
    return result


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (Wilson 1927); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """Normal interval mean +- z * sd / sqrt(N) (sample sd), clipped to [0, 1]; (0, 1) for fewer than 2 values."""
    if len(values) < 2:
        return 0.0, 1.0
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = z * sd / math.sqrt(len(values))
    return max(0.0, mean - half), min(1.0, mean + half)


def markdown_table(results: list[dict]) -> str:
    """One row per benchmark (accuracy in %, 95% interval), plus the unweighted mean when there are several."""
    lines = ["| benchmark | metric | problems | accuracy (%) | 95% interval |", "|---|---|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['benchmark']} | {r['metric']} | {r['n_problems']} | {100 * r['accuracy']:.1f} "
                     f"| {100 * r['ci_low']:.1f} – {100 * r['ci_high']:.1f} |")
    if len(results) > 1:
        mean = sum(r["accuracy"] for r in results) / len(results)
        lines.append(f"| mean | | {sum(r['n_problems'] for r in results)} | {100 * mean:.1f} | |")
    return "\n".join(lines)


def make_eval_fn(tokenizer, benches, *, metric: str, **evaluate_kw):
    """The trainer's in-loop evaluation: (step, model) -> {benchmark: accuracy, ..., "mean", "metric"}
    over the loaded (name, problems) benches, each scored by evaluate(..., **evaluate_kw); under
    torchrun every rank calls it and decodes its share."""
    def eval_fn(step: int, model) -> dict:
        results = {name: evaluate(model, tokenizer, problems, name=name, **evaluate_kw) for name, problems in benches}
        row = {name: r["accuracy"] for name, r in results.items()}
        # each problem's score (its share of correct samples), in benchmark order: paired comparisons of arms
        items = [x for r in results.values() for x in r["per_problem"]]
        return row | {"mean": sum(row.values()) / len(row), "metric": metric, "items": items}

    return eval_fn


# ------------------------------------------------------------------------------------------------ CLI
@dataclass
class EvalConfig:
    """The CLI: each field is a flag (--max-new-tokens for max_new_tokens)."""
    model: str = flag("", "local model folder (or a Hub id already in the local HF cache)", required=True)
    benchmarks: str = flag("math500", f"comma-separated: {', '.join(BENCHMARKS)}, or local files")
    bench: list = flag(None, "name=path of a local benchmark file (repeatable)", type=str, action="append")
    template: str = flag("qwen-math", "prompt template of data.format_prompt (qwen-math, plain, chat, chatml)")
    n: int = flag(1, "samples per problem (avg@n when > 1)")
    temperature: float = flag(0.0, "0 = greedy")
    top_p: float = flag(1.0, "nucleus sampling mass")
    max_new_tokens: int = flag(3000, "completion length limit")
    batch_size: int = flag(8, "prompts per generate call")
    limit: int | None = flag(None, "seeded random subset of each benchmark")
    seed: int = flag(0, "seed of sampling and of --limit")
    out: str = flag("runs/eval", "writes <out>/<benchmark>.jsonl, results.md, results.json")
    device: str = flag("auto", "auto, cpu or cuda")

    def validate(self) -> None:
        """Every flag in its range before the model loads: ConfigError, one line naming the flag, its value
        and what is allowed."""
        def need(ok: bool, expected: str, *names: str) -> None:
            check(ok, {name: getattr(self, name) for name in names}, expected)

        for name in ("n", "max_new_tokens", "batch_size"):
            need(getattr(self, name) >= 1, "an integer >= 1", name)
        need(self.limit is None or self.limit >= 1, "an integer >= 1 (leave it out for the whole benchmark)", "limit")
        need(0 <= self.temperature < math.inf, "a number >= 0 (0: greedy)", "temperature")
        need(self.n == 1 or self.temperature > 0, "--temperature > 0 for avg@n (greedy decoding gives n copies of "
             "one completion), or --n 1", "n", "temperature")
        need(0 < self.top_p <= 1, "a number in (0, 1]", "top_p")
        need(self.seed >= 0, "an integer >= 0", "seed")
        need(self.template in TEMPLATES, f"one of {', '.join(TEMPLATES)}", "template")
        check_device(self.device)
        if not self.specs():
            raise ConfigError("no benchmark to evaluate: pass --benchmarks NAME[,NAME] or --bench name=path")
        for name, specs in (("benchmarks", self.benchmarks.split(",")), ("bench", self.bench or [])):
            for spec in filter(str.strip, specs):
                try:
                    resolve_benchmark(spec.strip())
                except ValueError as exc:
                    raise ConfigError(f"--{name} {spec.strip()}: {exc}") from None

    def specs(self) -> list[str]:
        """The benchmarks asked for: --benchmarks' names, then each --bench."""
        return [s.strip() for s in self.benchmarks.split(",") if s.strip()] + [s.strip() for s in self.bench or []]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description="Evaluate a model on math benchmarks (pass@1 or avg@n).")
    config = dataclass_from_args(EvalConfig, add_dataclass_args(parser, EvalConfig).parse_args(argv))
    with command_line("evaluate.py"):  # a bad flag or benchmark: one line, no traceback
        config.validate()
        try:  # every benchmark is read before the model is loaded, so a missing one fails in seconds
            loaded = [load_benchmark(s, limit=config.limit, seed=config.seed) for s in config.specs()]
        except ValueError as exc:  # an unknown name (DataError, a ValueError too: a file that cannot be read)
            raise DataError(str(exc)) from exc
        return evaluate_all(config, loaded)


def evaluate_all(config: EvalConfig, loaded: list) -> list[dict]:
    """The CLI's work once its flags and benchmarks are read: load the model, evaluate each benchmark, write
    <out>/results.md and results.json."""
    model, tokenizer = load_model(config.model, config.device)
    results = []
    for name, problems in loaded:
        result = evaluate(model, tokenizer, problems, name=name, template=config.template, n=config.n,
                          temperature=config.temperature, top_p=config.top_p,
                          max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                          out_dir=config.out, seed=config.seed)
        print(f"{name}: {result['metric']} = {100 * result['accuracy']:.1f}% "
              f"[{100 * result['ci_low']:.1f}, {100 * result['ci_high']:.1f}] over {result['n_problems']} problems",
              file=sys.stderr)
        results.append(result)
    table = markdown_table(results)
    print(table)
    atomic_write_text(Path(config.out) / "results.md", table + "\n")
    atomic_write_text(Path(config.out) / "results.json",
                      json.dumps({"config": vars(config), "results": results}, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
