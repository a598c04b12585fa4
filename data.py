"""data.py -- problems in, prompts out: loading, field aliases, validation, dedup, prompt templates.
Imports: the standard library at the top (datasets and pyarrow lazily, to read a Hub id or a .parquet
file); from this project runtime (atomic files, DataError, the Hub check) and verifier's \\boxed reader.

Every other SAERL module reads training and benchmark problems through `load_problems` and renders
them with `format_prompt`; the run's plumbing (atomic files, the stage cache, model loading, CLI
flags) is runtime.py's.

Public functions
    Problem                        one problem: id, problem text, reference answer, meta
    load_problems(source, ...)     a local .jsonl / .json / .parquet file or a Hub dataset id
    last_user_turn(messages)       the problem text of a chat-format row (TRL, verl)
    answer_from_row(row, ...)      the reference answer of one raw row (aliases, \\boxed, ####)
    format_prompt(text, tok, t)    the `qwen-math`, `plain`, `chat` or `chatml` template
    prompt_messages(text, t)       the same prompt as a chat message list (TRL / verl datasets; export.py)
    stop_token_ids(model, tok)     where a completion ends (training and evaluation alike)
    prompt_lengths(problems, tok, template)   {id: prompt tokens}, for the context and the memory plan
    write_problems(path, problems) JSONL rows that load_problems reads back unchanged

Field aliases (first match wins; `problem_field` / `answer_field` override them, and may name a nested
field by a dotted path, e.g. reward_model.ground_truth):
    problem <- problem | question | prompt | query
    answer  <- answer | final_answer | gold | expected_answer | reward_model.ground_truth,
               else the last \\boxed{} of `solution`, else the text after `####` (GSM8K)
The field formats of the RL trainers read as they are: a problem given as a message list
([{"role": ..., "content": ...}], TRL's conversational rows, verl's `prompt`) is the content of its
last user turn; verl's reference answer is `reward_model.ground_truth`. Their other fields
(data_source, extra_info, ...) stay in meta.
Rows are numbered from 1 as editors number them: a JSONL row is its line number (blank lines
count), a .json/.parquet/Hub row its position in the list. Every row that does not become a
problem is reported (count, first rows and why), never dropped silently: malformed JSON, a row
that is not an object, no problem text or answer, a problem text over MAX_PROBLEM_CHARS, a
repeat of an earlier problem (and, louder, a repeat with another answer). A file that is not
UTF-8 is refused, naming the row and byte offset; a leading byte-order mark is accepted.
Ids: the row's own id field (a string or number), else "<file name>:<row>"; an id that repeats an
earlier one gets a "#2", "#3", ... suffix, and the report says which.

A list answer with one element becomes that element. A list with several elements is read as
*alternative* forms of one answer (Minerva stores e.g. ["6630.65", "6630"]): the first is the
answer and all are kept in meta["answer_alternatives"]. A numeric answer (AMC's 27.0) becomes its
canonical text ("27"). GSM8K's "... #### 1,000" becomes "1000".
"""

from __future__ import annotations

import codecs
import json
import math
import os
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime import DataError, hub_reachable, write_jsonl
from verifier import is_equiv, last_boxed

PROBLEM_ALIASES = ("problem", "question", "prompt", "query")
ANSWER_ALIASES = ("answer", "final_answer", "gold", "expected_answer", "reward_model.ground_truth")
ID_ALIASES = ("id", "unique_id", "idx", "uid")

# Problem texts longer than this are reported and skipped: math problems are rarely over a few thousand
# characters (the longest in MATH train, AIME 1983-2023 and OlympiadBench is ~5,200), while one runaway
# row (a whole book pasted in a field) would drive the SAE stage's tokenizer to gigabytes of memory.
MAX_PROBLEM_CHARS = 20_000

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
    max_chars: int = MAX_PROBLEM_CHARS,
    verbose: bool = True,
) -> list[Problem]:
    """Read problems from a local file or a Hub dataset id.

    Rows without a usable problem or answer, or with a problem text over `max_chars` characters, are
    skipped and reported (count, first row numbers and why); `strict=True` raises instead. Exact
    duplicate problems (whitespace-normalised) are kept once and reported, and a duplicate whose
    answer differs from the kept one is reported as a conflict. `limit` takes a seeded random subset
    *after* validation, so the same (source, limit, seed) always gives the same problems. Reports go
    to stderr; `load_problems_report` also returns them. Ids: the row's own id field when it has one,
    else "<file name>:<row number>"; a repeated id gets a "#2", "#3", ... suffix (reported).
    """
    problems, _ = load_problems_report(
        source, split=split, limit=limit, seed=seed, strict=strict,
        problem_field=problem_field, answer_field=answer_field, max_chars=max_chars, verbose=verbose,
    )
    return problems


