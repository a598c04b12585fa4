"""The SAERL pipeline end to end: problems -> SAE features -> quality, difficulty, clusters -> schedule
-> GRPO -> evaluation -> report. `python saerl.py` runs it (saerl.py holds the method it calls).

Stages, in order; each writes its output under runs/<name>/ and records a key (a hash of its
settings and of the keys of the stages it reads) in stages.json. A stage whose key is unchanged is
loaded, not recomputed; a changed flag recomputes that stage and the ones after it:

    problems    load_problems(--train-data)                         problems.jsonl
    sae         load_sae(--sae), or train_sae on the problems        sae/
    features    encode_problems: pooled top-m SAE features           features.safetensors
    labels      the labelled subset; policy rollouts if asked for    labels.json
    quality     LogisticProbe on the subset -> drop lowest fraction  quality.json
    difficulty  ElasticNet proxy fit on the subset -> all problems   difficulty.json
    clusters    kmeans on L2-normalised kept rows                    clusters.json, clusters.md
    schedule    build_schedule (or random_schedule)                  schedule.jsonl, scores.jsonl
    train       grpo.train per arm and seed (resumes checkpoints)    arms/<arm>-s<seed>/
    report      accuracy curves, steps to target, data summary       report.md, report.png

`--compare` (the toy world's default) trains two arms with the same seeds, step budget and
evaluation: `vanilla` (random order over all problems, no filter) and `saerl` (the schedule).
With no --model the whole run happens in the toy world (toy.py), on a CPU, in a few minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import estimators
import saerl
from data import (Problem, atomic_write_text, format_prompt, load_problems, read_jsonl, stable_hash,
                  write_jsonl, write_problems)

STAGES = ("problems", "sae", "features", "labels", "quality", "difficulty", "clusters", "schedule",
          "train", "report")
DEEPMATH = "zwhe99/DeepMath-103K"


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    """Every setting of a run; each field is a flag (--sae-layer for sae_layer). None = the
    default of the world the run is in (toy world without --model, the paper's setting with it)."""
    model: str | None = _f(None, "policy model (local folder or Hub id); none: the embedded toy world")
    sae_model: str | None = _f(None, "model whose SAE gives the features (default: --model)")
    sae: str | None = _f(None, "SAE to load (SAELens/sparsify/dictionary_learning/Llama Scope/Gemma Scope dir or Hub id); none: train one")
    sae_layer: int | None = _f(None, "decoder layer whose residual output is encoded (default: the middle one)")
    sae_width: int | None = _f(None, "d_sae of a trained SAE (default 16384; toy 512)")
    sae_k: int | None = _f(None, "k of a trained TopK SAE (default 64; toy 16)")
    sae_tokens: int | None = _f(None, "training tokens of a trained SAE (default 20M; toy 300k)")
    top_m: int = _f(256, "pooled features kept per problem")
    train_data: str | None = _f(None, f"training problems: .jsonl/.json/.parquet or Hub id (default {DEEPMATH}; toy: its train set)")
    problem_field: str | None = _f(None, "field holding the problem text (default: aliases)")
    answer_field: str | None = _f(None, "field holding the reference answer (default: aliases)")
    limit: int | None = _f(None, "seeded random subset of the training problems")
    k: str = _f("auto", "k-means clusters: an integer, or 'auto' (silhouette over 4,8,16,32 on a sample)")
    mix: float = _f(0.25, "batch mixing: 0 = pure cluster batches, 1 = fully mixed")
    quality_drop: float = _f(0.1, "fraction of problems with the lowest quality score dropped")
    difficulty_labels: str = _f("field:difficulty", "difficulty labels: field:NAME, or rollouts:G (1 - pass rate of G samples)")
    label_size: int | None = _f(None, "size of the labelled subset (default min(2000, 5%); toy 400)")
    probe_features: int = _f(2048, "probes see the SAE features most often active in the labelled subset")
    schedule: str = _f("saerl", "saerl (engineered order) or random (ablation: random order over the kept problems)")
    pace: str = _f("epoch", "a budget shorter than one epoch: epoch (train the engineered epoch's first steps; the "
                            "curriculum stops part-way) or budget (a stratified subset of each cluster, so every "
                            "cluster runs easy-to-hard within --steps)")
    no_curriculum: bool = _f(False, "ablation: shuffle inside clusters instead of easy-to-hard")
    no_cluster: bool = _f(False, "ablation: one cluster (pure difficulty curriculum)")
    no_quality_filter: bool = _f(False, "ablation: keep every problem")
    compare: bool | None = _f(None, "train vanilla GRPO and SAERL on the same budget (default: on in the toy world)")
    seeds: int = _f(1, "seeds per arm")
    steps: int | None = _f(None, "GRPO steps per arm (default 500; toy 40)")
    target: float | None = _f(None, "accuracy whose first crossing is reported (default: vanilla's final accuracy)")
    benchmarks: str | None = _f(None, "comma-separated benchmarks for evaluation (default math500,aime24,amc23; toy: its test set)")
    eval_every: int | None = _f(None, "evaluate every this many steps (default 50; toy 10)")
    eval_limit: int | None = _f(None, "problems per benchmark for in-loop evaluation (default all; toy 300)")
    max_eval_tokens: int | None = _f(None, "completion budget at evaluation (default: the training one)")
    eval_samples: int | None = _f(None, "completions per problem at evaluation: 1 = greedy pass@1, N = avg@N "
                                        "sampled at --eval-temperature (default 1; toy 4)")
    eval_temperature: float | None = _f(None, "sampling temperature of avg@N evaluation (default 1.0, the "
                                              "training temperature, so avg@N is the mean reward)")
    preset: str | None = _f(None, "GRPOConfig preset: qwen-math-1.5b, dapo, dr_grpo, toy")
    seed: int = _f(0, "base seed (arm seeds are seed, seed+1, ...)")
    out: str = _f("runs", "parent folder of runs")
    name: str | None = _f(None, "run name: runs/<name>/ (default: toy, or the model's last path part)")
    stage: str = _f("report", f"stop after this stage: {', '.join(STAGES)}")
    device: str = _f("auto", "auto, cpu or cuda")


# --------------------------------------------------------------------------------------------
# Entry


def main(argv=None) -> Path:
    from data import DataError

    cfg, grpo_overrides = parse_args(argv)
    try:
        return run(cfg, grpo_overrides)
    except DataError as e:  # bad input: say what and where, without a traceback
        raise SystemExit(f"saerl: {e}") from e


def run(cfg: Config, grpo_overrides: dict | None = None) -> Path:
    """Run the pipeline up to cfg.stage; returns the run folder."""
    import grpo

    if cfg.stage not in STAGES:
        raise SystemExit(f"--stage {cfg.stage!r}; expected one of {', '.join(STAGES)}")
    if cfg.schedule not in ("saerl", "random"):
        raise SystemExit(f"--schedule {cfg.schedule!r}; expected saerl or random")
    if cfg.pace not in ("epoch", "budget"):
        raise SystemExit(f"--pace {cfg.pace!r}; expected epoch or budget")
    if cfg.k != "auto" and not (cfg.k.isdigit() and int(cfg.k) >= 1):
        raise SystemExit(f"--k {cfg.k!r}; expected a positive integer or 'auto'")
    if cfg.eval_samples is not None and cfg.eval_samples < 1:
        raise SystemExit(f"--eval-samples {cfg.eval_samples}; expected an integer >= 1")
    if cfg.eval_temperature is not None and not cfg.eval_temperature > 0:
        raise SystemExit(f"--eval-temperature {cfg.eval_temperature}; expected > 0 (greedy is --eval-samples 1)")
    toy_world = cfg.model is None
    run_dir = Path(cfg.out) / (cfg.name or ("toy" if toy_world else Path(cfg.model.rstrip("/")).name))
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    asked_temperature = cfg.eval_temperature
    cfg = resolve_defaults(cfg)
    if asked_temperature is not None and cfg.eval_samples == 1:
        raise SystemExit(f"--eval-temperature {asked_temperature} applies to avg@N evaluation: pass --eval-samples N "
                         "(N > 1); one sample is greedy")
    gcfg = grpo.GRPOConfig.preset(cfg.preset, **(grpo_overrides or {}))
    gcfg.max_steps = cfg.steps
    if cfg.eval_every:
        gcfg.eval_every = cfg.eval_every
    atomic_write_text(run_dir / "config.json", json.dumps(
        {"pipeline": dataclasses.asdict(cfg), "grpo": dataclasses.asdict(gcfg)}, indent=1))
    log(f"run folder {run_dir} (device {device})")
    r = Run(run_dir, cfg, gcfg, device)

    problems = r.stage_problems()
    if cfg.stage == "problems":
        return run_dir
    sae_obj, sae_key = r.stage_sae(problems)
    if cfg.stage == "sae":
        return run_dir
    feats = r.stage_features(problems, sae_obj, sae_key)
    if cfg.stage == "features":
        return run_dir
    labels = r.stage_labels(problems)
    if cfg.stage == "labels":
        return run_dir
    quality = r.stage_quality(problems, feats, labels, sae_obj)
    if cfg.stage == "quality":
        return run_dir
    difficulty = r.stage_difficulty(problems, feats, labels, quality)
    if cfg.stage == "difficulty":
        return run_dir
    clusters = r.stage_clusters(problems, feats, quality, difficulty)
    if cfg.stage == "clusters":
        return run_dir
    schedules = r.stage_schedule(problems, quality, difficulty, clusters)
    if cfg.stage == "schedule":
        return run_dir
    results = r.stage_train(problems, schedules)
    if cfg.stage == "train":
        return run_dir
    write_report(r, problems, quality, difficulty, clusters, results)
    return run_dir


def eval_metric(c: Config) -> str:
    """The in-loop evaluation metric in words."""
    if c.eval_samples == 1:
        return "greedy pass@1"
    return f"avg@{c.eval_samples} (mean reward of {c.eval_samples} samples at temperature {c.eval_temperature:g})"


def resolve_defaults(cfg: Config) -> Config:
    """Fill the None fields: the toy world's settings without --model, the paper's with it."""
    c = dataclasses.replace(cfg)
    toy_sized = c.model is None or c.preset == "toy"
    if c.model is None:
        import toy

        world = toy.build_world(Path(c.out) / "toy_world", seed=0)
        c.model = str(world.model_dir)
        c.train_data = c.train_data or str(world.train_path)
        c.benchmarks = c.benchmarks or f"toy={world.test_path}"
        c.preset = c.preset or "toy"
    c.train_data = c.train_data or DEEPMATH
    c.benchmarks = c.benchmarks or "math500,aime24,amc23"
    if toy_sized:  # a 0.5M-parameter model on a CPU
        # avg@4: what 40 toy steps learn first is the answer format, which greedy decoding already has
        defaults = dict(sae_width=512, sae_k=16, sae_tokens=300_000, label_size=400, steps=40,
                        eval_every=10, eval_limit=300, eval_samples=4, compare=True)
    else:
        defaults = dict(sae_width=16384, sae_k=64, sae_tokens=20_000_000, label_size=None, steps=500,
                        eval_every=50, eval_limit=None, eval_samples=1, preset="qwen-math-1.5b", compare=False)
    defaults["eval_temperature"] = 1.0
    for key, value in defaults.items():
        if getattr(c, key) is None:
            setattr(c, key, value)
    c.sae_model = c.sae_model or c.model
    return c


# --------------------------------------------------------------------------------------------
# Stages


class Run:
    """One run folder: its settings, the stage keys in stages.json, and the models it loads once."""

    def __init__(self, root: Path, cfg: Config, gcfg, device):
        self.root, self.cfg, self.gcfg, self.device = root, cfg, gcfg, device
        self.paced = False  # set by stage_schedule: --pace budget took effect
        self.keys_path = root / "stages.json"
        self.keys = json.loads(self.keys_path.read_text()) if self.keys_path.exists() else {}
        self._models = {}

    # -- bookkeeping
    def cached(self, stage: str, key: str, *paths: str) -> bool:
        """True when `stage` ran before with this key and left its files."""
        hit = self.keys.get(stage) == key and all((self.root / p).exists() for p in paths)
        log(f"{stage}: {'cached' if hit else 'computing'}")
        return hit

    def done(self, stage: str, key: str):
        self.keys[stage] = key
        atomic_write_text(self.keys_path, json.dumps(self.keys, indent=1))

    def model(self, name: str):
        """(model, tokenizer) loaded once per run."""
        if name not in self._models:
            from evaluate import load_model

            self._models[name] = load_model(name, device=self.device.type)
        return self._models[name]

    # -- problems
    def stage_problems(self) -> list[Problem]:
        c = self.cfg
        key = stable_hash("problems", c.train_data, c.limit, c.seed, c.problem_field, c.answer_field,
                          _file_stamp(c.train_data))
        if not self.cached("problems", key, "problems.jsonl"):
            problems = load_problems(c.train_data, limit=c.limit, seed=c.seed,
                                     problem_field=c.problem_field, answer_field=c.answer_field)
            if len(problems) < 2 * self.gcfg.batch_size:
                raise SystemExit(f"{c.train_data}: {len(problems)} usable problems; need at least "
                                 f"{2 * self.gcfg.batch_size} for batches of {self.gcfg.batch_size}")
            write_problems(self.root / "problems.jsonl", problems)
            self.done("problems", key)
        self.problems_key = key
        return load_problems(self.root / "problems.jsonl", verbose=False)

    # -- SAE
    def stage_sae(self, problems):
        from sae import load_sae, save_sae, train_sae

        c = self.cfg
        model, tok = self.model(c.sae_model)
        n_layers = model.config.num_hidden_layers
        sae_obj = load_sae(c.sae, device=self.device) if c.sae else None
        hook_layer = _hook_layer(sae_obj.meta.get("hook_name") or sae_obj.meta.get("layer")) if c.sae else None
        if c.sae_layer is not None and hook_layer is not None and c.sae_layer != hook_layer:
            raise SystemExit(f"--sae-layer {c.sae_layer}, but SAE {c.sae} was trained on layer {hook_layer} "
                             f"({sae_obj.meta.get('hook_name')}); drop --sae-layer or pass {hook_layer}")
        layer = next(x for x in (c.sae_layer, hook_layer, n_layers // 2) if x is not None)
        if not 0 <= layer < n_layers:
            raise SystemExit(f"--sae-layer {layer}: {c.sae_model} has decoder layers 0..{n_layers - 1}")
        self.layer = layer
        template = self.gcfg.template  # the SAE sees the prompts the policy sees
        if c.sae:
            hidden = model.config.hidden_size
            if sae_obj.d_in != hidden:
                raise SystemExit(f"SAE {c.sae} has d_in={sae_obj.d_in} but layer {layer} of {c.sae_model} "
                                 f"has hidden size {hidden}; pass the SAE trained on that model")
            files = sorted(p for p in Path(c.sae).rglob("*") if p.is_file()) if Path(c.sae).is_dir() else []
            return sae_obj, stable_hash("sae", c.sae, c.sae_model, layer, template,
                                        [(str(p), _file_stamp(p)) for p in files])
        key = stable_hash("sae", c.sae_model, layer, c.sae_width, c.sae_k, c.sae_tokens, c.seed, template,
                          self.problems_key)
        if not self.cached("sae", key, "sae/cfg.json"):
            texts = [self.prompt_text(p, tok) for p in problems]
            sae_obj = train_sae(model, tok, texts, layer, d_sae=c.sae_width, k=c.sae_k, tokens=c.sae_tokens,
                                seed=c.seed, device=self.device)
            save_sae(sae_obj, self.root / "sae")
            self.done("sae", key)
        return load_sae(self.root / "sae", device=self.device), key

    def prompt_text(self, problem, tokenizer) -> str:
        return format_prompt(problem.problem, tokenizer, self.gcfg.template)

    # -- features
    def stage_features(self, problems, sae_obj, sae_key):
        from sae import PooledFeatures

        key = stable_hash("features", sae_key, self.problems_key, self.cfg.top_m)
        if not self.cached("features", key, "features.safetensors"):
            pooled = self.encode(problems, sae_obj)
            pooled.save(self.root / "features.safetensors")
            self.done("features", key)
        self.features_key = key
        return PooledFeatures.load(self.root / "features.safetensors")

    def encode(self, problems, sae_obj):
        """Pooled features of problems: the policy's prompt rendering, pooled over the problem text."""
        from sae import encode_problems

        model, tok = self.model(self.cfg.sae_model)
        texts, spans = [], []
        for p in problems:
            text = self.prompt_text(p, tok)
            start = text.find(p.problem)
            texts.append(text)
            spans.append((start, start + len(p.problem)) if start >= 0 else (0, len(text)))
        return encode_problems(model, tok, texts, sae_obj, self.layer, top_m=self.cfg.top_m, char_spans=spans,
                               device=self.device, cache_dir=self.root / "cache", progress=True)

    # -- the labelled subset (and rollouts when difficulty comes from the policy)
    def stage_labels(self, problems) -> dict:
        c = self.cfg
        n = len(problems)
        size = c.label_size or min(2000, max(50, round(0.05 * n)))
        size = min(size, n)
        kind, _, arg = c.difficulty_labels.partition(":")
        if kind not in ("field", "rollouts") or not arg:
            raise SystemExit(f"--difficulty-labels {c.difficulty_labels!r}; expected field:NAME or rollouts:G")
        key = stable_hash("labels", self.problems_key, size, c.difficulty_labels, c.seed, c.model,
                          self.gcfg.template, self.gcfg.max_new_tokens)
        if not self.cached("labels", key, "labels.json"):
            subset = sorted(np.random.default_rng(c.seed).permutation(n)[:size].tolist())
            out = {"subset": subset, "difficulty": None, "rollout_answers": None}
            if kind == "field":
                values = [_as_float(problems[i].meta.get(arg)) for i in subset]
                missing = [problems[i].id for i, v in zip(subset, values) if v is None]
                if missing:
                    raise SystemExit(f"--difficulty-labels field:{arg}: {len(missing)} labelled problems have no "
                                     f"numeric '{arg}' (first: {missing[:3]}); use rollouts:G")
                out["difficulty"] = values
            else:
                out.update(self.rollout_labels([problems[i] for i in subset], int(arg)))
            atomic_write_text(self.root / "labels.json", json.dumps(out))
            self.done("labels", key)
        self.labels_key = key
        return json.loads((self.root / "labels.json").read_text())

    def rollout_labels(self, subset, group: int) -> dict:
        """Difficulty = 1 - pass rate of `group` sampled answers of the policy (the signal the proxy replaces)."""
        from evaluate import generate_completions
        from verifier import extract_answer, verify

        model, tok = self.model(self.cfg.model)
        prompts = [self.prompt_text(p, tok) for p in subset]
        completions = generate_completions(model, tok, prompts, n=group, temperature=1.0,
                                           max_new_tokens=self.gcfg.max_new_tokens,
                                           batch_size=self.gcfg.gen_batch_size, seed=self.cfg.seed)
        difficulty, answers = [], []
        for p, outs in zip(subset, completions):
            difficulty.append(1.0 - sum(verify(o, p.answer) for o in outs) / len(outs))
            answers.append([extract_answer(o) for o in outs])
        return {"difficulty": difficulty, "rollout_answers": answers}

    # -- quality
    def stage_quality(self, problems, feats, labels, sae_obj) -> dict:
        """Fit the probe on the labelled subset (explicit `quality` field, else automatic labels)
        and score every problem; keep all but the lowest `quality_drop` fraction."""
        from verifier import gold_parse_report, is_equiv

        c = self.cfg
        key = stable_hash("quality", self.features_key, self.labels_key, c.quality_drop, c.no_quality_filter,
                          c.probe_features, c.seed)
        if self.cached("quality", key, "quality.json"):
            self.quality_key = key
            return json.loads((self.root / "quality.json").read_text())
        subset = labels["subset"]
        cols = frequent_features(feats, subset, c.probe_features)
        given = [problems[i].meta.get("quality") for i in subset]
        explicit = all(q in (0, 1) for q in given) and len(set(given)) == 2
        groups = [problems[i].id for i in subset]  # held-out split by original problem (copies follow it)
        if explicit:
            source = "the problems' own 'quality' field"
            X = feats_columns(feats, subset, cols)
            y = np.array(given, dtype=np.float64)
        else:
            source = "automatic labels (unparseable answers, confident rollout disagreement, corrupted copies)"
            if all(q in (0, 1) for q in given):
                source += "; the 'quality' field holds one class only in the labelled subset"
            picked = [problems[i] for i in subset]
            parse = gold_parse_report([p.answer for p in picked])
            ok = set(range(len(picked))) - set(parse.get("unparsed_indices", []))
            auto = saerl.auto_quality_labels(
                picked, rollout_answers=labels.get("rollout_answers"),
                parse_ok=[i in ok for i in range(len(picked))], same_answer=is_equiv)
            copies = saerl.corrupt_copies(picked, seed=c.seed, frac=0.5)
            copy_feats = self.encode(copies, sae_obj) if copies else None
            X = np.concatenate([feats_columns(feats, subset, cols)]
                               + ([feats_columns(copy_feats, range(len(copies)), cols)] if copies else []))
            y = np.array(auto + [0] * len(copies), dtype=np.float64)
            groups += [q.meta["corrupt_copy_of"] for q in copies]
        if len(set(y.tolist())) < 2:
            raise SystemExit(f"quality labels of the {len(y)} labelled problems are all {int(y[0])}: the probe "
                             "needs both classes; pass --no-quality-filter or a larger --label-size")
        metrics = held_out_probe_metrics(X, y, groups, seed=c.seed)
        probe = estimators.LogisticProbe(C=1.0).fit(X, y)
        scores = predict_columns(probe.predict_proba, feats, cols)
        drop = 0.0 if c.no_quality_filter else c.quality_drop
        kept = saerl.quality_filter(scores, drop)
        out = {"scores": scores.tolist(), "kept": kept, "label_source": source, "metrics": metrics,
               "n_labelled": int(len(y)), "n_negative": int((y == 0).sum()), "drop": drop}
        atomic_write_text(self.root / "quality.json", json.dumps(out))
        self.done("quality", key)
        self.quality_key = key
        return out

    # -- difficulty
    def stage_difficulty(self, problems, feats, labels, quality) -> dict:
        c = self.cfg
        key = stable_hash("difficulty", self.features_key, self.labels_key, c.probe_features, c.seed)
        if not self.cached("difficulty", key, "difficulty.json"):
            subset = labels["subset"]
            cols = frequent_features(feats, subset, c.probe_features)
            X = feats_columns(feats, subset, cols)
            y = np.asarray(labels["difficulty"], dtype=np.float64)
            n_test = max(2, len(y) // 5)  # held-out report; the proxy itself is then fit on every label
            perm = np.random.default_rng(c.seed + 1).permutation(len(y))
            test, train = perm[:n_test], perm[n_test:]
            held, _ = estimators.fit_alpha(X[train], y[train], seed=c.seed)
            pred_test = held.predict(X[test])
            model, info = estimators.fit_alpha(X, y, seed=c.seed)
            pred = predict_columns(model.predict, feats, cols)
            if np.ptp(y) == 0:
                log(f"difficulty: all {len(y)} labels equal {y[0]:g}; the proxy is constant and the "
                    "curriculum has no order to follow (use other labels or more rollouts)")
            out = {"predicted": pred.tolist(), "alpha": float(info["alpha"]),
                   "held_out": {"spearman": _finite(estimators.spearman(y[test], pred_test)),
                                "r2": _finite(estimators.r2_score(y[test], pred_test)), "n": int(n_test)},
                   "n_labelled": int(len(y)), "nonzero_coefficients": int(np.count_nonzero(model.coef_)),
                   "constant_labels": bool(np.ptp(y) == 0)}
            atomic_write_text(self.root / "difficulty.json", json.dumps(out))
            self.done("difficulty", key)
        self.difficulty_key = key
        return json.loads((self.root / "difficulty.json").read_text())

    # -- clusters
    def stage_clusters(self, problems, feats, quality, difficulty) -> dict:
        from sae import PooledFeatures

        c = self.cfg
        key = stable_hash("clusters", self.features_key, self.quality_key, self.difficulty_key, c.k,
                          c.no_cluster, c.seed)
        if not self.cached("clusters", key, "clusters.json", "clusters.md"):
            kept = quality["kept"]
            sub = PooledFeatures(feats.values[kept], feats.indices[kept], feats.d_sae)
            X = estimators.l2_normalize_rows(sub.sparse())
            silhouettes = None
            if c.no_cluster:
                k, labels = 1, torch.zeros(len(kept), dtype=torch.long)
            else:
                if c.k == "auto":
                    k, silhouettes = estimators.choose_k(X, [x for x in (4, 8, 16, 32) if x < len(kept)], seed=c.seed)
                else:
                    k = int(c.k)
                    if k > len(kept):
                        raise SystemExit(f"--k {k}: only {len(kept)} problems are kept; pass a smaller k")
                labels, _, inertia = estimators.kmeans(X, k, seed=c.seed, device=self.device)
            diff = [difficulty["predicted"][i] for i in kept]
            md = saerl.cluster_summary(labels.tolist(), diff, sub.sparse(), [problems[i] for i in kept])
            atomic_write_text(self.root / "clusters.md", md)
            out = {"k": int(k), "labels": labels.tolist(),
                   "silhouettes": {str(a): b for a, b in silhouettes.items()} if silhouettes else None,
                   "purity": cluster_purity(labels.tolist(), [problems[i].meta for i in kept])}
            atomic_write_text(self.root / "clusters.json", json.dumps(out))
            self.done("clusters", key)
        self.clusters_key = key
        return json.loads((self.root / "clusters.json").read_text())

    # -- schedules
    def arms(self) -> list[tuple[str, int]]:
        """(arm, seed) pairs. `vanilla`: random order over every problem (plain GRPO). `saerl`: the
        engineered schedule over the kept problems; with --schedule random, `saerl-random`: random
        order over the kept problems (the filter without the schedule)."""
        c = self.cfg
        engineered = "saerl" if c.schedule == "saerl" else "saerl-random"
        names = ["vanilla", engineered] if c.compare else [engineered]
        return [(name, c.seed + s) for s in range(c.seeds) for name in names]

    def stage_schedule(self, problems, quality, difficulty, clusters) -> dict:
        """One schedule per (arm, seed), each as long as the step budget (epochs repeat, reshuffled)."""
        c, B = self.cfg, self.gcfg.batch_size
        # --pace budget acts only on the engineered arm, and only when the budget is under one epoch
        self.paced = c.pace == "budget" and c.schedule == "saerl" and c.steps * B < len(quality["kept"])
        if c.pace == "budget" and not self.paced:
            why = ("--schedule random has no easy-to-hard order" if c.schedule != "saerl" else
                   f"--steps {c.steps} x batch {B} covers all {len(quality['kept'])} kept problems")
            log(f"--pace budget has no effect here: {why}")
        key = stable_hash("schedule", self.clusters_key, B, c.mix, c.no_curriculum, c.steps, self.arms(),
                          *(["budget"] if self.paced else []))
        if not self.cached("schedule", key, "schedule.jsonl", "schedules.json", "scores.jsonl"):
            kept = quality["kept"]
            if len(kept) < B:
                raise SystemExit(f"only {len(kept)} problems are kept, fewer than one batch of {B}; lower "
                                 "--quality-drop or --batch-size, or add problems")
            diff = [difficulty["predicted"][i] for i in kept]

            def epoch(arm: str, seed: int, budget: int | None = None) -> list[list[str]]:
                """One pass over the arm's problems, as batches of ids (the last one may be short);
                with `budget` (problems) the engineered pass covers a stratified subset of that size."""
                if arm == "saerl":
                    rows = list(range(len(kept)))
                    if budget is not None:
                        rows = saerl.budget_subset(clusters["labels"], None if c.no_curriculum else diff, budget,
                                                   seed=seed)
                    pool = [kept[j] for j in rows]
                    rows = saerl.build_schedule([clusters["labels"][j] for j in rows], [diff[j] for j in rows], B,
                                                mix=c.mix, curriculum=not c.no_curriculum, seed=seed)
                else:
                    pool = kept if arm == "saerl-random" else list(range(len(problems)))
                    rows = saerl.random_schedule(len(pool), B, seed=seed)
                return [[problems[pool[j]].id for j in b] for b in rows]

            out = {}
            for arm, seed in self.arms():
                batches, n = [], 0
                paced = self.paced and arm == "saerl"  # then one subset of B * steps problems: full batches
                while len(batches) < c.steps:  # the budget: full batches, epochs reshuffled by seed
                    batches += [b for b in epoch(arm, seed * 1000 + n, c.steps * B if paced else None)
                                if len(b) == B]
                    n += 1
                out[f"{arm}-s{seed}"] = batches[:c.steps]
            # schedule.jsonl: one whole engineered epoch over the kept problems (each exactly once,
            # the last batch possibly short), for any trainer; the first arm's steps start with it,
            # except under --pace budget (that arm's batches are in schedules.json).
            engineered = next(arm for arm, _ in self.arms() if arm != "vanilla")
            write_jsonl(self.root / "schedule.jsonl",
                        [{"step": i, "ids": b} for i, b in enumerate(epoch(engineered, c.seed * 1000))])
            atomic_write_text(self.root / "schedules.json", json.dumps(out))
            kept_set = set(kept)
            cluster_of = dict(zip(kept, clusters["labels"]))
            write_jsonl(self.root / "scores.jsonl", [
                {"id": p.id, "quality": quality["scores"][i], "kept": i in kept_set,
                 "difficulty": difficulty["predicted"][i], "cluster": cluster_of.get(i)}
                for i, p in enumerate(problems)])
            self.done("schedule", key)
        self.schedule_key = key
        return json.loads((self.root / "schedules.json").read_text())

    # -- training and evaluation
    def stage_train(self, problems, schedules) -> dict:
        """grpo.train for every arm; each resumes from its own checkpoints when rerun."""
        import grpo
        from evaluate import evaluate, load_benchmark

        c, g = self.cfg, self.gcfg
        self._models.clear()  # the SAE model's copy is no longer needed: free it before training
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        benches = [load_benchmark(spec, limit=c.eval_limit, seed=c.seed) for spec in c.benchmarks.split(",")]
        max_eval = c.max_eval_tokens or g.max_new_tokens
        eval_temperature = 0.0 if c.eval_samples == 1 else c.eval_temperature  # one sample is greedy
        results = {}
        for arm_name, batches in schedules.items():
            arm_dir = self.root / "arms" / arm_name
            # keyed by this arm's own batches, so adding seeds or arms keeps the finished ones
            key = stable_hash("train", batches, c.model, dataclasses.asdict(g), c.benchmarks, c.eval_limit, max_eval,
                              *([c.eval_samples, c.eval_temperature] if c.eval_samples > 1 else []))
            marker = arm_dir / "key.txt"
            if marker.exists() and marker.read_text() != key:  # settings changed: keep the old arm aside
                stale = arm_dir.with_name(f"{arm_name}.stale-{int(time.time())}")
                arm_dir.rename(stale)
                log(f"{arm_name}: settings changed; previous run moved to {stale}")
            arm_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(marker, key)
            seed = int(arm_name.rsplit("-s", 1)[1])
            policy, tok = self._fresh_policy()

            def eval_fn(step, policy=policy, tok=tok):
                row = {}
                for name, bench in benches:
                    r = evaluate(policy, tok, bench, template=g.template, n=c.eval_samples,
                                 temperature=eval_temperature,
                                 max_new_tokens=max_eval, batch_size=max(8, g.gen_batch_size),
                                 name=name, seed=seed)
                    row[name] = r["accuracy"]
                row["mean"] = sum(row.values()) / len(row)
                row["metric"] = eval_metric(c)
                return row

            last = grpo.latest_checkpoint(arm_dir / "checkpoints")
            done = int(last.name.rsplit("_", 1)[-1]) if last else 0
            log(f"training arm {arm_name}: {len(batches)} steps of {g.batch_size} problems x {g.group_size}"
                + ("" if not last else " (finished)" if done >= len(batches) else f", resuming from {last.name}"))
            arm_cfg = dataclasses.replace(g, seed=seed)
            grpo.train(policy, tok, problems, batches, arm_cfg, out_dir=arm_dir, eval_fn=eval_fn, resume=True)
            eval_log = arm_dir / "eval_log.jsonl"  # absent when --eval-every 0 (no evaluation asked for)
            results[arm_name] = {"eval": read_jsonl(eval_log) if eval_log.exists() else [],
                                 "train": read_jsonl(arm_dir / "train_log.jsonl")}
        self.done("train", stable_hash("train", self.schedule_key))
        return results

    def _fresh_policy(self):
        """The policy as it was before any arm trained (arms must not share weights), in fp32:
        load_model gives bf16 on CUDA for inference, but AdamW on bf16 weights loses small updates
        (grpo's bf16 flag autocasts the compute, the weights stay fp32)."""
        from evaluate import load_model

        policy, tok = load_model(self.cfg.model, device=self.device.type)
        return policy.float(), tok


# --------------------------------------------------------------------------------------------
# Features for the probes: a fixed set of columns, dense only for the rows in hand


def frequent_features(feats, rows, n: int) -> np.ndarray:
    """The n feature ids most often active among `rows` (ties by id); the probes' columns."""
    counts = torch.bincount(feats.indices[rows][feats.values[rows] != 0].reshape(-1), minlength=feats.d_sae)
    order = torch.argsort(-counts, stable=True)
    order = order[counts[order] > 0][:n]
    return np.sort(order.numpy())


def feats_columns(feats, rows, cols: np.ndarray) -> np.ndarray:
    """Dense [len(rows), len(cols)] float64 block of the pooled features."""
    rows = list(rows)
    lookup = torch.full((feats.d_sae,), -1, dtype=torch.long)
    lookup[torch.as_tensor(cols, dtype=torch.long)] = torch.arange(len(cols))
    idx = lookup[feats.indices[rows]]                              # [R, m], -1 where not a column
    vals = torch.where(idx >= 0, feats.values[rows].double(), torch.zeros((), dtype=torch.float64))
    out = torch.zeros(len(rows), len(cols) + 1, dtype=torch.float64)
    out.scatter_add_(1, torch.where(idx >= 0, idx, torch.full_like(idx, len(cols))), vals)
    return out[:, :-1].numpy()


def predict_columns(predict, feats, cols, chunk: int = 4096) -> np.ndarray:
    """predict() over every problem, a chunk of rows at a time (memory stays O(chunk x cols))."""
    n = len(feats)
    return np.concatenate([np.asarray(predict(feats_columns(feats, range(i, min(n, i + chunk)), cols)))
                           for i in range(0, n, chunk)])


def held_out_probe_metrics(X, y, groups, *, seed: int) -> dict:
    """Precision/recall/AUC of the quality probe on a held-out 20% of its label groups.

    A group is an original problem with its corrupted copies: they fall on the same side of the
    split, so the metric does not reward telling a problem from its own near-duplicate."""
    names = sorted(set(groups))
    order = np.random.default_rng(seed + 2).permutation(len(names))
    held = {names[i] for i in order[: max(1, len(names) // 5)]}
    test = np.array([i for i, g in enumerate(groups) if g in held])
    train = np.array([i for i, g in enumerate(groups) if g not in held])
    if len(set(y[train].tolist())) < 2 or len(set(y[test].tolist())) < 2:
        return {"note": "held-out split lacks one class; no metrics", "n": int(len(test))}
    probe = estimators.LogisticProbe(C=1.0).fit(X[train], y[train])
    # The probe's job is to find bad problems: report precision/recall of label 0 (low quality).
    p_bad = 1.0 - probe.predict_proba(X[test])
    m = estimators.binary_metrics((y[test] == 0).astype(int), p_bad)
    # NaN (e.g. precision when nothing is flagged) becomes null: the file stays strict JSON
    return ({k: (float(v) if math.isfinite(float(v)) else None) for k, v in m.items()}
            | {"n": int(len(test)), "negatives": int((y[test] == 0).sum())})


def cluster_purity(labels, metas) -> dict | None:
    """Normalised mutual information between clusters and a known topic field, when one exists."""
    for key in ("topic", "type", "subject"):
        topics = [m.get(key) for m in metas]
        if all(t is not None for t in topics):
            return {"field": key, "nmi": estimators.normalized_mutual_info(labels, topics)}
    return None


# --------------------------------------------------------------------------------------------
# Report


def write_report(r: Run, problems, quality, difficulty, clusters, results) -> None:
    c = r.cfg
    curves = {}   # arm -> {seed: [(step, acc)]}
    for name, res in results.items():
        arm, seed = name.rsplit("-s", 1)
        curves.setdefault(arm, {})[int(seed)] = [(row["step"], row["mean"]) for row in res["eval"]]
    finals = {arm: [pts[-1][1] for pts in seeds.values() if pts] for arm, seeds in curves.items()}
    target = c.target
    if target is None and "vanilla" in finals and finals["vanilla"]:
        target = float(np.mean(finals["vanilla"]))
    kept = set(quality["kept"])
    dropped = [p for i, p in enumerate(problems) if i not in kept]
    lines = [f"# SAERL run: {r.root.name}", "",
             f"Model `{c.model}`, SAE features from `{c.sae_model}` layer {r.layer}, "
             f"{len(problems)} training problems from `{c.train_data}`.", "",
             "## Data engineering", "",
             f"- Quality: probe trained on {quality['n_labelled']} labelled rows ({quality['n_negative']} negative) "
             f"from {quality['label_source']}; held-out "
             + ", ".join(f"{k} {v:.3f}" for k, v in quality["metrics"].items() if isinstance(v, float))
             + f". Kept {len(kept)} of {len(problems)}, dropped {len(dropped)} (lowest {quality['drop']:.0%}).",
             f"- Difficulty proxy: ElasticNet (alpha {difficulty['alpha']:.3g}, {difficulty['nonzero_coefficients']} "
             f"non-zero features) on {difficulty['n_labelled']} labels ({c.difficulty_labels}); held-out "
             f"Spearman {_fmt(difficulty['held_out']['spearman'])}, R² {_fmt(difficulty['held_out']['r2'])} "
             f"(n = {difficulty['held_out']['n']})"
             + ("; all labels were equal, so the curriculum had no order to follow." if difficulty.get("constant_labels") else "."),
             f"- Clusters: k = {clusters['k']}" + (f" (silhouette sweep {clusters['silhouettes']})" if clusters['silhouettes'] else "")
             + (f"; NMI with the `{clusters['purity']['field']}` field {clusters['purity']['nmi']:.3f}" if clusters["purity"] else "")
             + ". Per-cluster table: clusters.md.", ""]
    known = [p for p in dropped if p.meta.get("quality") in (0, 1)]
    if known:
        bad_total = sum(p.meta.get("quality") == 0 for p in problems)
        bad_dropped = sum(p.meta.get("quality") == 0 for p in dropped)
        lines += [f"Known-bad problems dropped: {bad_dropped} of {bad_total} "
                  f"({bad_dropped / max(1, len(dropped)):.0%} of the dropped set is known-bad).", ""]
    lines += ["Examples of dropped problems (lowest quality score first):", ""]
    order = sorted((i for i in range(len(problems)) if i not in kept), key=lambda i: quality["scores"][i])
    for i in order[:5]:
        p = problems[i]
        tag = f" [{p.meta.get('corruption') or 'clean'}]" if "quality" in p.meta else ""
        lines.append(f"- `{_short(p.problem)}` → `{_short(p.answer, 30)}` (score {quality['scores'][i]:.3f}){tag}")
    n_eval = c.eval_limit or "all"
    if not any(pts for seeds in curves.values() for pts in seeds.values()):
        lines += ["", "## Training", "", "No evaluation was requested (--eval-every 0); see arms/*/train_log.jsonl.", ""]
        atomic_write_text(r.root / "report.md", "\n".join(lines))
        log(f"report: {r.root / 'report.md'}")
        return
    lines += ["", "## Training", "",
              f"Held-out accuracy: {eval_metric(c)} on {n_eval} problems of each of `{c.benchmarks}` (mean over "
              f"benchmarks), every {c.eval_every} steps; {c.steps} GRPO steps of {r.gcfg.batch_size} problems × "
              f"{r.gcfg.group_size} samples per arm (lr {r.gcfg.lr:g}, loss {r.gcfg.loss_type}).", ""]
    steps = sorted({s for seeds in curves.values() for pts in seeds.values() for s, _ in pts})
    lines += ["| step | " + " | ".join(f"{arm} (mean ± sd over {len(seeds)} seed{'s' * (len(seeds) > 1)})"
                                       for arm, seeds in curves.items()) + " |",
              "|---:|" + "---:|" * len(curves)]
    for s in steps:
        cells = []
        for seeds in curves.values():
            vals = [a for pts in seeds.values() for st, a in pts if st == s]
            cells.append(f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if vals else "-")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    start = [pts[0][1] for seeds in curves.values() for pts in seeds.values() if pts and pts[0][0] == 0]
    if target is not None and start and target <= max(start) + 1e-12:
        lines += ["", f"Target accuracy {target:.3f}" + (" (vanilla's final accuracy)" if c.target is None else "")
                  + f" is not above the starting accuracy {max(start):.3f}: no arm needed training to reach it, "
                  "so steps-to-target is not informative here (pass --target)."]
    elif target is not None:
        lines += ["", f"Steps to reach the target accuracy {target:.3f}"
                  + (" (vanilla's final accuracy)" if c.target is None else "") + ":", ""]
        for arm, seeds in curves.items():
            hits = [next((s for s, a in pts if a >= target - 1e-12), None) for pts in seeds.values()]
            lines.append(f"- {arm}: " + ", ".join("not reached" if h is None else str(h) for h in hits))
    if len(finals) == 2 and "vanilla" in finals:
        arm = next(a for a in finals if a != "vanilla")
        ours, theirs = float(np.mean(finals[arm])), float(np.mean(finals["vanilla"]))
        lines += ["", f"Final accuracy: {arm} {ours:.3f}, vanilla {theirs:.3f} "
                  f"({'+' if ours >= theirs else ''}{100 * (ours - theirs):.1f} points). "
                  + ("One seed per arm: a difference of a few points is within seed noise; "
                     "run --seeds 3 for a spread." if c.seeds == 1 else "")]
    ablations = [f"--{n.replace('_', '-')}" for n in ("no_curriculum", "no_cluster", "no_quality_filter") if getattr(c, n)]
    if c.mix != 0.25:
        ablations.append(f"--mix {c.mix}")
    if c.schedule != "saerl":
        ablations.append(f"--schedule {c.schedule}")
    if r.paced:
        ablations.append("--pace budget")
    lines += ["", "Ablations in this run: " + (", ".join(ablations) if ablations else "none (SAERL defaults)") + ".", ""]
    lines += [plot_curves(curves, r.root / "report.png"), ""]
    atomic_write_text(r.root / "report.md", "\n".join(lines))
    log(f"report: {r.root / 'report.md'}")


def plot_curves(curves, path) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(report.png not drawn: matplotlib is not installed; `pip install matplotlib` to get it.)"
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, seeds in curves.items():
        for seed, pts in seeds.items():
            ax.plot([s for s, _ in pts], [a for _, a in pts], marker="o", label=f"{arm} seed {seed}")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("held-out accuracy")
    ax.legend()
    fig.tight_layout()
    from data import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return f"![accuracy curves]({Path(path).name})"


# --------------------------------------------------------------------------------------------
# CLI and small helpers


def parse_args(argv=None) -> tuple[Config, dict]:
    """Config flags plus every GRPOConfig field (--lr, --group-size, ...) passed through to grpo."""
    import grpo

    ap = argparse.ArgumentParser(prog="saerl.py", description="SAERL: SAE-guided data engineering for GRPO. "
                                 "No arguments: the whole pipeline in the embedded toy world on a CPU.")
    own = {f.name for f in dataclasses.fields(Config)}
    for f in dataclasses.fields(Config):
        _add_flag(ap, f, f.default)
    g = ap.add_argument_group("GRPO (passed to grpo.GRPOConfig; default: the preset's value)")
    grpo_fields = [f for f in dataclasses.fields(grpo.GRPOConfig) if f.name not in own and f.name not in ("max_steps", "num_steps")]
    for f in grpo_fields:
        _add_flag(g, f, None)
    ns = vars(ap.parse_args(argv))
    cfg = Config(**{k: ns[k] for k in own})
    overrides = {f.name: ns[f.name] for f in grpo_fields if ns[f.name] is not None}
    return cfg, overrides


def _add_flag(ap, f, default):
    flag = "--" + f.name.replace("_", "-")
    help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
    typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    if "bool" in typ:
        action = "store_true" if f.name.startswith("no_") else argparse.BooleanOptionalAction
        ap.add_argument(flag, action=action, default=default, help=help_text)
        return
    conv = int if typ.startswith("int") else float if typ.startswith("float") else str
    ap.add_argument(flag, type=conv, default=default, help=help_text)


def _file_stamp(source) -> list:
    path = Path(str(source))
    return [path.stat().st_size, path.stat().st_mtime_ns] if path.exists() else []


def _as_float(v):
    """A number from a label: 3, 3.0, "3" or MATH's "Level 3"; None otherwise."""
    if isinstance(v, str) and v.strip().lower().startswith("level "):
        v = v.strip()[6:]
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _fmt(x) -> str:
    return "undefined" if x is None else f"{x:.3f}"


def _finite(x) -> float | None:
    """x as a float, or None (null in JSON) when it is NaN or infinite: output files stay strict JSON."""
    x = float(x)
    return x if math.isfinite(x) else None


def _hook_layer(hook) -> int | None:
    """The decoder layer a hook name points at ("blocks.12.hook_resid_post" -> 12), else None."""
    if isinstance(hook, int):
        return hook
    digits = [part for part in str(hook or "").split(".") if part.isdigit()]
    return int(digits[0]) if digits else None


def _short(text: str, n: int = 70) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def log(msg: str) -> None:
    print(f"[saerl] {msg}", file=sys.stderr, flush=True)
