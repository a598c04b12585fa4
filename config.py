"""config.py -- every setting of a run, its default and its check: one place for both entry points.

    GRPOConfig      the trainer's knobs (grpo.py; `python grpo.py --help`), presets qwen-math-1.5b, dapo,
                    dr_grpo, toy (GRPOConfig.PRESETS)
    Config          the pipeline's flags (saerl.py; `python saerl.py --help`): the SAE, the probes, the
                    schedule, the arms and their evaluation; GRPO's knobs pass through to GRPOConfig
    PAPER, TOY      the defaults that differ between the real run and the embedded toy world, for the
                    Config fields left at None
    parse_args      saerl.py's command line -> (Config, the GRPOConfig fields given)
    resolve         every flag checked, each world's defaults filled in -> (Config, GRPOConfig)
    PIPELINE, STAGES  saerl.run's stages in order, each with what its cache key holds (runtime.Stage)

Each field is a flag (`--sae-layer` for `sae_layer`; runtime.flag carries its help text). A bad value
stops the run before anything loads, with one line naming the flag, its value and what is allowed
(runtime.ConfigError). Imports: runtime, data (the prompt templates), sampler (the engines), evaluate
(benchmark names), plan (--plan's flags).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import plan
from data import TEMPLATES
from evaluate import resolve_benchmark
from parallel import dist_info
from runtime import (TRACKERS, ConfigError, Stage, add_dataclass_args, check, check_device, dataclass_from_args,
                     flag, given_args, installed)
from sampler import ENGINES


# ----------------------------------------------------------------------------------------------
# The trainer (grpo.py)
# ----------------------------------------------------------------------------------------------
LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
ADV_SCALES = ("std", "none")
OVERLONG = ("none", "mask", "soft")


@dataclass
class GRPOConfig:
    """Every knob of the trainer; each field is a CLI flag (`--field-name`).

    Defaults target Qwen2.5-Math-1.5B zero-RL as in the public recipes (SimpleRL-Zoo, Dr. GRPO's
    oat-zero, Open-Reasoner-Zero): G = 8, lr 1e-6 constant, beta = 0, temperature 1.0, top-p 1.0,
    3000 new tokens, the Qwen2.5-Math CoT template. B = 64 prompts per step (512 rollouts) is our
    choice: the recipes use 64-128 and the SAERL paper does not say.
    """
    # what a step is
    batch_size: int = flag(64, "problems per step (B); a schedule's batches may differ, the schedule wins")
    group_size: int = flag(8, "completions sampled per problem (G)")
    num_steps: int = flag(500, "steps of the random (vanilla GRPO) schedule built when no schedule is given "
                               "(a given --schedule is trained with --max-steps)")
    max_steps: int | None = flag(None, "stop after this many schedule steps (none: the whole schedule)",
                                 type=lambda text: None if text.lower() == "none" else int(text))
    template: str = flag("qwen-math", "prompt template for data.format_prompt: qwen-math | plain | chat | chatml")
    # sampling
    temperature: float = flag(1.0, "sampling temperature; log-probs use the same temperature")
    top_p: float = flag(1.0, "nucleus sampling; log-probs ignore it (as TRL), so keep 1.0 for exact ratios")
    max_new_tokens: int = flag(3000, "completion budget; also Dr. GRPO's max_len and DAPO's L_max")
    gen_batch_size: int | str = flag(32, "prompts per generate call (each expanded to G rows; the KV cache is sized "
                                     "by it); auto: the most that the memory plan fits on this GPU, the whole "
                                     "batch in one call where it fits (plan.auto_gen_batch_size)",
                                     type=lambda text: text if text == "auto" else int(text))
    rollout_engine: str = flag("compact", "decoder: compact (preallocated KV cache, finished rows leave the "
                             "batch) | hf (transformers generate, the reference) | graph (fixed-shape decode "
                             "steps as CUDA graphs, no host sync between checks; graph_decode.py)")
    sync_every: int = flag(32, "graph engine: the host checks finiteness and finished rows every this many tokens")
    rollout_dtype: str = flag("auto", "the model that generates: auto (a bf16 copy on CUDA, the policy on CPU) "
                            "| policy | bfloat16 | float16 | float32 (a copy refreshed after each update)")
    tis_cap: float = flag(2.0, "truncated importance weight min(pi_train/pi_sampler, cap) on each token when the "
                        "rollout model is a copy in another dtype (bf16 vs fp32 mismatch); 0 disables")
    parallel: str = flag("ddp", "under torchrun: ddp (every rank holds the whole policy and AdamW state) | fsdp2 "
                         "(each rank holds 1/N of them; parallel.py)")
    # objective
    loss_type: str = flag("grpo", "aggregation: grpo (per-sequence mean) | dapo (token mean) | dr_grpo")
    adv_scale: str = flag("std", "advantage: std = (r-mean)/(std+eps) (GRPO) | none = r-mean (Dr. GRPO)")
    eps_low: float = flag(0.2, "lower clip range: ratio >= 1 - eps_low")
    eps_high: float = flag(0.2, "upper clip range: ratio <= 1 + eps_high (DAPO clip-higher: 0.28)")
    beta: float = flag(0.0, "k3 KL weight to the initial policy; 0 loads no reference model")
    num_iterations: int = flag(1, "optimisation passes (optimizer steps) per sampled batch (GRPO's mu)")
    skip_zero_std: bool = flag(False, "drop groups whose rewards are all equal from the loss (DAPO-lite)")
    overlong: str = flag("none", "truncated completions: none | mask (drop from loss) | soft (DAPO penalty)")
    overlong_buffer: int = flag(512, "DAPO L_cache: the soft penalty ramps over the last this-many tokens")
    # optimisation
    lr: float = flag(1e-6, "AdamW learning rate (constant after warmup)")
    warmup_steps: int = flag(0, "linear warmup steps from lr/warmup_steps to lr")
    weight_decay: float = flag(0.0, "AdamW weight decay")
    adam_beta1: float = flag(0.9, "AdamW beta1")
    adam_beta2: float = flag(0.999, "AdamW beta2")
    max_grad_norm: float = flag(1.0, "gradient clipping by global norm (<= 0 disables)")
    micro_batch_size: int = flag(64, "at most this many sequences per forward/backward (gradients accumulate)")
    max_tokens_per_micro_batch: int = flag(16384, "and at most this many tokens (0: no token budget); rows "
                                         "are sorted by length first so micro-batches hold similar lengths")
    packing: str = flag("auto", "padding-free micro-batches (one row, positions reset per sequence): on | off | "
                      "auto (on when the attention is flash_attention_2/3, which attends per sequence)")
    logprob_chunk: int = flag(1024, "completion tokens per lm-head + log-softmax chunk (memory: chunk x vocab fp32)")
    gradient_checkpointing: bool | None = flag(None, "recompute decoder activations in backward; None (auto): "
                                             "on when max_new_tokens > 1024")
    bf16: bool = flag(True, "bf16 autocast on CUDA (weights stay fp32); ignored on CPU")
    # bookkeeping
    seed: int = flag(0, "seed of the random schedule and of every step's sampling")
    save_every: int = flag(50, "checkpoint every this many steps (and always at the end)")
    keep_checkpoints: int = flag(2, "number of most recent checkpoints kept")
    eval_every: int = flag(0, "call eval_fn every this many steps (0: never)")
    report_to: str = flag("none", "experiment tracker mirroring the train and eval logs: none | wandb | tensorboard | "
                          "trackio (imported only when asked; the JSONL logs are written either way)")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Every field in its range and the combinations that cannot train, checked on construction so
        that a bad flag fails before any model loads: ConfigError (a ValueError), one line naming the
        flag, the value and what is allowed."""
        def need(ok: bool, expected: str, *names: str) -> None:
            check(ok, {name: getattr(self, name) for name in names}, expected, owner="GRPOConfig")

        for name, allowed in (("loss_type", LOSS_TYPES), ("adv_scale", ADV_SCALES), ("overlong", OVERLONG),
                              ("rollout_engine", ENGINES), ("packing", ("auto", "on", "off")),
                              ("parallel", ("ddp", "fsdp2")), ("template", TEMPLATES),
                              ("rollout_dtype", ("auto", "policy", "bfloat16", "float16", "float32")),
                              ("report_to", TRACKERS)):
            need(getattr(self, name) in allowed, f"one of {', '.join(allowed)}", name)
        need(self.report_to == "none" or installed(self.report_to), f"an installed package for it (pip install "
             f"{self.report_to}), or none", "report_to")  # found now, not after the data stages
        for name in ("batch_size", "num_steps", "max_new_tokens", "gen_batch_size", "num_iterations",
                     "micro_batch_size", "logprob_chunk", "save_every", "keep_checkpoints", "sync_every"):
            value = getattr(self, name)
            if name == "gen_batch_size" and value == "auto":
                continue
            need(isinstance(value, int) and value >= 1, "an integer >= 1", name)
        need(self.max_steps is None or self.max_steps >= 1, "an integer >= 1, or none (the whole schedule)",
             "max_steps")
        for name in ("warmup_steps", "max_tokens_per_micro_batch", "seed", "eval_every"):
            need(getattr(self, name) >= 0, "an integer >= 0", name)
        # GRPO compares the completions of one problem: with one, its std (GRPO) is undefined and its
        # advantage r - mean (Dr. GRPO) is 0, so nothing would be learned
        need(self.group_size >= 2, "an integer >= 2 (advantages compare the G completions of a problem: with one "
             "the std is undefined and r - mean is 0)", "group_size")
        need(self.temperature > 0 and math.isfinite(self.temperature), "a number > 0 (rollouts are sampled at "
             "this temperature and log-probs divided by it; greedy decoding is for evaluation)", "temperature")
        need(0 < self.top_p <= 1, "a number in (0, 1]", "top_p")
        need(0 <= self.eps_low < 1, "a number in [0, 1) (the ratio's lower clip 1 - eps_low stays > 0)", "eps_low")
        for name in ("eps_high", "beta", "tis_cap", "weight_decay"):
            need(0 <= getattr(self, name) < math.inf, "a number >= 0", name)
        need(0 < self.lr < math.inf, "a number > 0", "lr")
        for name in ("adam_beta1", "adam_beta2"):
            need(0 <= getattr(self, name) < 1, "a number in [0, 1)", name)
        need(not math.isnan(self.max_grad_norm), "a number (<= 0 disables clipping)", "max_grad_norm")
        if self.overlong == "soft":
            need(0 < self.overlong_buffer <= self.max_new_tokens, "--overlong-buffer in 1..--max-new-tokens for the "
                 "soft overlong penalty (it ramps over the last buffer tokens)", "overlong_buffer", "max_new_tokens")

    PRESETS = {
        "qwen-math-1.5b": {},
        # DAPO (Yu et al. 2025): clip-higher, token-level loss, dynamic sampling (lite), soft overlong.
        "dapo": dict(loss_type="dapo", eps_high=0.28, skip_zero_std=True, overlong="soft"),
        # Dr. GRPO (Liu et al. 2025): no std scaling, token sum over a constant length.
        "dr_grpo": dict(loss_type="dr_grpo", adv_scale="none"),
        # The toy world (toy.py): 0.5M-param char model, completions "\\boxed{N}<|im_end|>" (~12 tokens).
        # lr (seed 0, 40 steps, held-out sampled reward from 0.100): 5e-5 -> 0.141, 1e-4 -> 0.148,
        # 2e-4 -> 0.151 but greedy accuracy falls 0.230 -> 0.218; on the always-boxed world 1e-3
        # (B 64) lowered both (Adam turns the noisy policy gradient into full-size steps on every weight).
        "toy": dict(batch_size=16, group_size=16, num_steps=40, template="chatml", max_new_tokens=16,
                    gen_batch_size=16, micro_batch_size=256, max_tokens_per_micro_batch=4096, lr=1e-4,
                    warmup_steps=0, save_every=10, logprob_chunk=4096),
    }

    @classmethod
    def preset(cls, name: str = "qwen-math-1.5b", **overrides) -> "GRPOConfig":
        """A named preset (`qwen-math-1.5b`, `dapo`, `dr_grpo`, `toy`) with field overrides on top."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown GRPOConfig preset {name!r}; expected one of {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    @classmethod
    def toy(cls, **overrides) -> "GRPOConfig":
        return cls.preset("toy", **overrides)

    @property
    def checkpointing(self) -> bool:
        """Activation checkpointing as it applies: the flag, or (None) on for completions > 1024 tokens."""
        return self.max_new_tokens > 1024 if self.gradient_checkpointing is None else self.gradient_checkpointing


# ----------------------------------------------------------------------------------------------
# The pipeline (saerl.py)
# ----------------------------------------------------------------------------------------------
DEEPMATH = "zwhe99/DeepMath-103K"
PAPER_BENCHMARKS = "math500,aime24,amc23"

# The defaults that differ between the two worlds, for the Config fields left at None: TOY without --model
# (the toy world) or with --preset toy, PAPER otherwise. A flag given on the command line wins.
PAPER = dict(preset="qwen-math-1.5b", sae_width=16384, sae_k=64, sae_tokens=20_000_000,
             label_size=None,  # None: min(2000, 5% of the problems), see label_size()
             compare=False, eval_every=50, eval_limit=None, eval_samples=1, eval_batch_size=128, pace="budget")
# a 0.5M-parameter model on a CPU; avg@4 evaluation: what 40 toy steps learn first is the answer format,
# which greedy decoding already has
TOY = dict(preset="toy", sae_width=512, sae_k=16, sae_tokens=300_000, label_size=400,
           compare=True, eval_every=10, eval_limit=300, eval_samples=4, eval_batch_size=16, pace="epoch")
# --pace: the real run's 500 x 64 problems are a third of the ~93k kept, so `epoch` would train only the easier
# third of each cluster; the toy's budget covers 59% of its epoch, and its ablation grid cannot tell the two apart
# (docs/design.md, "Pace and mix")


def by_world(name: str, paper_none: str = "") -> str:
    """A flag's help: its default in each world, read from PAPER and TOY."""
    def show(v):
        return paper_none if v is None else f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)

    return f" (default {show(PAPER[name])}; in the toy world {show(TOY[name])})"


