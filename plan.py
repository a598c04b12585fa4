"""plan.py -- the memory plan of a GRPO run, printed by `--plan` before any weight is loaded.

Owns: peak-memory arithmetic per phase (generation, training) from a model's shape and a
GRPOConfig, the flags that make a run fit a GPU, and a roofline estimate of the step time.
Imports the standard library, torch (transformers' AutoConfig lazily), parallel (unwrap) and runtime
(hub_reachable, check).

    ModelShape.load(name_or_path)         hidden/intermediate/layers/heads/vocab from config.json
    memory_plan(shape, cfg, ...) -> dict  bytes per component and phase, and the peak
    fit_flags(shape, cfg, gpu_gib) -> (overrides, plan)   the changes that fit the budget
    auto_gen_batch_size(shape, cfg, gpu_gib)   --gen-batch-size auto: the most prompts per call that fit
    format_plan(plan) -> str              the markdown table docs/gpu.md's memory section shows
    memory_plan_report(model, cfg, gpu_gib)   what --plan prints; check_plan_flags(args) its flags
    fit_to_context(schedule, lengths, cfg, context)   the schedule without prompts past the context
    gen_batch_size_on_device(policy, longest, cfg, world)   --gen-batch-size auto for the loaded policy
    oom_phase(phase)                      an out-of-memory error that names its phase and the flag to lower

What is counted (B = bytes; P = parameters; T = tokens of a micro-batch):
    weights fp32 4P, AdamW moments 8P, gradients 4P (training only: freed after each update),
    the rollout copy 2P (bf16) when it is separate, a frozen reference 4P when beta > 0;
    KV cache   rows x (prompt + max_new) x layers x 2 x kv_dim x 2 B  (bf16 copy; fp32 keys +
               bf16 values = 3 B average when fp32 weights generate under autocast, as RoPE
               promotes the keys), rows = min(gen_batch_size, B / N ranks) x G, allocated once per generate call;
    prefill    one layer's transient for the gen_batch_size prompts (each prefilled once, shared by G);
    activations what autograd keeps for backward. Per token and decoder layer, counted on a Qwen2
               layer (saved-tensor hooks, `tests/test_plan.py` checks shapes it was not fitted on):
               fp32: 32H + 16I + 8kv_dim B;  bf16 autocast: 32H + 9.5I + 5kv_dim B;  embeddings and
               final norm 10H B. With activation checkpointing only each layer's fp32 input (4H B)
               is kept, plus one layer's full set while it is recomputed;
    logits     one chunk of `logprob_chunk` positions x vocab, LOGPROB_BYTES_PER_LOGIT (20 B) per entry;
               the sampler's last-token logits, SAMPLER_BYTES_PER_LOGIT (22 B) per entry and row;
    autocast   bf16 copies of the fp32 weights (2P) that autocast keeps during the training forward
               (not under fsdp2, whose gathered layers are already bf16).
Per GPU under torchrun with N ranks: ddp holds all of the above on every rank; fsdp2 holds 1/N of the
    fp32 weights, gradients, AdamW moments (and reference), plus the whole bf16 rollout copy (2P, which
    generates) and, while a layer computes, its gathered bf16 weights (two layers with the prefetch,
    and the root's embeddings and lm head) and that layer's unsharded fp32 gradient before the
    reduce-scatter. Activations, KV cache and logits are per rank and do not shrink with N.
Not counted: the CUDA context (~0.5 GiB) and allocator fragmentation, hence the 10% headroom that
`fit_flags` keeps; evaluation, which decodes on the same rollout copy with fewer rows than
training's generation (--eval-batch-size prompts, one row each when greedy); the SAE stage's model,
which saerl.py frees before training.
"""
from __future__ import annotations

import dataclasses
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

import parallel
from runtime import check, hub_reachable

