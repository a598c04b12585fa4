"""Everything that comes in from outside: problems in, prompts out (loading, field aliases,
validation, dedup, prompt templates, file IO), and the entry points' shared plumbing (one device
rule, one model loader, dataclass fields as CLI flags).
Imports: the standard library at the top (torch, transformers, huggingface_hub and datasets lazily,
inside the functions that need them); from this project only verifier's \\boxed reader (lazily).

Every other SAERL module reads training and benchmark problems through `load_problems`, renders
them with `format_prompt`, and writes its outputs with the atomic helpers of this file, so that a
killed run never leaves a half-written file behind.

Public functions
    Problem                        one problem: id, problem text, reference answer, meta
    load_problems(source, ...)     a local .jsonl / .json / .parquet file or a Hub dataset id
    format_prompt(text, tok, t)    the `qwen-math`, `plain`, `chat` or `chatml` template
    stop_token_ids(model, tok)     where a completion ends (training and evaluation alike)
    long_prompts(problems, tok, template, max_tokens)   ids whose prompt leaves no room for the completion
    answer_from_row(row, ...)      the reference answer of one raw row (aliases, \\boxed, ####)
    atomic_write_text / atomic_write_bytes / atomic_path / write_jsonl / append_jsonl / read_jsonl
    stable_hash(*parts)            sha256 of JSON-serialised parts, for cache keys
    Stages(root)                   a run folder's stage cache (stages.json) and per-stage wall times
    file_stamp / dir_stamp / number_label   input identity for cache keys; numeric label fields
    resolve_device(d)              "auto" -> cuda when available, else cpu
    load_model(name, device, dtype)  (model, tokenizer); fails at once, naming a local path, offline
    pad_safe_attention(model)      SDPA whose fully masked (left-padding) query rows stay finite
    flag(default, help) / add_dataclass_args(parser, cls) / dataclass_from_args / given_args

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

import contextlib
import hashlib
import json
import math
import os
import random
import tempfile
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

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


class DataError(ValueError):
    """A problem file that cannot be read as asked (missing file, bad rows under strict=True)."""


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
        import sys
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
        from verifier import last_boxed  # the verifier's bounded reader, one implementation

        value = last_boxed(row["solution"])
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


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers, checked once in seconds; offline mode counts as no.

    huggingface_hub retries an unreachable host for about 35 s; asking first lets every Hub path
    fail at once with advice instead."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


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


# --------------------------------------------------------------------------------------------
# Files: atomic writes (temp file in the same directory, fsync, os.replace) and JSONL


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it replaces `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file a normal file's mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_jsonl(path, rows) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_jsonl(path, row: dict) -> None:
    """Append one row and fsync, so a log survives a kill up to its last complete line."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (a killed writer) is ignored, any other bad line raises."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    rows = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if n == len(lines) - 1:
                break
            raise DataError(f"{path}: line {n + 1} is not valid JSON ({e.msg})") from e
    return rows


def write_problems(path, problems: list[Problem]) -> None:
    """Problems as JSONL rows that `load_problems` reads back unchanged (meta fields flattened)."""
    write_jsonl(path, [{**{k: v for k, v in p.meta.items() if k not in ("row", "source")},
                        "id": p.id, "problem": p.problem, "answer": p.answer} for p in problems])


def file_stamp(source) -> list:
    """[size, mtime] of a local file (empty for a Hub id), for cache keys over an input file."""
    path = Path(str(source))
    return [path.stat().st_size, path.stat().st_mtime_ns] if path.exists() else []


def dir_stamp(folder) -> list:
    """(path, size, mtime) of every file under a local folder, for keys over a given SAE."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file()) if folder and Path(folder).is_dir() else []
    return [(str(p), file_stamp(p)) for p in files]


def number_label(v):
    """A number from a label field: 3, 3.0, "3" or MATH's "Level 3"; None otherwise."""
    if isinstance(v, str) and v.strip().lower().startswith("level "):
        v = v.strip()[6:]
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def stable_hash(*parts) -> str:
    """sha256 hex of the JSON form of parts (sorted keys), for cache keys that survive restarts."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------------------------
# Entry points: the one device rule, the one model loader, dataclass fields as CLI flags


class Stages:
    """A run folder's stage cache and clock (saerl.py's stages). stages.json maps each stage to the key it last finished with;
    `cached` says whether a stage can be read back, `done` records a computed one, `timed` measures a
    stage's wall time (printed, and kept in `times` for the report)."""

    def __init__(self, root: Path, *, log=print, write: bool = True):
        self.root, self.path, self.log, self.write = root, root / "stages.json", log, write
        self.keys = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.times = {}  # stage -> {"seconds": wall time, "cached": nothing was computed}

    def cached(self, stage: str, key: str, *files: str) -> bool:
        """True when `stage` finished before with this key and its files are still there."""
        hit = self.keys.get(stage) == key and all((self.root / f).exists() for f in files)
        self.log(f"{stage}: {'cached' if hit else 'computing'}")
        if stage in self.times:
            self.times[stage]["cached"] = hit
        return hit

    def done(self, stage: str, key: str) -> None:
        self.keys[stage] = key
        if self.write:  # False on all but one process of a torchrun launch
            atomic_write_text(self.path, json.dumps(self.keys, indent=1))

    @contextlib.contextmanager
    def timed(self, stage: str):
        """Time the block; yields the stage's entry in `times` (its "cached" flag may be set inside)."""
        entry = self.times[stage] = {"seconds": None, "cached": False}
        start = time.perf_counter()
        yield entry
        entry["seconds"] = time.perf_counter() - start
        self.log(f"{stage}: {entry['seconds']:.1f} s" + (" (cached)" if entry["cached"] else ""))

    def finish(self) -> Path:
        """Print where the time went; returns the run folder."""
        self.log("stage times: " + ", ".join(f"{s} {t['seconds']:.1f} s" + (" (cached)" if t["cached"] else "")
                                        for s, t in self.times.items() if t["seconds"] is not None))
        return self.root


