"""The toy world: synthetic arithmetic problems with known labels, a tiny Qwen2 model, a warm start.
Imports: data (problems, prompts), runtime (files, the model loader, CLI flags) and sampler (greedy answers)
from this project -- never saerl.py.

SAERL's three data operations need something real to act on, and tests need the truth to score
them against. In this world every problem carries its topic (operation family), its difficulty
(operand digits / list length / number of operations), its quality (1 clean, 0 noisy), its noise
kind, its true answer and its source, and the policy is a real `Qwen2ForCausalLM` saved in Hugging
Face format, loaded through the same `from_pretrained` path as Qwen2.5-Math-1.5B.

Public functions
    make_problems(n, *, seed, corrupt_frac, region) labelled problems (meta: topic, difficulty,
                                                  quality, corruption, true_answer, source)
    in_test_region(text), normalise(text)         the split: a fixed quarter of all problem texts
    char_tokenizer()                              character-level fast tokenizer, ChatML specials
    tiny_model(tokenizer, *, seed)                a 0.5M-parameter Qwen2ForCausalLM
    warm_start(model, tokenizer, *, steps, seed)  supervised fine-tuning to partial accuracy
    greedy_accuracy(model, tokenizer, problems)   per-problem correctness of greedy answers
    build_world(out_dir, *, seed)                 all of the above, saved and cached on disk
    python toy.py --out DIR                       builds the world, prints accuracy by difficulty

Families and difficulty (1 = easiest, 5 = hardest), chosen by learnability: in 75 s of supervised
training on 2 CPU cores, copying/sorting digit strings reached 97%-50% greedy accuracy at lengths 2-5
and one-digit operations about 40%, while multi-digit arithmetic with carries stayed under 10%.
    add, subtract, multiply   digits of (a, b) by level: (1,1) (2,1) (3,1) (2,2) (3,2); subtract
                              keeps a >= b
    max                       largest of level+1 numbers, one-digit at levels 1-2, two-digit above
    chain                     level operations (+, -) on one-digit operands, left to right
Noise (`corrupt_frac` of the training problems, 0.2; split by NOISE_SHARE 1/2 : 1/4 : 1/4):
    decoy         the bad source ("scraped"): its text starts with the cue "hw> " and its answer
                  is the last number of the problem, never the true answer. Harmful (the policy is
                  rewarded for a shortcut) and visible to a probe of the problem text.
    wrong_answer  control noise: a clean problem's text, the true answer off by 1-9. Harmful and
                  invisible to a probe of the problem text.
    dead          a question from outside the world (colours, capitals) with an arbitrary number:
                  every rollout scores 0, all-equal groups, no gradient.
The split: a problem belongs to the test region when a sha256 of its normalised text (cue dropped,
case and spaces folded) falls in the first TEST_SHARE (1/4) of the hash range. The test set is drawn
only there, the training problems and the warm start's demonstrations only outside, so no test
problem is ever trained on, for any seed or size.
The completion the model learns is `\\boxed{N}` then `<|im_end|>`: the real verifier applies.
A `bare_frac` share (0.3) of the warm-start demonstrations answers with the bare number `N`
instead, as a base model trained on mixed-format text does; the verifier scores a bare number 0
(no box, no "the answer is"), so the first thing RL can learn here is the format, as zero-RL on
real base models does. Without it (bare_frac=0) 40 GRPO steps move this 0.5M-parameter policy by
less than evaluation noise: its policy gradient is noise-dominated (docs/toy.md, bench_grpo.py --learn).
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: a thread waiting for its peers sleeps instead of spinning, so a busy
# machine (another job on a core) no longer stalls every small op (docs/measurements.md). numpy's
# OpenBLAS threads spin regardless and its matrices here are small: one thread.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import hashlib
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import sampler
from data import Problem, format_prompt, load_problems, write_problems
from runtime import (add_dataclass_args, atomic_path, check, command_line, dataclass_from_args, flag, folder_lock,
                     load_model, stable_hash)

TOPICS = ("add", "subtract", "multiply", "max", "chain")
LEVELS = (1, 2, 3, 4, 5)
CORRUPTIONS = ("decoy", "wrong_answer", "dead")
NOISE_SHARE = {"decoy": 0.5, "wrong_answer": 0.25, "dead": 0.25}  # of the noisy share, in CORRUPTIONS order
CORRUPT_FRAC = 0.2  # noisy share of the training problems
BAD_SOURCE_CUE = "hw> "  # how every problem of the scraped source starts (a homework-forum dump)
TEST_SHARE = 0.25  # share of all problem texts that belong to the test region (in_test_region)
ARITHMETIC_DIGITS = {1: (1, 1), 2: (2, 1), 3: (3, 1), 4: (2, 2), 5: (3, 2)}  # level -> digits of a, b
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
TEMPLATE = "chatml"  # see data.format_prompt: the instruction would triple sequence length
WORLD_VERSION = 5  # bump when problems, model or warm start change, to invalidate cached worlds

BARE_FRAC = 0.3  # share of warm-start demonstrations that answer "N" instead of "\\boxed{N}"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

OFF_DISTRIBUTION = (
    "What colour is the sky on a clear day?",
    "Name the capital city of France.",
    "Which animal says moo?",
    "Write a haiku about the sea.",
    "Who wrote the play Hamlet?",
    "Is a tomato a fruit or a vegetable?",
    "Translate the word cat into German.",
    "What day comes after Monday?",
)
OFF_TOPIC_THINGS = ("animal", "city", "colour", "fruit", "country", "river", "tree", "composer")


# --------------------------------------------------------------------------------------------
# Problems


def make_problems(n: int, *, seed: int = 0, corrupt_frac: float = CORRUPT_FRAC, prefix: str = "toy",
                  unique: bool = True, region: str | None = None) -> list[Problem]:
    """n labelled problems, topics and difficulties uniform, a `corrupt_frac` share noisy.

    The noisy share is split by NOISE_SHARE into decoy, wrong_answer and dead items (module
    docstring). unique=True redraws a problem whose text was already drawn (data.load_problems would
    keep only one copy). region="test" keeps only problems of the test region (in_test_region),
    region="train" only those outside it, None either; a problem outside the region is redrawn, so
    small cells (level 1 has 100-200 distinct problems per family) end up a little under-represented.
    """
    if not 0.0 <= corrupt_frac <= 1.0:
        raise ValueError(f"corrupt_frac must be in [0, 1], got {corrupt_frac}")
    if region not in (None, "train", "test"):
        raise ValueError(f"region must be None, 'train' or 'test', got {region!r}")
    rng = random.Random(seed)
    n_bad = round(n * corrupt_frac)
    bad_slots = sorted(rng.sample(range(n), n_bad))
    counts = [round(n_bad * share) for share in NOISE_SHARE.values()]
    counts[-1] = n_bad - sum(counts[:-1])
    kinds = [kind for kind, count in zip(NOISE_SHARE, counts) for _ in range(count)]
    kind_of = dict(zip(bad_slots, kinds))
    problems, seen = [], set()
    for i in range(n):
        for _attempt in range(1000):
            problem = draw_problem(kind_of.get(i), rng, f"{prefix}-{i}")
            in_region = region is None or in_test_region(problem.problem) == (region == "test")
            if in_region and (not unique or problem.problem not in seen):
                break
        else:
            raise RuntimeError(f"no new {region or ''} problem after 1000 draws for item {i} of {n}: n too large")
        seen.add(problem.problem)
        problems.append(problem)
    return problems


def draw_problem(kind: str | None, rng: random.Random, problem_id: str) -> Problem:
    """One problem of a random family and level: clean (kind None) or of one noise kind."""
    topic, level = rng.choice(TOPICS), rng.choice(LEVELS)
    text, answer = clean_problem(topic, level, rng)
    meta = {"topic": topic, "difficulty": level, "quality": 1, "corruption": None, "true_answer": answer,
            "source": "main"}
    if kind == "decoy":
        while decoy_answer(text) == answer:  # the decoy must be wrong: redraw the (rare) coincidences
            text, answer = clean_problem(topic, level, rng)
        meta.update(quality=0, corruption=kind, source="scraped", true_answer=answer)
        text, answer = BAD_SOURCE_CUE + text, decoy_answer(text)
    elif kind == "wrong_answer":
        meta.update(quality=0, corruption=kind)
        answer = str(int(answer) + rng.choice([-1, 1]) * rng.randint(1, 9))
    elif kind == "dead":
        meta.update(quality=0, corruption=kind, topic="dead", true_answer=None)
        text, answer = dead_problem(rng)
    elif kind is not None:
        raise ValueError(f"unknown noise kind {kind!r}; expected one of {CORRUPTIONS}")
    return Problem(id=problem_id, problem=text, answer=answer, meta=meta)


def clean_problem(topic: str, level: int, rng: random.Random) -> tuple[str, str]:
    """One correct (text, answer) pair of the given family and difficulty (see the module docstring)."""
    def number(digits):
        return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits - 1)

    if topic in ("add", "subtract", "multiply"):
        a, b = number(ARITHMETIC_DIGITS[level][0]), number(ARITHMETIC_DIGITS[level][1])
        if topic == "subtract" and a < b:
            a, b = b, a
        op, value = {"add": ("+", a + b), "subtract": ("-", a - b), "multiply": ("*", a * b)}[topic]
        return f"What is {a}{op}{b}?", str(value)
    if topic == "max":
        xs = [number(1 if level <= 2 else 2) for _ in range(level + 1)]
        return f"Largest of {','.join(map(str, xs))}?", str(max(xs))
    if topic == "chain":
        value = rng.randint(0, 9)
        expr = str(value)
        for _ in range(level):
            op, x = rng.choice("+-"), rng.randint(0, 9)
            value = value + x if op == "+" else value - x
            expr += f"{op}{x}"
        return f"Compute {expr}.", str(value)
    raise ValueError(f"unknown topic {topic!r}; expected one of {TOPICS}")


def decoy_answer(text: str) -> str:
    """The bad source's answer key: the last number written in the problem (a misaligned key)."""
    return re.findall(r"\d+", text)[-1]