GIB = 1024 ** 3
HEADROOM = 0.90  # plan to use at most this fraction of the card
# Bytes live at once per vocabulary entry of one row. The sampler's step (top-p 1) holds the bf16
# logits 2, their fp32 copy and the tempered copy 4 + 4, the log-softmax 4 and the probabilities 4:
# 17-18 B tracked on a CPU (tests/test_plan.py counts live tensors), ~18-22 B in a review of the CUDA
# path (multinomial's own copy). The trainer's log-prob chunk: 16.5 B tracked on a CPU under bf16
# autocast (head output, fp32 copy, logsumexp temporaries, their gradients), ~20 B on CUDA. The plan
# takes the upper ends.
SAMPLER_BYTES_PER_LOGIT = 22
LOGPROB_BYTES_PER_LOGIT = 20


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def params(self) -> int:
        """Parameters of a Qwen2/Llama-style decoder (q/k/v biases as in Qwen2)."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * self.layer_params + self.hidden

    @property
    def layer_params(self) -> int:
        h, q = self.hidden, self.heads * self.head_dim
        return h * q + q + 2 * (h * self.kv_dim + self.kv_dim) + q * h + 3 * h * self.intermediate + 2 * h

    @classmethod
    def from_config(cls, c) -> "ModelShape":
        c = c.get_text_config() if hasattr(c, "get_text_config") else c
        heads = c.num_attention_heads
        return cls(hidden=c.hidden_size, intermediate=c.intermediate_size, layers=c.num_hidden_layers,
                   heads=heads, kv_heads=getattr(c, "num_key_value_heads", None) or heads,
                   head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads, vocab=c.vocab_size,
                   tied=bool(getattr(c, "tie_word_embeddings", False)))

    @classmethod
    def load(cls, name: str) -> "ModelShape":
        """A local folder's config.json, a shape known here (works offline), or the Hub's config."""
        if name in KNOWN:
            return KNOWN[name]
        path = Path(name)
        if (path / "config.json").exists():
            from transformers import AutoConfig

            return cls.from_config(AutoConfig.from_pretrained(path))
        if not hub_reachable():
            raise FileNotFoundError(f"--plan: no config for {name!r}: not a folder with config.json, not one of "
                                    f"{sorted(KNOWN)}, and the Hub is unreachable; pass a local model folder")
        from transformers import AutoConfig

        return cls.from_config(AutoConfig.from_pretrained(name))


# The configs of the paper's policies, so that --plan needs no download (values from their config.json).
KNOWN = {
    "Qwen/Qwen2.5-Math-1.5B": ModelShape(hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2,
                                         head_dim=128, vocab=151936, tied=True),
    "Qwen/Qwen2.5-Math-7B": ModelShape(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4,
                                       head_dim=128, vocab=152064, tied=False),
}


def activation_bytes_per_token(shape: ModelShape, *, bf16: bool, checkpointing: bool) -> dict:
    """Bytes autograd keeps per token of a micro-batch: {"stored": all layers, "recompute": one layer}."""
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_dim
    layer = (32 * h + 9.5 * i + 5 * kv) if bf16 else (32 * h + 16 * i + 8 * kv)
    if checkpointing:
        return {"stored": 10 * h + shape.layers * 4 * h, "recompute": layer}
    return {"stored": 10 * h + shape.layers * layer, "recompute": 0.0}


def memory_plan(shape: ModelShape, cfg, *, prompt_tokens: int = 512, cuda: bool = True, world: int = 1) -> dict:
    """Peak bytes per phase for `cfg` (a grpo.GRPOConfig) on one device of `world` (torchrun ranks).
    prompt_tokens is the longest prompt expected (the KV cache and a padded micro-batch are sized by it)."""
    p = shape.params
    shard = getattr(cfg, "parallel", "ddp") == "fsdp2" and world > 1
    rollout_dtype = cfg.rollout_dtype
    if rollout_dtype == "auto":
        rollout_dtype = "bfloat16" if cuda else ("float32" if shard else "policy")
    copy_bytes = {"policy": 0, "bfloat16": 2, "float16": 2, "float32": 4}[rollout_dtype] * p
    bf16 = cuda and cfg.bf16
    # what generation's keys/values are stored in
    kv_bytes = 2 if rollout_dtype in ("bfloat16", "float16") else (3 if bf16 else 4)
    act_bytes = 2 if (bf16 or rollout_dtype in ("bfloat16", "float16")) else 4
    gen_prompts = min(cfg.gen_batch_size, max(1, cfg.batch_size // world))  # a rank generates its share B/N at most
    rows = gen_prompts * cfg.group_size
    seq = prompt_tokens + cfg.max_new_tokens
    checkpointing = cfg.checkpointing
    if cfg.max_tokens_per_micro_batch > 0:
        mb_tokens = max(cfg.max_tokens_per_micro_batch, seq)  # a row longer than the budget goes alone
        mb_tokens = min(mb_tokens, cfg.micro_batch_size * seq)
    else:
        mb_tokens = cfg.micro_batch_size * seq
    act = activation_bytes_per_token(shape, bf16=bf16, checkpointing=checkpointing)
    n = world if shard else 1  # FSDP2 divides what is sharded by the world size
    resident = {"weights (fp32)": 4 * p / n, "AdamW moments (fp32)": 8 * p / n,
                "rollout copy": copy_bytes, "reference model": 4 * p / n if cfg.beta > 0 else 0}
    generation = dict(resident)
    generation["KV cache"] = rows * seq * shape.layers * 2 * shape.kv_dim * kv_bytes
    generation["prefill (one layer)"] = gen_prompts * prompt_tokens * (3 * shape.intermediate
                                                                              + 4 * shape.hidden) * act_bytes
    generation["last-token logits"] = rows * shape.vocab * SAMPLER_BYTES_PER_LOGIT
    training = dict(resident)
    training["gradients (fp32)"] = 4 * p / n
    if bf16 and not shard:  # autocast keeps a bf16 copy of each weight it casts until the forward ends
        training["autocast bf16 weight copies"] = 2 * p
    if shard:  # two layers gathered (one prefetched) and the root, in the compute dtype; one layer's fp32 grads
        root = shape.vocab * shape.hidden * (1 if shape.tied else 2) + shape.hidden
        training["gathered layers (FSDP2)"] = (2 * shape.layer_params + root) * (2 if bf16 else 4)
        training["unsharded layer gradient"] = 4 * max(shape.layer_params, root)
    training["activations"] = mb_tokens * (act["stored"] + act["recompute"])
    training["logits chunk"] = min(cfg.logprob_chunk, mb_tokens) * shape.vocab * LOGPROB_BYTES_PER_LOGIT
    phases = {"generation": generation, "training": training}
    totals = {k: sum(v.values()) for k, v in phases.items()}
    return {"model_params": p, "world": world, "parallel": "fsdp2" if shard else "ddp", "rows": rows, "seq_tokens": seq, "micro_batch_tokens": mb_tokens,
            "checkpointing": checkpointing, "rollout_dtype": rollout_dtype, "phases": phases, "totals": totals,
            "peak": max(totals.values()), "peak_phase": max(totals, key=totals.get)}


def auto_gen_batch_size(shape: ModelShape, cfg, gpu_gib: float, *, prompt_tokens: int = 512, world: int = 1) -> int:
    """--gen-batch-size auto: the most prompts per generate call whose planned generation stays under
    HEADROOM x gpu_gib, tried as a rank's share B / N in 1, 2, 3, ... equal calls (so no call is a
    small remainder); 1 when even that does not fit (the plan's report then says what else to lower)."""
    share = max(1, cfg.batch_size // world)
    for calls in range(1, share + 1):
        size = -(-share // calls)
        planned = memory_plan(shape, dataclasses.replace(cfg, gen_batch_size=size), prompt_tokens=prompt_tokens,
                              world=world)
        if planned["totals"]["generation"] <= HEADROOM * gpu_gib * GIB:  # training does not depend on it
            return size
    return 1


def fit_flags(shape: ModelShape, cfg, gpu_gib: float, *, prompt_tokens: int = 512, world: int = 1) -> tuple[dict, dict]:
    """Changes, tried in this order (activation checkpointing, a smaller micro-batch token budget, a smaller
    log-prob chunk, fewer prompts per generate call, and last no separate rollout copy) that bring the plan's peak
    under HEADROOM x gpu_gib. Returns (flag overrides, the plan with them); raises if none fits."""
    budget = HEADROOM * gpu_gib * GIB
    seq = prompt_tokens + cfg.max_new_tokens
    changes: dict = {}

    def plan():
        return memory_plan(shape, dataclasses.replace(cfg, **changes), prompt_tokens=prompt_tokens, world=world)

    current = plan()
    while current["peak"] > budget:
        c = dataclasses.replace(cfg, **changes)
        if current["peak_phase"] == "training" and not c.checkpointing:
            changes["gradient_checkpointing"] = True
        elif current["peak_phase"] == "training" and c.max_tokens_per_micro_batch > seq:
            changes["max_tokens_per_micro_batch"] = max(seq, c.max_tokens_per_micro_batch // 2)
        elif current["peak_phase"] == "training" and c.logprob_chunk > 128:
            changes["logprob_chunk"] = c.logprob_chunk // 2
        elif current["peak_phase"] == "generation" and current["rows"] > c.group_size:
            changes["gen_batch_size"] = current["rows"] // c.group_size // 2
        elif current["rollout_dtype"] != "policy" and current["parallel"] == "ddp":  # last: no bf16 copy
            changes["rollout_dtype"] = "policy"
        else:
            raise ValueError(f"no setting fits {gpu_gib} GiB: the peak stays {current['peak'] / GIB:.1f} GiB "
                             f"({current['peak_phase']}) with {changes or 'the defaults'}; the resident weights, "
                             "gradients and AdamW moments alone need "
                             f"{16 * current['model_params'] / GIB / (world if current['parallel'] == 'fsdp2' else 1):.1f}"
                             " GiB per GPU (shard them over more GPUs: torchrun --nproc_per_node N with "
                             "--parallel fsdp2, planned with --world-size N)")
        current = plan()
    return changes, current


def format_plan(plan: dict, *, title: str = "") -> str:
    """A markdown table: one row per component, one column per phase, totals last."""
    phases = list(plan["phases"])
    names = list(dict.fromkeys(k for ph in phases for k in plan["phases"][ph]))
    lines = [f"{title}\n" if title else "",
             f"model {plan['model_params'] / 1e9:.2f}B params; "
             + (f"{plan['parallel']} over {plan['world']} GPUs (per GPU below); " if plan["world"] > 1 else "")
             + f"{plan['rows']} rows x {plan['seq_tokens']} tokens "
             f"per generate call; micro-batch {plan['micro_batch_tokens']} tokens; activation checkpointing "
             f"{'on' if plan['checkpointing'] else 'off'}; rollout model: {plan['rollout_dtype']}", "",
             "| GiB | " + " | ".join(phases) + " |", "|---|" + "---:|" * len(phases)]
    for n in names:
        cells = [plan["phases"][ph].get(n) for ph in phases]
        if not any(cells):
            continue
        lines.append(f"| {n} | " + " | ".join("" if c is None else f"{c / GIB:.1f}" for c in cells) + " |")
    lines.append("| **total** | " + " | ".join(f"**{plan['totals'][ph] / GIB:.1f}**" for ph in phases) + " |")
    return "\n".join(lines).lstrip("\n")


def plan_flags():
    """--plan and --gpu-memory, shared by grpo.py's and saerl.py's command lines."""
    import argparse

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--plan", action="store_true", help="print the memory plan per phase for --model (from its "
                    "config, nothing loaded) and the flags that fit --gpu-memory, then exit")
    ap.add_argument("--gpu-memory", type=float, default=80.0, help="GiB of the card --plan fits the run to")
    ap.add_argument("--world-size", type=int, default=1, help="GPUs --plan plans for (torchrun --nproc_per_node); "
                    "with --parallel fsdp2 the weights, gradients and AdamW moments are split over them")
    return ap


def check_plan_flags(args) -> None:
    """--gpu-memory > 0 GiB and --world-size >= 1 (runtime.ConfigError, one line)."""
    check(0 < args.gpu_memory < float("inf"), {"gpu_memory": args.gpu_memory}, "GiB > 0")
    check(args.world_size >= 1, {"world_size": args.world_size}, "an integer >= 1")


def memory_plan_report(model: str, cfg, *, gpu_gib: float, prompt_tokens: int = 512, world: int = 1) -> str:
    """--plan: the plan of `cfg` for `model` (config only, no weights) and the flags that fit gpu_gib."""
    shape = ModelShape.load(model)
    if cfg.gen_batch_size == "auto":
        cfg = dataclasses.replace(cfg, gen_batch_size=auto_gen_batch_size(shape, cfg, gpu_gib,
                                                                          prompt_tokens=prompt_tokens, world=world))
    base = memory_plan(shape, cfg, prompt_tokens=prompt_tokens, world=world)
    where = "one CUDA device" if world == 1 else f"each of {world} CUDA devices"
    out = [format_plan(base, title=f"Memory plan for {model} on {where} (GiB; prompts up to {prompt_tokens} tokens)")]
    budget = HEADROOM * gpu_gib
    try:
        changes, fitted = fit_flags(shape, cfg, gpu_gib, prompt_tokens=prompt_tokens, world=world)
    except ValueError as e:
        out.append(f"\nDoes not fit {gpu_gib:g} GiB: {e}")
        return "\n".join(out)
    if not changes:
        out.append(f"\nFits {gpu_gib:g} GiB: peak {base['peak'] / GIB:.1f} GiB ({base['peak_phase']}) "
                   f"<= {budget:.1f} GiB ({HEADROOM:.0%} of the card).")
    else:
        flags = " ".join(f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else f"--{k.replace('_', '-')}"
                         for k, v in changes.items())
        out.append(f"\nPeak {base['peak'] / GIB:.1f} GiB ({base['peak_phase']}) exceeds {budget:.1f} GiB; "
                   f"to fit {gpu_gib:g} GiB pass: {flags}  (peak then {fitted['peak'] / GIB:.1f} GiB)")
    return "\n".join(out)


# The run's fit (grpo.train): problems past the context left out, --gen-batch-size auto on its device
def fit_to_context(schedule: list[list[str]], lengths: dict[str, int], cfg, context: int | None, *,
                   report: bool = True) -> list[list[str]]:
    """The schedule without the problems whose prompt (lengths: data.prompt_lengths) + cfg.max_new_tokens
    exceed the model's context (`context` positions; None: no limit known). Those are reported (count,
    first ids) and left out of their batches, like bad rows; a batch left empty is an error naming its step."""
    if context is None:
        return schedule
    scheduled = list(dict.fromkeys(pid for batch in schedule for pid in batch))
    room = context - cfg.max_new_tokens
    too_long = {pid for pid in scheduled if lengths[pid] > room}
    if not too_long:
        return schedule
    if report:
        first = [pid for pid in scheduled if pid in too_long][:5]
        print(f"grpo: {len(too_long)} of {len(scheduled)} scheduled problems have prompts over {room} tokens "
              f"(context {context} - max_new_tokens {cfg.max_new_tokens}) and are left out of their batches; "
              f"first ids: {', '.join(map(repr, first))}", file=sys.stderr)
    fitted = [[pid for pid in batch if pid not in too_long] for batch in schedule]
    for i, batch in enumerate(fitted):
        if not batch:
            raise ValueError(f"schedule step {i}: every problem's prompt is over {room} tokens (context {context} - "
                             f"max_new_tokens {cfg.max_new_tokens}); lower --max-new-tokens or drop those problems")
    return fitted


def gen_batch_size_on_device(policy, longest_prompt: int, cfg, world: int, *, report: bool = True) -> int:
    """--gen-batch-size auto: on CUDA the most prompts per generate call that the memory plan fits on
    this GPU for the longest scheduled prompt (auto_gen_batch_size); elsewhere a rank's whole
    share of the batch in one call."""
    share = max(1, cfg.batch_size // world)
    if next(policy.parameters()).device.type != "cuda":
        return share
    longest = longest_prompt
    gib = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB
    size = auto_gen_batch_size(ModelShape.from_config(parallel.unwrap(policy).config), cfg, gib,
                               prompt_tokens=longest, world=world)
    if report:
        print(f"grpo: --gen-batch-size auto: {size} prompts per generate call ({gib:.0f} GiB GPU, prompts up to "
              f"{longest} tokens)", file=sys.stderr)
    return size


# Out of memory: say which phase ran out and which flag lowers that phase's peak
class PhaseOutOfMemory(torch.OutOfMemoryError):
    """Out of memory, with the phase that ran out and the flags that lower its peak."""


ADVICE = {
    "generation": "lower --gen-batch-size or --max-new-tokens (KV cache = rows x tokens; see --plan)",
    "training": "lower --max-tokens-per-micro-batch or --logprob-chunk, or pass --gradient-checkpointing",
    "evaluation": "lower --eval-batch-size or --max-eval-tokens (saerl.py), --batch-size or --max-new-tokens "
                  "(evaluate.py)",
}


@contextmanager
def oom_phase(phase: str, detail: str = ""):
    """Re-raise a CUDA out-of-memory error with the phase it happened in and the flags that help."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        if isinstance(e, PhaseOutOfMemory):
            raise
        raise PhaseOutOfMemory(f"out of memory during {phase}{detail}: {ADVICE[phase]}. ({e})") from e