def load_problems_report(
    source, *, split="train", limit=None, seed=0, strict=False,
    problem_field=None, answer_field=None, max_chars=MAX_PROBLEM_CHARS, verbose=True,
) -> tuple[list[Problem], dict]:
    """`load_problems`, also returning its report: {"source", "rows", "bad": [(row, why)],
    "duplicates": [(row, first_row)], "conflicts": [(row, first_row, first_id, answer, first_answer)],
    "renamed_ids": [(row, id, new_id)], "odd_ids": [(row, type name)]}; rows are numbered from 1."""
    name, rows = _read_rows(source, split)
    problems, bad, dups, conflicts, odd_ids, seen = [], [], [], [], [], {}
    for n, row in rows:
        if isinstance(row, _BadLine):
            bad.append((n, row.why))
            continue
        if not isinstance(row, dict):
            bad.append((n, f"row is a {type(row).__name__}, expected a JSON object"))
            continue
        text = _pick(row, (problem_field,) if problem_field else PROBLEM_ALIASES)
        if isinstance(text, list):  # a chat: the problem is the last user turn (TRL, verl)
            text = last_user_turn(text)
            if text is None:
                bad.append((n, "the prompt is a message list without a user turn whose content is text"))
                continue
        if not isinstance(text, str) or not text.strip():
            wanted = problem_field or "|".join(PROBLEM_ALIASES)
            bad.append((n, f"no problem text (looked for {wanted})"))
            continue
        if len(text) > max_chars:
            bad.append((n, f"problem text of {len(text):,} characters, over the cap of {max_chars:,} (max_chars)"))
            continue
        answer, alternatives = answer_from_row(row, answer_field=answer_field)
        if answer is None:
            wanted = answer_field or "|".join(ANSWER_ALIASES) + "|solution \\boxed{}|####"
            bad.append((n, f"no answer (looked for {wanted})"))
            continue
        key = " ".join(text.split())
        if key in seen:
            first = seen[key]
            dups.append((n, first.meta["row"]))
            if not _same_answer(answer, first.answer):
                conflicts.append((n, first, answer))
            continue
        pid = _pick(row, ID_ALIASES)
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, (str, int, float))):
            odd_ids.append((n, type(pid).__name__))
            pid = None
        meta = {k: v for k, v in row.items() if k not in (problem_field, answer_field) and k not in PROBLEM_ALIASES and k not in ANSWER_ALIASES and k not in ID_ALIASES and k != "solution"}
        meta.setdefault("source", name)
        meta["row"] = n
        if len(alternatives) > 1:
            meta["answer_alternatives"] = alternatives
        problems.append(Problem(id=str(pid) if pid is not None else f"{name}:{n}", problem=text, answer=answer, meta=meta))
        seen[key] = problems[-1]
    renamed = _unique_ids(problems)
    conflicts = [(n, first.meta["row"], first.id, answer, first.answer) for n, first, answer in conflicts]

    report = {"source": name, "rows": len(rows), "bad": bad, "duplicates": dups, "conflicts": conflicts,
              "renamed_ids": renamed, "odd_ids": odd_ids}
    if bad and strict:
        raise DataError(f"{len(bad)} of {len(rows)} rows of {name} are unusable: " + _first(bad))
    if verbose:
        _print_report(report)
    if limit is not None and limit < len(problems):
        order = list(range(len(problems)))
        random.Random(seed).shuffle(order)
        problems = [problems[i] for i in sorted(order[:limit])]
    return problems, report


def _same_answer(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split()) or is_equiv(a, b)