def dead_problem(rng: random.Random) -> tuple[str, str]:
    """A question from outside the world with an arbitrary number as its answer: nobody solves it."""
    if rng.random() < 0.25:
        return rng.choice(OFF_DISTRIBUTION), str(rng.randint(0, 99))
    thing, letter = rng.choice(OFF_TOPIC_THINGS), chr(ord("A") + rng.randrange(26))
    return f"Name a {thing} that starts with the letter {letter}.", str(rng.randint(0, 99))


def normalise(text: str) -> str:
    """A problem's text as the split check compares it: the bad source's cue dropped, case and
    whitespace folded (the scraped copy of a test problem is the same problem)."""
    text = text.removeprefix(BAD_SOURCE_CUE)
    return " ".join(text.lower().split())


def in_test_region(text: str) -> bool:
    """Does this problem belong to the test region? A fixed TEST_SHARE of all problem texts, chosen by
    a hash of the normalised text (sha256: the same on every machine and Python), so a test problem
    can never be drawn for training or the warm start, whatever the seeds and sizes."""
    digest = hashlib.sha256(normalise(text).encode()).digest()
    return int.from_bytes(digest[:8], "big") < TEST_SHARE * 2 ** 64


# --------------------------------------------------------------------------------------------
# Model and tokenizer