def resolve_device(device=None):
    """The device rule of every entry point: "auto" (or None) is CUDA when available, else the CPU;
    anything else ("cpu", "cuda", "cuda:1", a torch.device) is taken as given."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _in_hf_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # a malformed repo id and the like: not cached
        return False


def load_model(name, device=None, dtype=None):
    """(model, tokenizer) from a local folder, the local HF cache or the Hub, on resolve_device(device),
    in `dtype` (default: bf16 on CUDA for inference, fp32 on the CPU). When none of the three can
    serve `name`, fail at once with a message naming what to pass instead (no 35 s of Hub retries)."""
    name = str(name)
    if not Path(name).is_dir() and not _in_hf_cache(name) and not hub_reachable():
        raise SystemExit(f"model {name!r} is not a local folder nor in the Hugging Face cache, and the Hub is not "
                         "reachable from here (or HF_HUB_OFFLINE is set). Pass a local path: --model "
                         "/path/to/model_dir (a folder with config.json and weights, e.g. toy.build_world's "
                         "model_dir or the output of shared/tools/smollm2_to_hf.py)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device)
    except OSError as exc:  # no network, a typo in the id, a gated repo
        raise SystemExit(f"could not load model {name!r}: {exc}\nPass a local path: --model /path/to/model_dir") from exc
    return pad_safe_attention(model), tokenizer


PAD_SAFE_SDPA = "sdpa_pad_safe"


def pad_safe_attention(model):
    """Make left-padded batches safe under SDPA; returns `model` (its attention switched in place).

    Every prefill and every training forward here runs left-padded rows, and a padding position's
    query may attend to no key at all (causal, and every key before it is padding). A fully masked
    row is a softmax over nothing: CUDA SDPA kernels return NaN for it, the NaN reaches the real
    tokens of the next layer through 0 x NaN, and transformers 5 no longer repairs such rows (4.x
    did, in `_unmask_unattended`). This registers "sdpa_pad_safe" with transformers' attention
    interfaces: the same SDPA attention, with a mask in which a row that may attend to nothing may
    attend to every key instead. Only padding rows change; what a real token attends to does not.
    Other attention implementations are left alone: eager masks with a finite minimum, and
    flash-attention drops padding rows before it attends.
    """
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def pad_safe_sdpa_mask(*args, **kwargs):
        mask = sdpa_mask(*args, **kwargs)  # [B, 1, q, kv] bool, True = may attend; None = plain causal
        if mask is None or mask.dtype != torch.bool:
            return mask
        return mask | ~mask.any(-1, keepdim=True)  # a row with no key left attends to all of them

    if PAD_SAFE_SDPA not in AttentionInterface._global_mapping:
        AttentionInterface.register(PAD_SAFE_SDPA, AttentionInterface._global_mapping["sdpa"])
        AttentionMaskInterface.register(PAD_SAFE_SDPA, pad_safe_sdpa_mask)
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(PAD_SAFE_SDPA)
    return model


def flag(default, help: str, **argparse_kw):
    """A dataclass field that is also a command-line flag: `--field-name`, this default, this help.
    argparse_kw (type=, action=, required=, aliases=[...]) reach add_argument unchanged."""
    return field(default=default, metadata={"help": help, **argparse_kw})


def add_dataclass_args(parser, cls, *, skip=(), unset=MISSING):
    """One flag per field of dataclass `cls` (snake_case -> --kebab-case), help from flag(); the
    type comes from the annotation (int, float, str, optional or not). A bool field is a switch:
    `--no-x` store_true for a field named no_x, else --x / --no-x. Fields in `skip` are left out.
    With `unset` (e.g. None or argparse.SUPPRESS) every flag defaults to it instead of the field's
    default, which the help then shows, so a caller can tell which flags were given (given_args)."""
    import argparse

    for f in fields(cls):
        if f.name in skip:
            continue
        kw = {k: v for k, v in f.metadata.items() if k not in ("help", "aliases")}
        names = ["--" + f.name.replace("_", "-")] + list(f.metadata.get("aliases", ()))
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if unset is not MISSING:
            help_text += f" [{f.default}]"
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if "bool" in annotation and "action" not in kw:
            kw["action"] = "store_true" if f.name.startswith("no_") else argparse.BooleanOptionalAction
        elif "action" not in kw or kw["action"] in ("store", "append"):
            kw.setdefault("type", int if annotation.startswith("int") else
                          float if annotation.startswith("float") else str)
        default = f.default if unset is MISSING else unset
        parser.add_argument(*names, dest=f.name, default=default, help=help_text, **kw)
    return parser


def dataclass_from_args(cls, args, **extra):
    """cls built from the parsed flags of its fields (argparse.Namespace or dict), plus `extra`."""
    values = vars(args) if not isinstance(args, dict) else args
    return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values}, **extra)


def given_args(cls, args) -> dict:
    """The fields of `cls` whose flags were given, for flags added with unset=None (or SUPPRESS)."""
    values = vars(args) if not isinstance(args, dict) else args
    return {f.name: values[f.name] for f in fields(cls) if values.get(f.name) is not None}