# saerl.run's stages in order and their cache keys (runtime.Stages), declared: the stages each one reads, the
# settings it depends on (Config fields; GRPOConfig fields as grpo.<field>) and the files it leaves in the run folder.
PIPELINE = (
    Stage("problems", settings=("train_data", "limit", "seed", "problem_field", "answer_field"),
          files=("problems.jsonl",)),
    Stage("sae", reads=("problems",), files=("sae/cfg.json",),
          settings=("sae", "sae_id", "sae_model", "sae_layer", "sae_width", "sae_k", "sae_tokens", "seed",
                    "grpo.template")),
    Stage("features", reads=("sae", "problems"), settings=("top_m", "pooling"), files=("features.safetensors",)),
    Stage("labels", reads=("problems",), files=("labels.json",),
          settings=("label_size", "difficulty_labels", "seed", "model", "grpo.template", "grpo.max_new_tokens")),
    Stage("quality", reads=("features", "labels"), files=("quality.json",),
          settings=("quality_drop", "no_quality_filter", "probe_features", "seed", "oracle")),
    Stage("difficulty", reads=("features", "labels"), settings=("probe_features", "seed", "oracle"),
          files=("difficulty.json",)),
    Stage("clusters", reads=("features", "quality", "difficulty"), settings=("k", "no_cluster", "seed", "oracle"),
          files=("clusters.json", "clusters.md")),
    Stage("schedule", reads=("problems", "quality", "difficulty", "clusters"),
          settings=("schedule", "pace", "steps", "mix", "no_curriculum", "compare", "seeds", "seed", "grpo.batch_size"),
          files=("schedule.jsonl", "schedules.json", "scores.jsonl")),
    Stage("train", reads=("schedule",)),  # never read back: each arm resumes from its checkpoints (run_folder.train_arms)
)
# the stages of saerl.run in order; --stage stops after one
STAGES = tuple(stage.name for stage in PIPELINE) + ("report",)
ORACLES = ("filter", "difficulty", "clusters")  # --oracle: the estimators an ablation may replace by the truth
CV_FOLDS = 5  # the difficulty proxy's α by 5-fold cross-validation, its held-out figure by nested folds
MIN_LABELS = 2 * CV_FOLDS  # the smallest labelled subset nested cross-validation can run on (saerl.fit_difficulty)


