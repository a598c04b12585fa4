"""run_folder.py -- the run folder of saerl.py and the work in it that is not the method: the toy world a run
without --model enters, config.json, the line Ctrl-C prints, each model loaded once, every arm trained in its
own folder (its key, a stale arm kept aside, resume, the final model), JSON files and the log line.
Imports: config, runtime, parallel, checkpoint, evaluate, report, toy, grpo; imported by saerl.py only.

Public functions
    open_run_folder(cfg, gcfg)                       the run folder locked, config.json written, its stage cache
    enter_toy_world(cfg) / setup(cfg, gcfg, root)   the toy world's paths; the derived defaults and config.json
    where_interrupted(cfg, stages)                   what Ctrl-C prints outside training
    load_once(models, name, device)                  (model, tokenizer), loaded on the run's first call
    train_arms(cfg, gcfg, root, problems, schedules, device)   grpo.train for every arm, resuming
    cached_json(stages, name, compute)               a stage whose output is one JSON file, cached
    problem_scores(problems, quality, difficulty, clusters)   scores.jsonl's rows
    read_json / write_json / finite_or_none / log    the run's JSON files (strict: NaN as null) and its log line
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

import grpo
import toy
from checkpoint import latest_checkpoint
from config import DEEPMATH, PAPER_BENCHMARKS, PIPELINE, Config, stage_settings
from evaluate import load_benchmark, make_eval_fn
from parallel import barrier, dist_info
from report import metric_name
from runtime import (Interrupted, Stages, atomic_write_text, folder_lock, load_model, read_jsonl, resolve_device,
                     stable_hash)

# the toy world of a run without --model is --out/toy_world; this is the one `python saerl.py` builds in the repository
REPO_TOY_WORLD = Path(__file__).resolve().parent / "runs" / "toy_world"


# --------------------------------------------------------------------------------------------
# The run's world and folder: the toy world, config.json, where Ctrl-C stopped, models loaded once


@contextlib.contextmanager
def open_run_folder(cfg: Config, gcfg):
    """The run folder, ready: locked by rank 0 (one run at a time), the toy world entered when there is no
    --model, config.json written and its stage cache (config.PIPELINE) open; yields (stages, cfg, device).
    Under torchrun the other ranks first wait for rank 0 to finish the data stages, then read them back.
    Ctrl-C inside becomes runtime.Interrupted, saying where the run stopped."""
    rank, world = dist_info()
    if rank > 0:
        barrier()
    root = Path(cfg.out) / (cfg.name or ("toy" if cfg.model is None else Path(cfg.model.rstrip("/")).name))
    stages = None
    with folder_lock(root, log=log) if rank == 0 else contextlib.nullcontext():
        log(f"run folder {root.resolve()}")
        try:
            if cfg.model is None:  # no --model: the toy world (toy.py), built under --out by the first run
                cfg = enter_toy_world(cfg)
            cfg, device = setup(cfg, gcfg, root)
            stages = Stages(root, PIPELINE, stage_settings(cfg, gcfg), log=log, write=rank == 0)
            yield stages, cfg, device
        except Interrupted:
            raise
        except KeyboardInterrupt as e:
            raise Interrupted(where_interrupted(cfg, stages)) from e


def enter_toy_world(cfg: Config) -> Config:
    """The run without --model happens in the toy world (toy.py): built in --out/toy_world by the first run
    (about 100 s on a CPU, said so with the folder's full path, since --out is relative to the current
    directory) and reused after; its model, training problems and test set stand in for --model,
    --train-data and --benchmarks (those two unless given). Runs that share --out build it once: the
    first holds the folder's lock, the others wait for it."""
    folder = Path(cfg.out) / "toy_world"
    with folder_lock(folder, wait=True, log=log) if dist_info()[0] == 0 else contextlib.nullcontext():
        if not (folder / "world.json").exists():
            elsewhere = REPO_TOY_WORLD.resolve() != folder.resolve() and (REPO_TOY_WORLD / "world.json").exists()
            log(f"building the toy world in {folder.resolve()} (about 100 s on a CPU, once for this --out)"
                + (f"; {REPO_TOY_WORLD} holds one already: --out {REPO_TOY_WORLD.parent} uses it" if elsewhere else ""))
        world = toy.build_world(folder, seed=0)
    log(f"toy world {world.root.resolve()}")
    return dataclasses.replace(cfg, model=str(world.model_dir), train_data=cfg.train_data or str(world.train_path),
                               benchmarks=cfg.benchmarks or f"toy={world.test_path}")


def setup(cfg: Config, gcfg, root: Path):
    """The defaults that follow from other fields, the run folder and its config.json: (cfg, device)."""
    cfg = dataclasses.replace(cfg, sae_model=cfg.sae_model or cfg.model, train_data=cfg.train_data or DEEPMATH,
                              benchmarks=cfg.benchmarks or PAPER_BENCHMARKS)
    root.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if dist_info()[0] == 0:
        write_json(root / "config.json", {"pipeline": dataclasses.asdict(cfg), "grpo": dataclasses.asdict(gcfg)},
                   indent=1)
    log(f"device {device}")
    return cfg, device


def where_interrupted(cfg: Config, stages: Stages | None) -> str:
    """The line a Ctrl-C prints: where the run stopped (training says it from train_arms, with its checkpoint)."""
    if stages is None:
        doing = "while building the toy world" if cfg.model is None else "before the first stage"
        return f"interrupted {doing}; run the same command to start again"
    if stages.current is None:
        return "interrupted between stages; run the same command to resume (finished stages are cached)"
    return (f"interrupted during stage {stages.current}; run the same command to resume (the stages before it are "
            "cached)")