def _unique_ids(problems: list[Problem]) -> list[tuple[int, str, str]]:
    """Give each repeat of an earlier id a "#k" suffix (k = 2, 3, ...; never an id the file already
    holds), in place; returns (row, id, new id) of each renamed problem."""
    taken = {p.id for p in problems}
    seen, renamed = set(), []
    for p in problems:
        if p.id in seen:
            k = 2
            while f"{p.id}#{k}" in taken:
                k += 1
            renamed.append((p.meta["row"], p.id, f"{p.id}#{k}"))
            p.id = f"{p.id}#{k}"
            taken.add(p.id)
        seen.add(p.id)
    return renamed


def _print_report(report: dict) -> None:
    name, rows = report["source"], report["rows"]
    bad, dups, conflicts, renamed, odd = (report[k] for k in ("bad", "duplicates", "conflicts", "renamed_ids", "odd_ids"))
    if bad:
        print(f"[data] {name}: skipped {len(bad)} of {rows} rows: {_first(bad)}", file=sys.stderr)
    if dups:
        print(f"[data] {name}: {len(dups)} duplicate problems kept once: "
              + ", ".join(f"row {i} repeats row {j}" for i, j in dups[:5]) + (" ..." if len(dups) > 5 else ""),
              file=sys.stderr)
    if conflicts:
        print(f"[data] {name}: {len(conflicts)} of them answer differently; the first answer is kept: "
              + "; ".join(f"row {i} answers {_clip(a)!r}, row {j} (id {_clip(pid)!r}) {_clip(b)!r}"
                          for i, j, pid, a, b in conflicts[:5])
              + (" ..." if len(conflicts) > 5 else ""), file=sys.stderr)
    if odd:
        print(f"[data] {name}: {len(odd)} rows have an id that is neither a string nor a number and are named "
              f"'{name}:<row>' instead: " + ", ".join(f"row {i} ({kind})" for i, kind in odd[:5])
              + (" ..." if len(odd) > 5 else ""), file=sys.stderr)
    if renamed:
        print(f"[data] {name}: {len(renamed)} rows repeat an earlier id and were renamed: "
              + ", ".join(f"row {i}: {_clip(old)!r} -> {_clip(new)!r}" for i, old, new in renamed[:5])
              + (" ..." if len(renamed) > 5 else ""), file=sys.stderr)


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."


def last_user_turn(messages: list) -> str | None:
    """The text of the last {"role": "user", "content": ...} message of a chat (content a string, or a list
    of parts whose "text" parts are joined, as multimodal chats store it); None when there is none."""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            parts = [c.get("text") for c in content if isinstance(c, dict) and c.get("type", "text") == "text"]
            content = "".join(t for t in parts if isinstance(t, str)) if parts else None
        return content if isinstance(content, str) and content.strip() else None
    return None


def answer_from_row(row: dict, *, answer_field: str | None = None) -> tuple[str | None, list[str]]:
    """The reference answer of one raw row, and every alternative form it lists."""
    value = _field(row, answer_field) if answer_field else _pick(row, ANSWER_ALIASES)
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
    if isinstance(value, int):
        return str(value)  # not through float: an integer past 1e308 does not fit one
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value.strip() or None
    return None


def _pick(row: dict, keys):
    for k in keys:
        if k is not None and (value := _field(row, k)) is not None:
            return value
    return None


def _field(row: dict, name: str):
    """row[name], or for a dotted name that is not itself a key the nested value (reward_model.ground_truth)."""
    if name in row or "." not in name:
        return row.get(name)
    value = row
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _first(items, n=5) -> str:
    return "; ".join(f"row {i}: {why}" for i, why in items[:n]) + (" ..." if len(items) > n else "")


@dataclass(frozen=True)
class _BadLine:
    """A JSONL line that is not JSON: a row load_problems_report reports and skips."""
    why: str


def _read_rows(source, split) -> tuple[str, list[tuple[int, object]]]:
    """(name, [(row number from 1, row)]) of a local file or a Hub dataset."""
    path = Path(source)
    if path.exists():
        if path.is_dir():
            raise DataError(f"{path} is a directory; expected a .jsonl, .json or .parquet file")
        return path.name, _read_file(path)
    if path.suffix in (".jsonl", ".json", ".parquet") or str(source).startswith((".", "/")):
        raise DataError(f"problem file {source} does not exist")
    return str(source), list(enumerate(_read_hub(str(source), split), start=1))