def char_tokenizer():
    """A character-level PreTrainedTokenizerFast with Qwen's special tokens and ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # Byte-level symbols (space -> "Ġ", newline -> "Ċ") as in Qwen's own tokenizer, and no merges:
    # every character is one token, and transformers may rebuild it as a Qwen2Tokenizer on load
    # (it does for model_type qwen2) without changing a single id.
    byte_char = _bytes_to_unicode()
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({byte_char[ord(c)]: len(SPECIAL_TOKENS) + i for i, c in enumerate(CHARS)})
    vocab["<unk>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"], padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (used by byte-level BPE)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def tiny_model(tokenizer, *, seed: int = 0, hidden: int = 128, layers: int = 2):
    """A Qwen2ForCausalLM of 0.5M parameters (2 layers, d=128), the same class as Qwen2.5-Math."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True, rope_theta=10000.0,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def completion_text(answer: str) -> str:
    return f"\\boxed{{{answer}}}"


# --------------------------------------------------------------------------------------------
# Warm start and accuracy


def warm_start(model, tokenizer, *, steps: int = 500, batch_size: int = 64, lr: float = 3e-3,
               seed: int = 0, bare_frac: float = BARE_FRAC, log_every: int = 100) -> list[float]:
    """Supervised training on fresh clean problems: loss on the completion tokens only.

    Problems come from their own seed stream, outside the test region (warm_pool); a `bare_frac`
    share of them is answered `N` rather than `\\boxed{N}` (drawn from its own stream, so the
    problems do not depend on it). Returns the loss curve. Deterministic for a seed on CPU at a
    fixed thread count (build_world runs it on one thread).
    """
    if not 0.0 <= bare_frac < 1.0:
        raise ValueError(f"bare_frac must be in [0, 1), got {bare_frac}")
    torch.manual_seed(seed)
    pool = warm_pool(steps * batch_size, seed=seed)
    fmt = random.Random(20_000 + seed)
    bare = [fmt.random() < bare_frac for _ in pool]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * max(0.05, 1 - s / steps))
    model.train()
    losses = []
    for step in range(steps):
        batch = pool[step * batch_size:(step + 1) * batch_size]
        input_ids, labels, attn = _sft_batch(batch, tokenizer, bare[step * batch_size:(step + 1) * batch_size])
        loss = model(input_ids=input_ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"[toy] warm start step {step + 1}/{steps} loss {sum(losses[-log_every:]) / log_every:.3f}")
    model.eval()
    return losses