@dataclass
class Config:
    """Every setting of a run; each field is a flag (--sae-layer for sae_layer). A field left at None takes its
    world's default (PAPER or TOY, above) or one that follows from other fields (--sae-model: --model;
    --steps: the GRPO preset's num_steps; without --model, --train-data and --benchmarks: the toy world's,
    with it DeepMath-103K and MATH-500, AIME24, AMC23). GRPO's own knobs (--lr, --group-size, ...) come from
    GRPOConfig."""
    model: str | None = flag(None, "policy model (local folder or Hub id); none: the embedded toy world")
    sae_model: str | None = flag(None, "model whose SAE gives the features (default: --model)")
    sae: str | None = flag(None, "SAE to load (SAELens/sparsify/dictionary_learning/Llama Scope/Gemma Scope dir or Hub id); none: train one")
    sae_id: str | None = flag(None, "folder of the SAE inside --sae (a Hub repo or a local folder holding several), "
                              "e.g. blocks.12.hook_resid_post")
    sae_layer: int | None = flag(None, "decoder layer whose residual output is encoded (default: the middle one)")
    sae_width: int | None = flag(None, "d_sae of a trained SAE" + by_world("sae_width"))
    sae_k: int | None = flag(None, "k of a trained TopK SAE" + by_world("sae_k"))
    sae_tokens: int | None = flag(None, "training tokens of a trained SAE" + by_world("sae_tokens"))
    top_m: int = flag(256, "pooled features kept per problem")
    pooling: str = flag("mean", "SAE codes pooled over a problem's tokens (bench/feature_quality.py: max "
                        "predicts the subject better, mean the level)", choices=("mean", "max"))
    train_data: str | None = flag(None, f"training problems: .jsonl/.json/.parquet or Hub id (default {DEEPMATH}; toy: its train set)")
    problem_field: str | None = flag(None, "field holding the problem text (default: aliases)")
    answer_field: str | None = flag(None, "field holding the reference answer (default: aliases)")
    limit: int | None = flag(None, "seeded random subset of the training problems")
    k: str = flag("auto", "k-means clusters: an integer, or 'auto' (silhouette over 4,8,16,32 on a sample)")
    mix: float = flag(0.25, "batch mixing: the last mix*B/2 problems of neighbouring batches swapped (0: pure "
                            "cluster batches, 1: each batch half one cluster, half another; --schedule mixed: "
                            "every batch mixed over all clusters)")
    quality_drop: float = flag(0.1, "fraction of problems with the lowest quality score dropped")
    difficulty_labels: str = flag("field:difficulty", "difficulty labels: field:NAME, or rollouts:G (1 - pass rate of G samples)")
    label_size: int | None = flag(None, "size of the labelled subset" + by_world("label_size", "min(2000, 5%)"))
    probe_features: int = flag(2048, "probes see the SAE features most often active in the labelled subset")
    schedule: str = flag("saerl", "saerl (engineered order), mixed (ablation: the same easy-to-hard progress, every "
                                  "batch mixed over all clusters) or random (ablation: random order over the kept "
                                  "problems)")
    pace: str | None = flag(None, "a budget shorter than one epoch: epoch (train the engineered epoch's first steps; "
                                  "the curriculum stops part-way) or budget (a stratified subset of each cluster, so "
                                  "every cluster runs easy-to-hard within --steps)" + by_world("pace"))
    no_curriculum: bool = flag(False, "ablation: shuffle inside clusters instead of easy-to-hard")
    no_cluster: bool = flag(False, "ablation: one cluster (pure difficulty curriculum)")
    no_quality_filter: bool = flag(False, "ablation: keep every problem")
    oracle: str = flag("", "ablation: the known truth instead of an estimator, where the problems carry it (the toy "
                           "world): a comma list of filter (drop meta quality 0), difficulty (meta difficulty), "
                           "clusters (meta topic)")
    compare: bool | None = flag(None, "train vanilla GRPO and SAERL on the same budget" + by_world("compare"))
    seeds: int = flag(1, "seeds per arm")
    steps: int | None = flag(None, "GRPO steps per arm (default: the preset's num_steps, 500; toy 40)")
    target: float | None = flag(None, "accuracy whose first crossing is reported (default: vanilla's final accuracy)")
    benchmarks: str | None = flag(None, f"comma-separated benchmarks for evaluation (default {PAPER_BENCHMARKS}; toy: its test set)")
    eval_every: int | None = flag(None, "evaluate every this many steps, 0: never" + by_world("eval_every"))
    eval_limit: int | None = flag(None, "problems per benchmark for in-loop evaluation" + by_world("eval_limit", "all"))
    max_eval_tokens: int | None = flag(None, "completion budget at evaluation (default: the training one)")
    eval_batch_size: int | None = flag(None, "prompts per generate call at evaluation (each one row when greedy)"
                                       + by_world("eval_batch_size"))
    eval_samples: int | None = flag(None, "completions per problem at evaluation: 1 = greedy pass@1, N = avg@N "
                                          "sampled at --eval-temperature" + by_world("eval_samples"))
    eval_temperature: float = flag(1.0, "sampling temperature of avg@N evaluation (the training temperature, so "
                                        "avg@N is the mean reward)")
    preset: str | None = flag(None, "GRPOConfig preset: qwen-math-1.5b, dapo, dr_grpo, toy" + by_world("preset"))
    seed: int = flag(0, "base seed (arm seeds are seed, seed+1, ...)")
    out: str = flag("runs", "parent folder of runs")
    name: str | None = flag(None, "run name: runs/<name>/ (default: toy, or the model's last path part)")
    stage: str = flag("report", f"stop after this stage: {', '.join(STAGES)}")
    export: str = flag("", "after the schedule stage, also write the engineered order as a dataset for another "
                           "trainer, rows in training order: trl or verl (run/export/; export.py)")
    device: str = flag("auto", "auto, cpu or cuda")

    @property
    def oracles(self) -> set[str]:
        """--oracle as a set of names."""
        return {name.strip() for name in self.oracle.split(",") if name.strip()}

    def validate(self) -> None:
        """Every field in its range and the combinations that cannot run, on the resolved config (each world's
        defaults filled in, see resolve): ConfigError, one line naming the flag, its value and what is allowed."""
        def need(ok: bool, expected: str, *names: str) -> None:
            check(ok, {name: getattr(self, name) for name in names}, expected)

        need(self.preset in GRPOConfig.PRESETS, f"one of {', '.join(GRPOConfig.PRESETS)}", "preset")
        need(self.stage in STAGES, f"one of {', '.join(STAGES)}", "stage")
        need(self.export in ("", "trl", "verl"), "trl or verl (or empty: no export)", "export")
        need(self.schedule in ("saerl", "mixed", "random"), "saerl, mixed or random", "schedule")
        need(self.pace in ("epoch", "budget"), "epoch or budget", "pace")
        need(self.oracles <= set(ORACLES), f"a comma list of {', '.join(ORACLES)} (or empty)", "oracle")
        need(self.k == "auto" or (self.k.isdigit() and int(self.k) >= 1), "a positive integer or 'auto'", "k")
        kind, _, arg = self.difficulty_labels.partition(":")
        need((kind == "field" and arg != "") or (kind == "rollouts" and arg.isdigit() and int(arg) >= 1),
             "field:NAME or rollouts:G (G >= 1 sampled answers per problem)", "difficulty_labels")
        for name in ("sae_width", "sae_k", "sae_tokens", "top_m", "probe_features", "seeds", "steps", "eval_samples",
                     "eval_batch_size"):
            need(getattr(self, name) >= 1, "an integer >= 1", name)
        for name in ("limit", "eval_limit", "max_eval_tokens"):
            need(getattr(self, name) is None or getattr(self, name) >= 1, "an integer >= 1 (leave it out for the "
                 "default)", name)
        need(self.sae_k <= self.sae_width, "--sae-k at most --sae-width (a TopK SAE keeps k of its latents)",
             "sae_k", "sae_width")
        need(self.sae_layer is None or self.sae_layer >= 0, "a decoder layer index >= 0", "sae_layer")
        need(self.sae_id is None or self.sae is not None, "given only with --sae (the folder inside it)", "sae_id")
        need(self.label_size is None or self.label_size >= MIN_LABELS, f"an integer >= {MIN_LABELS} (the difficulty "
             f"proxy's alpha is chosen by {CV_FOLDS}-fold cross-validation inside each of {CV_FOLDS} outer folds)",
             "label_size")
        need(0 <= self.mix <= 1, "a number in [0, 1] (0: pure cluster batches, 1: fully mixed)", "mix")
        need(0 <= self.quality_drop < 1, "a fraction in [0, 1) of the problems to drop", "quality_drop")
        need(self.target is None or 0 <= self.target <= 1, "an accuracy in [0, 1]", "target")
        need(self.eval_every >= 0, "an integer >= 0 (0: no evaluation)", "eval_every")
        need(0 < self.eval_temperature < math.inf, "a number > 0 (greedy is --eval-samples 1)", "eval_temperature")
        if self.eval_samples == 1 and self.eval_temperature != 1.0:  # 1.0: the default, which greedy ignores
            raise ConfigError(f"--eval-temperature {self.eval_temperature} applies to avg@N evaluation: pass "
                              "--eval-samples N (N > 1); one sample is greedy")
        need(self.seed >= 0, "an integer >= 0", "seed")
        need(self.name is None or (self.name not in ("", ".", "..") and "/" not in self.name),
             "a folder name (the run folder is --out/NAME)", "name")
        check_device(self.device)
        for spec in self.benchmarks.split(",") if self.benchmarks else ():
            try:
                resolve_benchmark(spec.strip())
            except ValueError as e:
                raise ConfigError(f"--benchmarks {self.benchmarks}: {e}") from None
        local = self.train_data and Path(self.train_data).suffix in (".jsonl", ".json", ".parquet")
        need(not local or Path(self.train_data).is_file(), "an existing file (or a Hub dataset id)", "train_data")