def _read_file(path: Path) -> list[tuple[int, object]]:
    if path.suffix == ".jsonl":
        return _read_jsonl_rows(path)
    if path.suffix == ".json":
        raw = path.read_bytes()
        bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
        text = _decode(path, raw[bom:], bom, 1, "line")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
        except (ValueError, RecursionError) as e:  # a number past int's digit limit; nesting too deep
            raise DataError(f"{path}: not readable JSON: {_one_line(e)}") from e
        if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise DataError(f"{path} holds an object; expected a list of problems (or one list inside)")
            data = lists[0]
        if not isinstance(data, list):
            raise DataError(f"{path} holds a {type(data).__name__}; expected a list of problems")
        return list(enumerate(data, start=1))
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise DataError(f"reading {path} needs pyarrow: pip install pyarrow (or convert it to .jsonl)") from e
        try:
            return list(enumerate(pq.read_table(path).to_pylist(), start=1))
        except Exception as e:  # pyarrow's errors for a torn or foreign file have no common base
            raise DataError(f"{path}: not a readable parquet file: {type(e).__name__}: {_one_line(e)}") from e
    raise DataError(f"{path}: unknown file type {path.suffix!r}; expected .jsonl, .json or .parquet")


def _read_jsonl_rows(path: Path) -> list[tuple[int, object]]:
    """One row per non-blank line, numbered by line; a line that is not JSON becomes a _BadLine. Read
    as bytes, a line at a time, so that a byte that is not UTF-8 is named by its offset in the file."""
    rows, offset = [], 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):  # binary lines end at b"\n" only, as editors count them
            start = len(codecs.BOM_UTF8) if n == 1 and raw.startswith(codecs.BOM_UTF8) else 0  # Windows editors write one
            line = _decode(path, raw[start:], offset + start, n, "row")
            offset += len(raw)
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                rows.append((n, _BadLine(f"invalid JSON ({e.msg} at column {e.colno})")))
            except (ValueError, RecursionError) as e:  # a number past int's digit limit; nesting too deep
                rows.append((n, _BadLine(f"unreadable JSON ({_one_line(e)})")))
    return rows


def _decode(path: Path, raw: bytes, offset: int, first_line: int, unit: str) -> str:
    """raw as UTF-8; otherwise a DataError naming the file, the row (or line) and the byte offset."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + raw.count(b"\n", 0, e.start)
        raise DataError(f"{path}: {unit} {line} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                        f"{offset + e.start} of the file); save the file as UTF-8, e.g. "
                        f"iconv -f latin1 -t utf-8 {path.name}") from e


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


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
    messages = prompt_messages(problem, template)
    if template == "plain":
        return messages  # no chat markup: the text itself
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat_template; use 'qwen-math' or 'plain'")
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"  # ChatML with the assistant turn open


def prompt_messages(problem: str | Problem, template: str = "qwen-math") -> list[dict] | str:
    """The prompt of `format_prompt` as a trainer's dataset holds it (TRL's conversational `prompt`, verl's
    `prompt`): a message list whose ChatML rendering with an open assistant turn is format_prompt's text
    (qwen-math: system instruction + user turn; chatml: the user turn; chat: the user turn with the
    instruction appended). `plain` has no chat markup, so it is the prompt text itself. format_prompt renders
    these messages, so the two cannot disagree."""
    text = problem.problem if isinstance(problem, Problem) else problem
    if template == "qwen-math":
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]
    if template == "chatml":
        return [{"role": "user", "content": text}]
    if template == "chat":
        return [{"role": "user", "content": f"{text}\n{SYSTEM_PROMPT}"}]
    if template == "plain":
        return f"{text}\n{SYSTEM_PROMPT}\n"
    raise ValueError(f"unknown prompt template {template!r}; expected one of {', '.join(TEMPLATES)}")


def prompt_lengths(problems: list[Problem], tokenizer, template: str) -> dict[str, int]:
    """{problem id: tokens of its rendered prompt}, one batched tokenizer call (a prompt plus its
    completion budget must fit the model's context, and the memory plan sizes by the longest)."""
    prompts = [format_prompt(p.problem, tokenizer, template) for p in problems]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if prompts else []
    return {p.id: n for p, n in zip(problems, lengths)}


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