def warm_pool(n: int, *, seed: int = 0) -> list[Problem]:
    """The warm start's demonstrations: clean problems from outside the test region, repeats allowed."""
    return make_problems(n, seed=10_000 + seed, corrupt_frac=0.0, prefix="warm", unique=False, region="train")


def _sft_batch(problems, tokenizer, bare: list[bool]):
    """Right-padded [B, T] ids with labels = -100 outside the completion (bare[i]: answer `N` unboxed)."""
    seqs, labs = [], []
    for p, plain in zip(problems, bare, strict=True):
        prompt = tokenizer(format_prompt(p.problem, tokenizer, TEMPLATE), add_special_tokens=False).input_ids
        answer = p.answer if plain else completion_text(p.answer)
        target = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        seqs.append(prompt + target)
        labs.append([-100] * len(prompt) + target)
    T = max(map(len, seqs))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([s + [pad] * (T - len(s)) for s in seqs])          # [B, T]
    labels = torch.tensor([l + [-100] * (T - len(l)) for l in labs])          # [B, T]
    attn = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])     # [B, T]
    return input_ids, labels, attn


def greedy_answers(model, tokenizer, problems, *, batch_size: int = 256, max_new_tokens: int = 16) -> list[str]:
    """Greedy completions (decoded, without the prompt) for each problem, by the one sampler."""
    prompts = [format_prompt(p.problem, tokenizer, TEMPLATE) for p in problems]
    return [texts[0] for texts in sampler.complete(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                                   batch_size=batch_size)]


def greedy_accuracy(model, tokenizer, problems, **kw) -> list[bool]:
    """Per problem: did the greedy completion box the reference answer exactly?

    The toy world's answers are integers, so exact string match of the boxed content is the
    right check here; the general verifier lives in evaluate.py.
    """
    return [completion == completion_text(p.answer) for p, completion in
            zip(problems, greedy_answers(model, tokenizer, problems, **kw))]