def parse_args(argv=None) -> tuple[Config, dict]:
    """Config's flags plus every GRPOConfig field (--lr, --group-size, ...) passed through to grpo;
    returns the Config and the GRPO fields that were given."""
    ap = argparse.ArgumentParser(prog="saerl.py", description="SAERL: SAE-guided data engineering for GRPO. "
                                 "No arguments: the whole pipeline in the embedded toy world on a CPU.",
                                 parents=[plan.plan_flags()])  # --plan, --gpu-memory: read by main
    add_dataclass_args(ap, Config)
    own = {f.name for f in dataclasses.fields(Config)}
    group = ap.add_argument_group("GRPO (passed to GRPOConfig; default: the preset's value)")
    add_dataclass_args(group, GRPOConfig, skip=own | {"max_steps", "num_steps"}, unset=None)
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in given_args(GRPOConfig, args).items() if k not in own}
    return dataclass_from_args(Config, args), overrides


def resolve(cfg: Config, grpo_overrides: dict | None = None) -> tuple[Config, GRPOConfig]:
    """Every flag checked, before anything is built or loaded (ConfigError: one line naming the flag, its value
    and what is allowed), with the fields left at None filled from the run's world (TOY without --model or
    with --preset toy, PAPER otherwise) and --steps from the preset; returns (cfg, the run's GRPOConfig, built
    once, with the pipeline's step budget and evaluation period)."""
    world = TOY if cfg.model is None or cfg.preset == "toy" else PAPER
    cfg = dataclasses.replace(cfg, **{name: value for name, value in world.items() if getattr(cfg, name) is None})
    if cfg.steps is None and cfg.preset in GRPOConfig.PRESETS:  # an unknown preset is validate()'s to name
        cfg = dataclasses.replace(cfg, steps=GRPOConfig.preset(cfg.preset).num_steps)
    cfg.validate()
    gcfg = GRPOConfig.preset(cfg.preset, **{**(grpo_overrides or {}), "max_steps": cfg.steps,
                                                 "eval_every": cfg.eval_every})
    check(not (cfg.export == "verl" and gcfg.template == "plain"), {"export": cfg.export, "template": gcfg.template},
          "a chat template (qwen-math, chatml or chat): verl's rows hold the prompt as messages")
    if dist_info()[1] > 1 and cfg.stage != "report":
        raise ConfigError(f"--stage {cfg.stage}: torchrun runs the whole pipeline; for --stage {cfg.stage} use one "
                          "process (python saerl.py --stage ...), then torchrun for training")
    return cfg, gcfg


def stage_settings(cfg: Config, gcfg) -> dict:
    """What a PIPELINE stage may name: every Config field, and every GRPOConfig field as grpo.<field>."""
    return dataclasses.asdict(cfg) | {f"grpo.{name}": value for name, value in dataclasses.asdict(gcfg).items()}
