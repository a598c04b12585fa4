"""runtime.py -- the run's plumbing: what every entry point needs and no reader of the method should.
Imports: the standard library at the top (torch, transformers and huggingface_hub lazily, inside the
functions that need them); nothing from this project.
Over 600 lines because it is every entry point's shared plumbing in one place, off the reading path;
split by concern it would only add modules a reader of the method never opens.

Every output file is written atomically (a temporary file beside it, fsync, os.replace), so that a
killed run never leaves a half-written file behind; logs are appended line by line and fsynced.

Public functions
    DataError                      an input that cannot be read as asked (bad file, bad rows, bad JSONL)
    atomic_write_text / atomic_write_bytes / atomic_path / write_jsonl / append_jsonl / read_jsonl
    stable_hash(*parts)            sha256 of JSON-serialised parts, for cache keys
    file_stamp / dir_stamp         input identity (size, mtime) for cache keys
    Stage, Stages(root, ...)       a run folder's stage cache (stages.json), keys derived, and wall times
    resolve_device(d)              "auto" -> cuda when available, else cpu
    hub_reachable()                whether the Hugging Face Hub answers (checked in seconds)
    load_model(name, device, dtype)  (model, tokenizer); fails at once, naming a local path, offline
    pad_safe_attention(model)      SDPA whose fully masked (left-padding) query rows stay finite
    flag(default, help) / add_dataclass_args(parser, cls) / dataclass_from_args / given_args
    ConfigError, check(ok, flags, expected), check_device(device)   a bad flag as one line, found before any load
    FolderInUse, folder_lock(folder)   one process at a time per run folder (fcntl.flock, freed when a process dies)
    Interrupted                    Ctrl-C, with where the run stopped and how to resume
    command_line(prog)             those three as one line on stderr and an exit status, no traceback
    Tracker(kind, out_dir)         --report-to: log rows mirrored to wandb / TensorBoard / trackio, imported lazily
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import shlex
import socket
import sys
import tempfile
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path


class DataError(ValueError):
    """An input that cannot be read as asked (missing file, bad rows under strict=True, a bad JSONL line)."""


class NonFiniteError(FloatingPointError):
    """A reward, loss, gradient norm or next-token distribution was NaN/inf; nothing was applied."""


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
    """Rows of a JSONL file: UTF-8 (a leading byte-order mark allowed), one JSON object per line, lines
    ending at "\\n" only (write_jsonl leaves U+2028 and U+0085 unescaped inside strings). A torn last line
    (a killed writer) is ignored; any other bad line raises a DataError naming the file and the line (from 1)."""
    raw = Path(path).read_bytes()
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = bom + e.start
        line = raw.count(b"\n", 0, offset) + 1
        raise DataError(f"{path}: line {line} is not UTF-8 text (byte 0x{raw[offset]:02x} at offset {offset} "
                        "of the file)") from e
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line starts no line of its own
        lines.pop()
    rows = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:  # JSONDecodeError; a number past int's digit limit; deep nesting
            if n == len(lines) - 1:
                break
            raise DataError(f"{path}: line {n + 1} is not valid JSON ({getattr(e, 'msg', None) or e})") from e
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {n + 1} is a JSON {type(row).__name__}, expected an object")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Cache keys and the stage cache


def stable_hash(*parts) -> str:
    """sha256 hex of the JSON form of parts (sorted keys), for cache keys that survive restarts."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def file_stamp(source) -> list:
    """[size, mtime] of a local file (empty for a Hub id), for cache keys over an input file."""
    path = Path(str(source))
    return [path.stat().st_size, path.stat().st_mtime_ns] if path.exists() else []