def load_once(models: dict, name: str, device):
    """(model, tokenizer) of `name`, loaded on the first call of a run (`models` is the run's dict)."""
    if name not in models:
        models[name] = load_model(name, device=device)
    return models[name]


# --------------------------------------------------------------------------------------------
# Training every arm in arms/<arm>-s<seed>/


def tracked_settings(gcfg) -> dict:
    """The GRPO settings an arm's key holds: all but --report-to, which changes where its logs are mirrored,
    not what it trains."""
    return {k: v for k, v in dataclasses.asdict(gcfg).items() if k != "report_to"}


def train_arms(cfg: Config, gcfg, root: Path, problems, schedules: dict, device):
    """grpo.train for every arm, each in arms/<arm>-s<seed>/ and resuming from its own checkpoints;
    returns ({arm: {"eval": rows, "train": rows}}, whether every arm had already finished)."""
    benches = [load_benchmark(spec, limit=cfg.eval_limit, seed=cfg.seed) for spec in cfg.benchmarks.split(",")]
    max_eval = cfg.max_eval_tokens or gcfg.max_new_tokens
    eval_temperature = 0.0 if cfg.eval_samples == 1 else cfg.eval_temperature  # one sample is greedy
    results, all_finished = {}, True
    for arm_name, batches in schedules.items():
        arm_dir = root / "arms" / arm_name
        # keyed by this arm's own batches, so adding seeds or arms keeps the finished ones
        key = stable_hash("train", batches, cfg.model, tracked_settings(gcfg), cfg.benchmarks, cfg.eval_limit,
                          max_eval, cfg.eval_batch_size, cfg.eval_samples, cfg.eval_temperature)
        marker = arm_dir / "key.txt"
        if dist_info()[0] == 0:
            if marker.exists() and marker.read_text() != key:  # settings changed: keep the old arm aside
                stale = arm_dir.with_name(f"{arm_name}.stale-{int(time.time())}")
                arm_dir.rename(stale)
                log(f"{arm_name}: settings changed; previous run moved to {stale}")
            arm_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(marker, key)
        barrier()
        seed = int(arm_name.rsplit("-s", 1)[1])
        # a fresh fp32 policy per arm (arms must not share weights): load_model gives bf16 on CUDA for
        # inference, but AdamW on bf16 weights loses small updates (grpo's bf16 flag autocasts the compute)
        policy, tok = load_model(cfg.model, device=device, dtype=torch.float32)

        eval_fn = make_eval_fn(tok, benches, template=gcfg.template, n=cfg.eval_samples,
                               temperature=eval_temperature, max_new_tokens=max_eval,
                               batch_size=cfg.eval_batch_size, seed=seed,
                               metric=metric_name(cfg.eval_samples, cfg.eval_temperature))
        last = latest_checkpoint(arm_dir / "checkpoints")
        done = int(last.name.rsplit("_", 1)[-1]) if last else 0
        all_finished &= done >= len(batches)
        log(f"training arm {arm_name}: {len(batches)} steps of {gcfg.batch_size} problems x {gcfg.group_size}"
            + ("" if not last else " (finished)" if done >= len(batches) else f", resuming from {last.name}"))
        try:
            grpo.train(policy, tok, problems, batches, dataclasses.replace(gcfg, seed=seed), out_dir=arm_dir,
                       eval_fn=eval_fn, resume=True)
        except KeyboardInterrupt as e:
            kept = latest_checkpoint(arm_dir / "checkpoints")
            raise Interrupted(f"interrupted during stage train (arm {arm_name}, last checkpoint "
                              f"{kept.name if kept else 'none yet'}); run the same command to resume") from e
        if dist_info()[0] == 0:  # the trained policy as a model folder any tool loads
            grpo.save_final(policy, tok, arm_dir)
        eval_log = arm_dir / "eval_log.jsonl"  # absent when --eval-every 0 (no evaluation asked for)
        results[arm_name] = {"eval": read_jsonl(eval_log) if eval_log.exists() else [],
                             "train": read_jsonl(arm_dir / "train_log.jsonl")}
    return results, all_finished


# --------------------------------------------------------------------------------------------
# The run's files (JSON, scores.jsonl) and the log line


def problem_scores(problems, quality, difficulty, clusters) -> list[dict]:
    """scores.jsonl: per problem its quality score, whether it was kept, predicted difficulty, cluster."""
    kept = set(quality["kept"])
    cluster_of = dict(zip(quality["kept"], clusters["labels"]))
    return [{"id": p.id, "quality": quality["scores"][i], "kept": i in kept, "difficulty": difficulty["predicted"][i],
             "cluster": cluster_of.get(i)} for i, p in enumerate(problems)]


def finite_or_none(x) -> float | None:
    """x as a float, or None (null in JSON) when it is NaN or infinite: output files stay strict JSON."""
    x = float(x)
    return x if math.isfinite(x) else None


def cached_json(stages: Stages, name: str, compute) -> dict:
    """Stage `name`'s output, <name>.json: compute() written unless the cache holds it, then read back."""
    with stages.run(name) as missing:
        if missing:
            write_json(stages.root / f"{name}.json", compute())
        return read_json(stages.root / f"{name}.json")


def read_json(path):
    return json.loads(Path(path).read_text())


def write_json(path, obj, indent=None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent))


def log(msg: str) -> None:
    rank, world = dist_info()
    print(f"[saerl{f' rank {rank}' if world > 1 else ''}] {msg}", file=sys.stderr, flush=True)