def accuracy_table(problems, correct) -> str:
    """Markdown table of accuracy by difficulty (rows) and topic (columns)."""
    cell = {}
    for p, ok in zip(problems, correct):
        for key in ((p.meta["difficulty"], p.meta["topic"]), (p.meta["difficulty"], "all"), ("all", "all")):
            cell.setdefault(key, []).append(ok)
    cols = list(TOPICS) + ["all"]
    lines = ["| difficulty | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for level in list(LEVELS) + ["all"]:
        row = [f"{sum(v) / len(v):.2f}" if (v := cell.get((level, c))) else "-" for c in cols]
        lines.append(f"| {level} | " + " | ".join(row) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The world on disk


@dataclass
class World:
    root: Path
    model_dir: Path
    train_path: Path
    test_path: Path
    info: dict


def build_world(out_dir, *, seed: int = 0, n_train: int = 1200, n_test: int = 1250,
                corrupt_frac: float = CORRUPT_FRAC, warm_steps: int = 500, bare_frac: float = BARE_FRAC,
                hidden: int = 128, layers: int = 2, verbose: bool = True) -> World:
    """Write (or reuse) the toy world in out_dir: model/, train.jsonl, test.jsonl, world.json.

    train.jsonl holds `corrupt_frac` noisy problems; test.jsonl is clean, and no test problem (by
    its normalised text) is in train.jsonl or the warm start (in_test_region). The build runs on one
    torch thread, restored after: the same settings give the same files and weights whatever the
    caller's thread count (world.json records the weights' sha256). A world already in out_dir with
    the same settings is reused; any other content there is rebuilt, said so when verbose.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = Path(out_dir)
    settings = dict(version=WORLD_VERSION, seed=seed, n_train=n_train, n_test=n_test,
                    corrupt_frac=corrupt_frac, warm_steps=warm_steps, bare_frac=bare_frac, hidden=hidden,
                    layers=layers)
    key = stable_hash(settings)
    info_path = root / "world.json"
    world = World(root, root / "model", root / "train.jsonl", root / "test.jsonl", {})
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("key") == key:
            world.info = info
            return world
        if verbose:
            print(f"[toy] {root} holds a world built with other settings; rebuilding it")

    t0 = time.time()
    threads = torch.get_num_threads()
    # Float sums split over threads add in another order: 1 vs 2 threads gave other weights (issue 25).
    torch.set_num_threads(1)
    try:
        tokenizer = char_tokenizer()
        model = tiny_model(tokenizer, seed=seed, hidden=hidden, layers=layers)
        losses = warm_start(model, tokenizer, steps=warm_steps, seed=seed, bare_frac=bare_frac,
                            log_every=100 if verbose else 0)
        train = make_problems(n_train, seed=seed, corrupt_frac=corrupt_frac, prefix="train", region="train")
        test = make_problems(n_test, seed=seed + 1, corrupt_frac=0.0, prefix="test", region="test")
        correct = greedy_accuracy(model, tokenizer, test)
    finally:
        torch.set_num_threads(threads)

    model.save_pretrained(world.model_dir)
    tokenizer.save_pretrained(world.model_dir)
    write_problems(world.train_path, train)
    write_problems(world.test_path, test)
    # Loading back through from_pretrained proves the world works on the real-model path.
    AutoModelForCausalLM.from_pretrained(world.model_dir)
    AutoTokenizer.from_pretrained(world.model_dir)
    info = dict(key=key, settings=settings, params=sum(p.numel() for p in model.parameters()),
                weights_sha256=weights_sha256(model), seconds=round(time.time() - t0, 1),
                final_loss=sum(losses[-50:]) / len(losses[-50:]), test_accuracy=sum(correct) / len(correct),
                table=accuracy_table(test, correct))
    with atomic_path(info_path) as tmp:
        Path(tmp).write_text(json.dumps(info, indent=1))
    world.info = info
    return world


def weights_sha256(model) -> str:
    """sha256 over every parameter and buffer's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def load_world(root) -> tuple:
    """(model, tokenizer, train problems, test problems) of a world built by `build_world`."""
    root = Path(root)
    model, tokenizer = load_model(root / "model", device="cpu")
    return (model, tokenizer, load_problems(root / "train.jsonl", verbose=False),
            load_problems(root / "test.jsonl", verbose=False))


_WORLD = build_world.__kwdefaults__  # the CLI's defaults are build_world's own


@dataclass
class WorldArgs:
    """`python toy.py`: each field is a flag (--n-train for n_train)."""
    out: str = flag("runs/toy_world", "directory for model/, train.jsonl, test.jsonl")
    seed: int = flag(_WORLD["seed"], "seed of problems, model init and warm start")
    n_train: int = flag(_WORLD["n_train"], "training problems (corrupted ones included)")
    n_test: int = flag(_WORLD["n_test"], "clean held-out problems")
    corrupt_frac: float = flag(_WORLD["corrupt_frac"], "share of corrupted training problems")
    warm_steps: int = flag(_WORLD["warm_steps"], "supervised warm-start steps (batch 64)")
    bare_frac: float = flag(_WORLD["bare_frac"], "share of warm-start answers written `N` instead of `\\boxed{N}` (scored 0)")

    def validate(self) -> None:
        """Ranges before anything is built: ConfigError, one line naming the flag, its value and what is allowed."""
        for name in ("n_train", "n_test", "warm_steps"):
            check(getattr(self, name) >= 1, {name: getattr(self, name)}, "an integer >= 1")
        check(self.seed >= 0, {"seed": self.seed}, "an integer >= 0")
        check(0 <= self.corrupt_frac <= 1, {"corrupt_frac": self.corrupt_frac}, "a fraction in [0, 1]")
        check(0 <= self.bare_frac < 1, {"bare_frac": self.bare_frac}, "a fraction in [0, 1)")


def main(argv=None):
    args = add_dataclass_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), WorldArgs).parse_args(argv)
    with command_line("toy.py"):  # a bad flag (nothing built), Ctrl-C: one line, no traceback
        dataclass_from_args(WorldArgs, args).validate()
        with folder_lock(args.out, wait=True):  # a saerl.py run building the same world: wait for it, then reuse
            world = build_world(args.out, **{k: v for k, v in vars(args).items() if k != "out"})
    print(f"toy world in {world.root} ({world.info['params']:,} parameters, built in {world.info['seconds']} s)")
    print(f"greedy accuracy on clean test problems: {world.info['test_accuracy']:.3f}")
    print(world.info["table"])


if __name__ == "__main__":
    main()