def dir_stamp(folder) -> list:
    """(path, [size, mtime]) of every file under a local folder (empty when it is not one), for keys over a given SAE."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file()) if folder and Path(folder).is_dir() else []
    return [(str(p), file_stamp(p)) for p in files]


@dataclass(frozen=True)
class Stage:
    """One cached step of a pipeline, declared: the stages whose outputs it reads, the settings it depends on
    (names in the settings dict Stages is given) and the files it leaves in the run folder."""
    name: str
    reads: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


class Stages:
    """A run folder's stage cache and clock.

    A stage's key is derived, never written by hand: the hash of its name, the values of the settings it
    names, the keys (in this run) of the stages it reads and any `stamp` of the files outside the run
    folder it reads. stages.json keeps the key each stage last finished with; a stage whose key is
    unchanged and whose files exist is read back, not recomputed, so a changed setting recomputes its
    stage and every stage that reads it, directly or not. `times` holds each stage's wall time (printed,
    and listed in the report), and whether it was read back."""

    def __init__(self, root, pipeline, settings: dict, *, log=print, write: bool = True):
        self.root = Path(root)
        self.path = self.root / "stages.json"
        self.pipeline = {stage.name: stage for stage in pipeline}
        self.settings, self.log, self.write = settings, log, write  # write: False on all but one torchrun process
        self.finished = json.loads(self.path.read_text()) if self.path.exists() else {}  # stage -> its last key
        self.keys = {}   # stage -> its key in this run
        self.times = {}  # stage -> {"seconds": wall time, "cached": nothing was computed}
        self.current = None  # the stage running now (named when the run is interrupted)

    @contextlib.contextmanager
    def run(self, name: str, *, stamp=(), files=None):
        """Time stage `name` and yield whether it must be computed (False: read its files back); a computed
        stage is recorded as finished when the block ends. stamp: file_stamp / dir_stamp of the inputs it
        reads from outside the run folder; files: instead of the declared ones (e.g. none for a given input)."""
        with self.timed(name) as entry:
            key = self.keys[name] = self.key(name, stamp)
            files = self.pipeline[name].files if files is None else files
            entry["cached"] = self.finished.get(name) == key and all((self.root / f).exists() for f in files)
            self.log(f"{name}: {'cached' if entry['cached'] else 'computing'}")
            yield not entry["cached"]
            if not entry["cached"]:
                self.done(name)

    def key(self, name: str, stamp=()) -> str:
        """Stage `name`'s key in this run (the stages it reads must have run first)."""
        stage = self.pipeline[name]
        return stable_hash(name, {s: self.settings[s] for s in stage.settings}, [self.keys[r] for r in stage.reads],
                           stamp)

    def done(self, name: str) -> None:
        """Record stage `name` as finished with its key in this run."""
        if name not in self.keys:  # a stage timed but not cached through run(), e.g. training
            self.keys[name] = self.key(name)
        self.finished[name] = self.keys[name]
        if self.write:
            atomic_write_text(self.path, json.dumps(self.finished, indent=1))

    @contextlib.contextmanager
    def timed(self, name: str):
        """Time the block; yields the stage's entry in `times` (its "cached" flag may be set inside)."""
        entry = self.times[name] = {"seconds": None, "cached": False}
        self.current, start = name, time.perf_counter()
        yield entry
        self.current, entry["seconds"] = None, time.perf_counter() - start
        self.log(f"{name}: {entry['seconds']:.1f} s" + (" (cached)" if entry["cached"] else ""))

    def finish(self) -> Path:
        """Print where the time went; returns the run folder."""
        self.log("stage times: " + ", ".join(f"{s} {t['seconds']:.1f} s" + (" (cached)" if t["cached"] else "")
                                        for s, t in self.times.items() if t["seconds"] is not None))
        return self.root


# --------------------------------------------------------------------------------------------
# Entry points: the one device rule, the one model loader, dataclass fields as CLI flags


def resolve_device(device=None):
    """The device rule of every entry point: "auto" (or None) is CUDA when available, else the CPU;
    anything else ("cpu", "cuda", "cuda:1", a torch.device) is taken as given."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)



def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers, checked once in seconds; offline mode counts as no.

    huggingface_hub retries an unreachable host for about 35 s; asking first lets every Hub path
    fail at once with advice instead."""
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


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
    folder = Path(name)
    if folder.is_dir() and not (folder / "config.json").exists():
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) or "nothing"
        raise SystemExit(f"model folder {name} has no config.json (found: {found}); expected a Hugging Face model "
                         "folder (config.json, tokenizer files, *.safetensors), e.g. what save_pretrained writes")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:  # no network, a typo in the id, a gated repo, no tokenizer files
        raise SystemExit(f"could not load the tokenizer of model {name!r}: {str(exc)[:300]}\nPass a local path: "
                         "--model /path/to/model_dir (a folder with config.json, tokenizer files and weights)") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device)
    except OSError as exc:
        raise SystemExit(f"could not load model {name!r}: {exc}\nPass a local path: --model /path/to/model_dir") from exc
    except Exception as exc:  # safetensors and torch raise their own kinds on a truncated or corrupt weights file
        raise SystemExit(f"could not read the weights of model {name!r} ({type(exc).__name__}: {str(exc)[:200]}); a "
                         "truncated or corrupt download? download it again or save it again") from exc
    return pad_safe_attention(model), tokenizer


def cache_kwarg(model) -> str:
    """The name of a model forward's KV-cache argument: `cache` in recent transformers 5, `past_key_values` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


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

    On CUDA a decode step (one new token per row) with grouped KV heads attends without repeat_kv's
    copies (`grouped_decode_attention`): transformers' SDPA repeats K and V per query head whenever
    a mask is passed, ~heads/kv_heads times the KV traffic of the step that dominates generation.
    """
    if getattr(model.config, "_attn_implementation", None) != "sdpa":  # already switched, or not SDPA
        return model
    _register_pad_safe_sdpa()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(PAD_SAFE_SDPA)
    else:  # transformers before set_attn_implementation
        model.config._attn_implementation = PAD_SAFE_SDPA
    return model


