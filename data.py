"""data.py -- problems in, prompts out: loading, field aliases, validation, dedup, prompt templates.
Imports: the standard library at the top (datasets and pyarrow lazily, to read a Hub id or a .parquet
file); from this project runtime (atomic files, DataError, the Hub check) and verifier's \\boxed reader.

Every other SAERL module reads training and benchmark problems through `load_problems` and renders
them with `format_prompt`; the run's plumbing (atomic files, the stage cache, model loading, CLI
flags) is runtime.py's.

Public functions
    Problem                        one problem: id, problem text, reference answer, meta
    load_problems(source, ...)     a local .jsonl / .json / .parquet file or a Hub dataset id
    answer_from_row(row, ...)      the reference answer of one raw row (aliases, \\boxed, ####)
    format_prompt(text, tok, t)    the `qwen-math`, `plain`, `chat` or `chatml` template
    stop_token_ids(model, tok)     where a completion ends (training and evaluation alike)
    long_prompts(problems, tok, template, max_tokens)   ids whose prompt leaves no room for the completion
    write_problems(path, problems) JSONL rows that load_problems reads back unchanged

Field aliases (first match wins; `problem_field` / `answer_field` override them):
    problem <- problem | question | prompt | query
    answer  <- answer | final_answer | gold | expected_answer,
               else the last \\boxed{} of `solution`, else the text after `####` (GSM8K)
A list answer with one element becomes that element. A list with several elements is read as
*alternative* forms of one answer (Minerva stores e.g. ["6630.65", "6630"]): the first is the
answer and all are kept in meta["answer_alternatives"]. A numeric answer (AMC's 27.0) becomes its
canonical text ("27"). GSM8K's "... #### 1,000" becomes "1000".
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime import DataError, hub_reachable, write_jsonl
from verifier import last_boxed

PROBLEM_ALIASES = ("problem", "question", "prompt", "query")
ANSWER_ALIASES = ("answer", "final_answer", "gold", "expected_answer")
ID_ALIASES = ("id", "unique_id", "idx", "uid")

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
TEMPLATES = ("qwen-math", "plain", "chat", "chatml")


@dataclass
class Problem:
    id: str
    problem: str
    answer: str
    meta: dict = field(default_factory=dict)

    def to_row(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Loading


def load_problems(
    source: str | os.PathLike,
    *,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
    strict: bool = False,
    problem_field: str | None = None,
    answer_field: str | None = None,
    verbose: bool = True,
) -> list[Problem]:
    """Read problems from a local file or a Hub dataset id.

    Rows without a usable problem or answer are skipped and reported (count, first row numbers
    and why); `strict=True` raises instead. Exact duplicate problems (whitespace-normalised) are
    kept once and reported. `limit` takes a seeded random subset *after* validation, so the
    same (source, limit, seed) always gives the same problems. Reports go to stderr;
    `load_problems_report` also returns them. Ids: the row's own id field when it has one
    (unique in the file), else "<file name>:<row number>".
    """
    problems, _ = load_problems_report(
        source, split=split, limit=limit, seed=seed, strict=strict,
        problem_field=problem_field, answer_field=answer_field, verbose=verbose,
    )
    return problems


def load_problems_report(
    source, *, split="train", limit=None, seed=0, strict=False,
    problem_field=None, answer_field=None, verbose=True,
) -> tuple[list[Problem], dict]:
    """`load_problems`, also returning {"rows", "bad": [(row, why)], "duplicates": [(row, first_row)]}."""
    name, rows = _read_rows(source, split)
    problems, bad, dups, seen = [], [], [], {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            bad.append((i, f"row is a {type(row).__name__}, expected a JSON object"))
            continue
        text = _pick(row, (problem_field,) if problem_field else PROBLEM_ALIASES)
        if not isinstance(text, str) or not text.strip():
            wanted = problem_field or "|".join(PROBLEM_ALIASES)
            bad.append((i, f"no problem text (looked for {wanted})"))
            continue
        answer, alternatives = answer_from_row(row, answer_field=answer_field)
        if answer is None:
            wanted = answer_field or "|".join(ANSWER_ALIASES) + "|solution \\boxed{}|####"
            bad.append((i, f"no answer (looked for {wanted})"))
            continue
        key = " ".join(text.split())
        if key in seen:
            dups.append((i, seen[key]))
            continue
        seen[key] = i
        pid = _pick(row, ID_ALIASES)
        meta = {k: v for k, v in row.items() if k not in (problem_field, answer_field) and k not in PROBLEM_ALIASES and k not in ANSWER_ALIASES and k not in ID_ALIASES and k != "solution"}
        meta.setdefault("source", name)
        meta["row"] = i
        if len(alternatives) > 1:
            meta["answer_alternatives"] = alternatives
        problems.append(Problem(id=str(pid) if pid is not None else f"{name}:{i}", problem=text, answer=answer, meta=meta))
    if len({p.id for p in problems}) != len(problems):  # ids in the file collide: fall back to row numbers
        for p in problems:
            p.id = f"{name}:{p.meta['row']}"

    report = {"source": name, "rows": len(rows), "bad": bad, "duplicates": dups}
    if bad and strict:
        raise DataError(f"{len(bad)} of {len(rows)} rows of {name} are unusable: " + _first(bad))
    if verbose and (bad or dups):
        if bad:
            print(f"[data] {name}: skipped {len(bad)} of {len(rows)} rows: {_first(bad)}", file=sys.stderr)
        if dups:
            print(f"[data] {name}: {len(dups)} duplicate problems kept once: "
                  + ", ".join(f"row {i} repeats row {j}" for i, j in dups[:5]), file=sys.stderr)
    if limit is not None and limit < len(problems):
        order = list(range(len(problems)))
        random.Random(seed).shuffle(order)
        problems = [problems[i] for i in sorted(order[:limit])]
    return problems, report


def answer_from_row(row: dict, *, answer_field: str | None = None) -> tuple[str | None, list[str]]:
    """The reference answer of one raw row, and every alternative form it lists."""
    value = row.get(answer_field) if answer_field else _pick(row, ANSWER_ALIASES)
    if value is None and not answer_field and isinstance(row.get("solution"), str):
        value = last_boxed(row["solution"])  # the verifier's bounded reader, one implementation
    if isinstance(value, list):
        alternatives = [a for a in (_canonical(v) for v in value) if a]
        return (alternatives[0] if alternatives else None), alternatives
    answer = _canonical(value)
    if answer is not None and "####" in answer:  # GSM8K: the answer follows the last ####
        answer = answer.rsplit("####", 1)[1].strip().replace(",", "") or None
    return answer, [answer] if answer else []


def _canonical(value) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    if isinstance(value, str):
        return value.strip() or None
    return None


def _pick(row: dict, keys):
    for k in keys:
        if k is not None and row.get(k) is not None:
            return row[k]
    return None


def _first(items, n=5) -> str:
    return "; ".join(f"row {i}: {why}" for i, why in items[:n]) + (" ..." if len(items) > n else "")


def _read_rows(source, split) -> tuple[str, list]:
    path = Path(source)
    if path.exists():
        if path.is_dir():
            raise DataError(f"{path} is a directory; expected a .jsonl, .json or .parquet file")
        return path.name, _read_file(path)
    if path.suffix in (".jsonl", ".json", ".parquet") or str(source).startswith((".", "/")):
        raise DataError(f"problem file {source} does not exist")
    return str(source), _read_hub(str(source), split)


def _read_file(path: Path) -> list:
    if path.suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        rows.append(f"invalid JSON on line {n + 1}: {e.msg}")
        return rows
    if path.suffix == ".json":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise DataError(f"{path} holds an object; expected a list of problems (or one list inside)")
            data = lists[0]
        if not isinstance(data, list):
            raise DataError(f"{path} holds a {type(data).__name__}; expected a list of problems")
        return data
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise DataError(f"reading {path} needs pyarrow: pip install pyarrow (or convert it to .jsonl)") from e
        return pq.read_table(path).to_pylist()
    raise DataError(f"{path}: unknown file type {path.suffix!r}; expected .jsonl, .json or .parquet")


def _read_hub(name: str, split: str) -> list:
    if not hub_reachable():
        raise DataError(f"{name!r} is not a local file and the Hugging Face Hub is not reachable from here "
                        "(or HF_HUB_OFFLINE is set): download it elsewhere and pass a local .jsonl/.json/.parquet path")
    config = None
    if ":" in name:  # "openai/gsm8k:main" selects a dataset config
        name, config = name.split(":", 1)
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"{name!r} is not a local file, and reading it from the Hub needs `pip install datasets`; "
                        "or pass a local .jsonl/.json/.parquet path") from e
    try:
        return list(datasets.load_dataset(name, config, split=split))
    except Exception as e:
        raise DataError(f"could not load Hub dataset {name!r} (split {split!r}): {type(e).__name__}: {e}. "
                        "Without network access, download it elsewhere and pass a local .jsonl path") from e


# --------------------------------------------------------------------------------------------
# Prompts


def format_prompt(problem: str | Problem, tokenizer=None, template: str = "qwen-math") -> str:
    """Render one problem as the text the policy continues.

    qwen-math: the Qwen2.5-Math chain-of-thought chat (system instruction, user turn, open
               assistant turn), written out in ChatML so it needs no tokenizer template;
    plain:     the problem and the same instruction, no chat markup;
    chat:      the tokenizer's own chat template with the instruction appended to the user turn;
    chatml:    the bare ChatML user turn, no instruction: for models trained to answer in \\boxed{}
               without being told (the toy world, where the instruction would triple the length).
    """
    text = problem.problem if isinstance(problem, Problem) else problem
    if template == "qwen-math":
        return (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
                f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
    if template == "chatml":
        return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    if template == "plain":
        return f"{text}\n{SYSTEM_PROMPT}\n"
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat_template; use 'qwen-math' or 'plain'")
        messages = [{"role": "user", "content": f"{text}\n{SYSTEM_PROMPT}"}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown prompt template {template!r}; expected one of {', '.join(TEMPLATES)}")


def long_prompts(problems: list[Problem], tokenizer, template: str, max_tokens: int) -> list[str]:
    """Ids of the problems whose rendered prompt is longer than `max_tokens` tokens (a prompt plus its
    completion budget must fit the model's context: positions past max_position_embeddings are
    computed, silently, out of the range the model was trained on)."""
    prompts = [format_prompt(p.problem, tokenizer, template) for p in problems]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if prompts else []
    return [p.id for p, n in zip(problems, lengths) if n > max_tokens]


def stop_token_ids(model, tokenizer) -> list[int]:
    """Tokens that end a completion, shared by training rollouts and evaluation: the tokenizer's
    EOS, the model's generation-config EOS ids, and <|im_end|> when the vocabulary has it (the
    chat templates end an answer with it)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in ([gen_eos] if isinstance(gen_eos, int) else gen_eos or []):
        ids.add(int(i))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    if not ids:
        raise ValueError("no stop token: the tokenizer has no eos_token and the model's generation_config none")
    return sorted(ids)


def write_problems(path, problems: list[Problem]) -> None:
    """Problems as JSONL rows that `load_problems` reads back unchanged (meta fields flattened)."""
    write_jsonl(path, [{**{k: v for k, v in p.meta.items() if k not in ("row", "source")},
                        "id": p.id, "problem": p.problem, "answer": p.answer} for p in problems])