def _register_pad_safe_sdpa() -> None:
    """Register "sdpa_pad_safe" with transformers' attention and mask interfaces (once: a model is
    switched once, so this runs once per model, not per forward)."""
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if PAD_SAFE_SDPA in AttentionInterface._global_mapping:
        return

    sdpa = AttentionInterface._global_mapping["sdpa"]

    def pad_safe_sdpa_mask(*args, **kwargs):
        mask = sdpa_mask(*args, **kwargs)  # [B, 1, q, kv] bool, True = may attend; None = plain causal
        if mask is None or mask.dtype != torch.bool:
            return mask
        return mask | ~mask.any(-1, keepdim=True)  # a row with no key left attends to all of them

    def pad_safe_sdpa(module, query, key, value, attention_mask, **kwargs):
        if query.is_cuda and query.shape[2] == 1 and key.shape[1] != query.shape[1] and not module.training:
            return grouped_decode_attention(query, key, value, attention_mask, kwargs.get("scaling")), None
        return sdpa(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(PAD_SAFE_SDPA, pad_safe_sdpa)
    AttentionMaskInterface.register(PAD_SAFE_SDPA, pad_safe_sdpa_mask)


def grouped_decode_attention(query, key, value, mask, scale=None):
    """Attention of one new token per row, query [B, heads, 1, hd] over key, value [B, kv_heads, K, hd],
    with no copies of K and V: the query heads that share a KV head become that head's "positions"
    ([B, kv_heads, heads / kv_heads, hd], head h on KV head h // (heads / kv_heads), as repeat_kv
    pairs them), so one SDPA call reads each key once. mask: [B, 1, 1, K] bool or None. Returns
    [B, 1, heads, hd], the layout transformers' attention functions return."""
    import torch.nn.functional as F

    rows, heads, _, head_dim = query.shape
    grouped = query.reshape(rows, key.shape[1], heads // key.shape[1], head_dim)
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=mask, scale=scale)
    return out.reshape(rows, heads, 1, head_dim).transpose(1, 2).contiguous()


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


# --------------------------------------------------------------------------------------------
# Entry points: a bad flag, a folder another run holds and Ctrl-C, each as one line


class ConfigError(ValueError):
    """A setting outside what it allows. The message is one line naming the flag, the value given and what
    is allowed; each config dataclass raises it from validate() (GRPOConfig: on construction), and every
    entry point checks its flags so before it loads anything."""


def check(ok: bool, flags: dict, expected: str, *, owner: str = "") -> None:
    """Raise ConfigError unless `ok`: "--group-size 1 with --adv-scale std: expected ..." for
    flags={"group_size": 1, "adv_scale": "std"} (field names; their values). `owner`, a dataclass name,
    adds the fields' own spelling, (GRPOConfig.group_size=1), for a config built in code."""
    if ok:
        return
    given = " with ".join(f"--{name.replace('_', '-')} {shlex.quote(str(value))}" for name, value in flags.items())
    spelled = ", ".join(f"{owner}.{name}={value!r}" for name, value in flags.items())
    raise ConfigError(f"{given}: expected {expected}" + (f" ({spelled})" if owner else ""))


def check_device(device: str, name: str = "device") -> None:
    """--device: auto, or a device torch knows (cpu, cuda, cuda:1, ...) that this machine has."""
    import torch

    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        parsed = None
    check(parsed is not None, {name: device}, "auto, cpu, cuda or cuda:N")
    if parsed.type == "cuda":
        check(torch.cuda.is_available(), {name: device}, "a device this machine has (no CUDA device is visible); "
              "pass auto or cpu")
        check(parsed.index is None or parsed.index < torch.cuda.device_count(), {name: device},
              f"one of the {torch.cuda.device_count()} visible CUDA devices")


LOCK_FILE = "run.lock"


class FolderInUse(RuntimeError):
    """Another running process holds the folder's lock (folder_lock)."""


@contextlib.contextmanager
def folder_lock(folder, *, wait: bool = False, log=None):
    """Hold `folder`'s lock for the block, so that two runs never write one run folder at once (two
    processes resuming the same checkpoints would interleave their logs and overwrite each other).

    The lock is fcntl.flock on folder/run.lock: the kernel drops it when its process ends in any way,
    kill -9 included, so a lock left by a dead process is free and the next run takes it over (saying
    whose it was). The file is never deleted (two processes must always lock the same file); the holder
    writes its pid, host and start time into it, for the message of the process it turns away, and
    empties it when the block ends (normally or by an exception), so only a killed holder leaves it
    filled. wait=False: raise FolderInUse naming the holder; wait=True: say so and wait for it.
    `log`: where those lines go (default stderr)."""
    import fcntl

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(path, settle=True)
            if not wait:
                raise FolderInUse(f"{folder} is in use by {holder}; wait for it to end (or stop it), then run "
                                  "the command again") from None
            log(f"{folder} is in use by {holder}; waiting for it to end")
            fcntl.flock(fd, fcntl.LOCK_EX)
        held = True
        stale = _lock_holder(path)
        if stale:
            log(f"{folder}: taking over the lock of {stale}, which ended without releasing it")
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode("utf-8"), 0)
        os.fsync(fd)
        yield path
    finally:
        if held:  # the process goes on or ends normally (an exception, Ctrl-C): nothing left to take over
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock


def _lock_holder(path: Path, settle: bool = False) -> str:
    """The holder written in a lock file, as "pid 123 on host (started ...)"; "" when empty. settle: the
    holder writes just after it locks, so give it a moment before reading an empty file as "unknown"."""
    for _ in range(20 if settle else 1):
        try:
            info = json.loads(path.read_text(encoding="utf-8") or "null")
        except (OSError, json.JSONDecodeError):
            info = None
        if info:
            return f"pid {info.get('pid')} on {info.get('host')} (started {info.get('started')})"
        if settle:
            time.sleep(0.05)
    return "another process (it has not written its pid yet)" if settle else ""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, its message saying where the run stopped and how to resume; command_line prints it."""


@contextlib.contextmanager
def command_line(prog: str):
    """An entry point's body: what a user can fix or asked for ends as one line on stderr, no traceback --
    a bad flag (ConfigError, exit status 2, as argparse's own errors), an input that cannot be read
    (DataError, 1), a folder another run holds (FolderInUse, 1) and Ctrl-C (130, the shell's code for
    SIGINT; an Interrupted says where to resume)."""
    try:
        yield
    except ConfigError as e:
        _exit(f"{prog}: {e}", 2)
    except (DataError, FolderInUse) as e:
        _exit(f"{prog}: {e}", 1)
    except KeyboardInterrupt as e:
        _exit(f"{prog}: {str(e) or 'interrupted'}", 130)


def _exit(message: str, status: int):
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(status) from None


# ----------------------------------------------------------------------------------------------
# Optional experiment tracking (--report-to): the JSONL logs stay the record; a tracker mirrors them
# ----------------------------------------------------------------------------------------------
TRACKERS = ("none", "wandb", "tensorboard", "trackio")


def installed(package: str) -> bool:
    """Whether `import package` would find it, without importing it."""
    if package in sys.modules:
        return sys.modules[package] is not None
    import importlib.util

    return importlib.util.find_spec(package) is not None


class Tracker:
    """Mirrors the scalar values of train_log / eval_log rows to wandb, TensorBoard or trackio.

    The package is imported only here, when asked for; one that is not installed stops at once naming
    the flag and the pip command. Lists and dicts (problem ids, per-problem scores) stay in the JSONL
    logs. The tracker's run is named after the arm's folder; wandb resumes it by that id."""

    def __init__(self, kind: str, out_dir, *, config: dict | None = None, project: str = "saerl"):
        self.kind, self.out_dir, self.backend = kind, Path(out_dir), None
        name = self.out_dir.name
        if kind == "none":
            return
        if kind not in TRACKERS:
            raise ConfigError(f"--report-to {kind}: expected one of {', '.join(TRACKERS)}")
        try:
            if kind == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter
                self.backend = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
            elif kind == "wandb":
                import wandb
                self.backend = wandb.init(project=project, name=name, id=_tracker_id(self.out_dir), resume="allow",
                                          dir=str(self.out_dir), config=config or {})
            else:
                import trackio
                trackio.init(project=project, name=name, config=config or {}, resume="allow")
                self.backend = trackio
        except ImportError as e:
            raise ConfigError(f"--report-to {kind}: the package is not installed ({e}); "
                              f"pip install {kind}, or leave --report-to at none") from None

    def log(self, row: dict, step: int, prefix: str) -> None:
        """The row's numbers (bools as 0/1) under `prefix` + name, at `step`."""
        if self.backend is None:
            return
        scalars = {prefix + k: float(v) for k, v in row.items()
                   if k != "step" and isinstance(v, (int, float, bool)) and v == v}  # NaN left out
        if self.kind == "tensorboard":
            for k, v in scalars.items():
                self.backend.add_scalar(k, v, global_step=step)
            self.backend.flush()
        else:
            self.backend.log(scalars, step=step)

    def close(self) -> None:
        if self.backend is not None:
            getattr(self.backend, "close" if self.kind == "tensorboard" else "finish")()
            self.backend = None


def _tracker_id(folder: Path) -> str:
    """A stable run id per arm folder (wandb: 8 to 128 characters), so a resumed arm continues its run."""
    return hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
