"""saerl.py -- SAERL, the method and its entry point: `python saerl.py [flags]` runs it end to end.

Reference: "Guiding LLM Post-training Data Engineering with Model Internals from Sparse Autoencoders".
Each training problem becomes a pooled SAE feature row; three properties read off those rows drive
three data operations before GRPO/DAPO training. With no --model the whole run happens in the toy
world (toy.py) on a CPU in a few minutes and compares SAERL with vanilla GRPO.

run() calls the stages in order. Each writes under runs/<name>/ and is cached (runtime.Stages, keyed by
what config.PIPELINE says it depends on); docs/design.md says more, README.md what each file holds.

    problems    data.load_problems(--train-data)                         problems.jsonl
    sae         sae_formats.load_sae(--sae), or sae.train_sae            sae/
    features    sae.encode_problems: pooled top-m SAE features z_i       features.safetensors
    labels      the labelled subset L; policy rollouts if asked for      labels.json
    quality     logistic probe on L -> q_i; drop the lowest fraction     quality.json
    difficulty  ElasticNet proxy fit on L -> d_i for every problem       difficulty.json
    clusters    k-means on the L2-normalised kept rows -> c_i            clusters.json, clusters.md
    schedule    schedule.make_schedules: SAERL's order, vanilla's        schedule(s).jsonl/.json, scores.jsonl
    train       grpo.train per arm and seed (resumes checkpoints)        arms/<arm>-s<seed>/
    report      report.write_report: curves, steps to target, data      report.md, report.svg

The estimators' objectives are in estimators.py, the schedule built from d_i and c_i in schedule.py. Not here:
the flags (config.py), the run folder's plumbing -- toy world, lock, Ctrl-C, each arm's folder (run_folder.py).
"""
from __future__ import annotations

import os

# before torch loads OpenMP: waiting threads sleep, not spin; numpy's OpenBLAS spins regardless (docs/measurements.md)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import dataclasses
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import estimators
import plan
from config import CV_FOLDS, PAPER, Config, parse_args, resolve
from data import Problem, format_prompt, load_problems, number_label, write_problems
from evaluate import generate_completions
from export import export_run
from features import PooledFeatures
from oracles import oracle_clusters, oracle_difficulty, oracle_quality
from parallel import barrier, dist_info, init_distributed
from report import cluster_purity, cluster_summary, write_report
from run_folder import (cached_json, finite_or_none, load_once, log, open_run_folder, problem_scores, read_json,
                        train_arms, write_json)
from runtime import Stages, atomic_write_text, command_line, dir_stamp, file_stamp, write_jsonl
from sae import check_on_model, encode_problems, prompt_texts, sae_layer, train_sae
from sae_formats import load_sae, save_sae
from schedule import make_schedules, pace_applies, write_schedule
from verifier import extract_answer, gold_parse_report, is_equiv, verify


def main(argv=None) -> Path | None:
    # before CUDA starts: grow segments instead of fragmenting (rollout shapes change every step)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    cfg, grpo_overrides = parse_args(argv)
    plan_flags, _ = plan.plan_flags().parse_known_args(argv)
    # a bad flag or input, a run folder another run holds, Ctrl-C: one line on stderr (runtime.command_line)
    with command_line("saerl.py"):
        plan.check_plan_flags(plan_flags)
        if plan_flags.plan:  # the real run's memory per phase, from the config alone (default: the paper's policy)
            cfg, gcfg = resolve(dataclasses.replace(cfg, preset=cfg.preset or PAPER["preset"]), grpo_overrides)
            print(plan.memory_plan_report(cfg.model or "Qwen/Qwen2.5-Math-1.5B", gcfg, gpu_gib=plan_flags.gpu_memory,
                                          world=plan_flags.world_size))
            return None
        init_distributed(timeout_min=120)  # under torchrun; the other ranks wait while rank 0 runs the data stages
        return run(cfg, grpo_overrides)


def run(cfg: Config, grpo_overrides: dict | None = None) -> Path:
    """Run the pipeline up to cfg.stage in its locked run folder (run_folder.open_run_folder); returns the
    folder. Ctrl-C raises runtime.Interrupted, saying where the run stopped; the same command resumes it."""
    cfg, gcfg = resolve(cfg, grpo_overrides)  # on every rank: a bad flag fails at once, before anything loads
    with open_run_folder(cfg, gcfg) as (stages, cfg, device):
        return run_stages(stages, cfg, gcfg, device)


def run_stages(stages: Stages, cfg: Config, gcfg, device) -> Path:
    """The stages in order, up to cfg.stage, each computed unless the cache holds it (config.PIPELINE), then read
    back; under torchrun rank 0 computes the data stages, the other ranks read them, and every rank trains."""
    rank, world = dist_info()
    root = stages.root
    models = {}  # name -> (model, tokenizer), each loaded once per run

    problems = problems_stage(stages, cfg, gcfg)
    if cfg.stage == "problems":
        return stages.finish()
    encoder = sae_stage(stages, cfg, gcfg, problems, models, device)
    if cfg.stage == "sae":
        return stages.finish()
    feats = features_stage(stages, problems, encoder)
    if cfg.stage == "features":
        return stages.finish()
    policy = lambda: load_once(models, cfg.model, device)  # noqa: E731 -- loaded only for rollouts
    labels = cached_json(stages, "labels", lambda: make_labels(cfg, gcfg, problems, policy))
    if cfg.stage == "labels":
        return stages.finish()
    quality = cached_json(stages, "quality", lambda: fit_quality(cfg, problems, feats, labels, encoder))
    if cfg.stage == "quality":
        return stages.finish()
    difficulty = cached_json(stages, "difficulty", lambda: fit_difficulty(cfg, problems, feats, labels))
    if cfg.stage == "difficulty":
        return stages.finish()
    clusters = clusters_stage(stages, cfg, problems, feats, quality, difficulty, device)
    if cfg.stage == "clusters":
        return stages.finish()
    schedules, paced = schedule_stage(stages, cfg, gcfg, problems, quality, difficulty, clusters)
    if cfg.export and rank == 0:  # the engineered order as a TRL or verl dataset (export.py)
        log("exported the engineered order: " + ", ".join(map(str, export_run(root, cfg.export, template=gcfg.template))))
    if cfg.stage == "schedule":
        return stages.finish()

    if rank == 0 and world > 1:  # the data stages are on disk: the other ranks may go on
        barrier()
    layer, encoder = encoder.layer, None  # the SAE stage's model and SAE go: training, which --plan sizes
    models.clear()  # without them, starts without them
    results = train_stage(stages, cfg, gcfg, problems, schedules, device)
    if cfg.stage == "train" or rank > 0:
        return stages.finish()
    with stages.timed("report"):
        write_report(root, cfg, gcfg, layer=layer, paced=paced, problems=problems, quality=quality,
                     difficulty=difficulty, clusters=clusters, results=results, times=stages.times)
    return stages.finish()


# The stages, in order: each computes its output unless the cache holds it, then reads it back
def problems_stage(stages: Stages, cfg: Config, gcfg) -> list[Problem]:
    """--train-data read (bad rows reported, duplicates kept once), its seeded --limit subset."""
    with stages.run("problems", stamp=file_stamp(cfg.train_data)) as compute:
        if compute:
            problems = load_problems(cfg.train_data, limit=cfg.limit, seed=cfg.seed, problem_field=cfg.problem_field,
                                     answer_field=cfg.answer_field)
            if len(problems) < 2 * gcfg.batch_size:
                raise SystemExit(f"{cfg.train_data}: {len(problems)} usable problems; need at least "
                                 f"{2 * gcfg.batch_size} for batches of {gcfg.batch_size}")
            write_problems(stages.root / "problems.jsonl", problems)
        return load_problems(stages.root / "problems.jsonl", verbose=False)


@dataclass
class Encoder:
    """What the SAE stage hands on: encoder(problems) -> their pooled SAE features, each problem rendered with
    the policy's prompt template and pooled over its own tokens (the features stage encodes the training
    problems, the quality stage their corrupted copies). It holds the SAE's model, dropped before training."""
    model: Any
    tokenizer: Any
    sae: Any
    layer: int
    template: str
    top_m: int
    pooling: str
    device: torch.device
    cache_dir: Path

    def __call__(self, problems) -> PooledFeatures:
        texts, spans = prompt_texts(problems, self.tokenizer, self.template)
        return encode_problems(self.model, self.tokenizer, texts, self.sae, self.layer, pooling=self.pooling,
                               top_m=self.top_m, char_spans=spans, device=self.device, cache_dir=self.cache_dir,
                               progress=True)


def sae_stage(stages: Stages, cfg: Config, gcfg, problems, models: dict, device) -> Encoder:
    """A given --sae is read (its files' stamps are in the key); otherwise a TopK SAE is trained on the
    problems' prompts (the ones the policy sees). Returns the Encoder of the later stages."""
    with stages.run("sae", stamp=dir_stamp(cfg.sae), files=() if cfg.sae else None) as compute:
        model, tok = load_once(models, cfg.sae_model, device)
        given = load_sae(cfg.sae, subfolder=cfg.sae_id, device=device) if cfg.sae else None
        layer = sae_layer(model, given, cfg.sae_layer, model_name=cfg.sae_model, sae_name=cfg.sae)
        texts = [format_prompt(p.problem, tok, gcfg.template) for p in problems] if compute else []
        if compute and given:  # checked on this model's own residuals, as a trained SAE is (warns on a mismatch)
            check_on_model(model, tok, texts, given, layer, device=device, model_name=cfg.sae_model, sae_name=cfg.sae)
        if compute and not given:
            save_sae(train_sae(model, tok, texts, layer, d_sae=cfg.sae_width, k=cfg.sae_k, tokens=cfg.sae_tokens,
                               seed=cfg.seed, device=device, state_path=stages.root / "sae.state.pt"),
                     stages.root / "sae")
        sae = given or load_sae(stages.root / "sae", device=device)
        return Encoder(model, tok, sae, layer, template=gcfg.template, top_m=cfg.top_m, pooling=cfg.pooling,
                       device=device, cache_dir=stages.root / "cache")


def features_stage(stages: Stages, problems, encoder: Encoder) -> PooledFeatures:
    """Every training problem's pooled top-m SAE features."""
    with stages.run("features") as compute:
        if compute:
            encoder(problems).save(stages.root / "features.safetensors")
        return PooledFeatures.load(stages.root / "features.safetensors")


def clusters_stage(stages: Stages, cfg: Config, problems, feats, quality, difficulty, device) -> dict:
    """The kept problems' clusters (cluster_kept) and clusters.md."""
    with stages.run("clusters") as compute:
        if compute:
            clusters, summary = cluster_kept(cfg, problems, feats, quality["kept"], difficulty["predicted"], device)
            atomic_write_text(stages.root / "clusters.md", summary)
            write_json(stages.root / "clusters.json", clusters)
        return read_json(stages.root / "clusters.json")


def schedule_stage(stages: Stages, cfg: Config, gcfg, problems, quality, difficulty, clusters) -> tuple[dict, bool]:
    """Each arm's batches (schedules.json), the engineered epoch (schedule.jsonl) and every problem's scores;
    returns the arms' schedules and whether --pace budget applied."""
    paced = pace_applies(cfg.pace, cfg.schedule, cfg.steps, gcfg.batch_size, len(quality["kept"]), log=log)
    with stages.run("schedule") as compute:
        if compute:
            schedules, epoch = make_schedules(problems, quality, difficulty, clusters, batch_size=gcfg.batch_size,
                                              steps=cfg.steps, schedule=cfg.schedule, compare=cfg.compare,
                                              seeds=cfg.seeds, seed=cfg.seed, mix=cfg.mix,
                                              curriculum=not cfg.no_curriculum, paced=paced)
            write_schedule(stages.root / "schedule.jsonl", epoch)
            write_json(stages.root / "schedules.json", schedules)
            write_jsonl(stages.root / "scores.jsonl", problem_scores(problems, quality, difficulty, clusters))
        return read_json(stages.root / "schedules.json"), paced


def train_stage(stages: Stages, cfg: Config, gcfg, problems, schedules: dict, device) -> dict:
    """grpo.train for every arm (train_arms); shown as cached when every arm had already reached its last step."""
    with stages.timed("train") as timing:
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the SAE stage's model is gone: give its memory back before training
        results, timing["cached"] = train_arms(cfg, gcfg, stages.root, problems, schedules, device)
        stages.done("train")
    return results


# Stage bodies: the labels, the quality probe, the difficulty proxy, the clusters
def label_size(cfg: Config, n: int) -> int:
    """The labelled subset's size: --label-size, else min(2000, 5% of the n problems, at least 50); at most n."""
    return min(cfg.label_size or min(2000, max(50, round(0.05 * n))), n)


def make_labels(cfg: Config, gcfg, problems, policy) -> dict:
    """The labelled subset (seeded) and its difficulty labels: a numeric field (field:NAME), or
    1 - pass rate of G sampled answers of the policy (rollouts:G, the signal the proxy replaces)."""
    kind, _, arg = cfg.difficulty_labels.partition(":")
    if kind not in ("field", "rollouts") or not arg:
        raise SystemExit(f"--difficulty-labels {cfg.difficulty_labels!r}; expected field:NAME or rollouts:G")
    n = len(problems)
    subset = sorted(np.random.default_rng(cfg.seed).permutation(n)[:label_size(cfg, n)].tolist())
    out = {"subset": subset, "difficulty": None, "rollout_answers": None}
    if kind == "field":
        values = [number_label(problems[i].meta.get(arg)) for i in subset]
        missing = [problems[i].id for i, v in zip(subset, values) if v is None]
        if missing:
            raise SystemExit(f"--difficulty-labels field:{arg}: {len(missing)} labelled problems have no "
                             f"numeric '{arg}' (first: {missing[:3]}); use rollouts:G")
        out["difficulty"] = values
        return out
    model, tok = policy()
    picked = [problems[i] for i in subset]
    completions = generate_completions(model, tok, [format_prompt(p.problem, tok, gcfg.template) for p in picked],
                                       n=int(arg), temperature=1.0, max_new_tokens=gcfg.max_new_tokens,
                                       batch_size=gcfg.gen_batch_size, seed=cfg.seed)
    out["difficulty"] = [1.0 - sum(verify(o, p.answer) for o in outs) / len(outs)
                         for p, outs in zip(picked, completions)]
    out["rollout_answers"] = [[extract_answer(o) for o in outs] for outs in completions]
    return out


def fit_quality(cfg: Config, problems, feats, labels, encoder: Encoder) -> dict:
    """Fit the probe on the labelled subset (an explicit 0/1 `quality` field, else automatic labels
    plus corrupted copies as negatives) and score every problem; keep all but the lowest
    `quality_drop` fraction. --oracle filter: the known truth instead (every meta quality 0 dropped)."""
    if "filter" in cfg.oracles:
        return oracle_quality(problems)
    subset = labels["subset"]
    cols = feats.most_active(subset, cfg.probe_features)
    given = [problems[i].meta.get("quality") for i in subset]
    groups = [problems[i].id for i in subset]  # held-out split by original problem (copies follow it)
    X = feats.columns(subset, cols)
    if all(q in (0, 1) for q in given) and len(set(given)) == 2:
        source = "the problems' own 'quality' field"
        y = np.array(given, dtype=np.float64)
    else:
        source = "automatic labels (unparseable answers, confident rollout disagreement, corrupted copies)"
        if all(q in (0, 1) for q in given):
            source += "; the 'quality' field holds one class only in the labelled subset"
        picked = [problems[i] for i in subset]
        auto = auto_quality_labels(picked, rollout_answers=labels.get("rollout_answers"),
                                   parse_ok=answers_parse(picked), same_answer=is_equiv)
        copies = corrupt_copies(picked, seed=cfg.seed, frac=0.5)
        if copies:
            X = np.concatenate([X, encoder(copies).columns(range(len(copies)), cols)])
        y = np.array(auto + [0] * len(copies), dtype=np.float64)
        groups += [q.meta["corrupt_copy_of"] for q in copies]
    if len(set(y.tolist())) < 2:
        raise SystemExit(f"quality labels of the {len(y)} labelled problems are all {int(y[0])}: the probe "
                         "needs both classes; pass --no-quality-filter or a larger --label-size")
    metrics = estimators.grouped_holdout_metrics(X, y, groups, seed=cfg.seed)
    probe = estimators.LogisticProbe(C=1.0).fit(X, y)
    scores = feats.predict(probe.predict_proba, cols)
    drop = 0.0 if cfg.no_quality_filter else cfg.quality_drop
    return {"scores": scores.tolist(), "kept": quality_filter(scores, drop), "labelled": subset, "label_source": source,
            "metrics": metrics, "n_labelled": int(len(y)), "n_negative": int((y == 0).sum()), "drop": drop}


def answers_parse(problems) -> list[bool]:
    """Whether each reference answer parses as math (verifier.gold_parse_report): auto_quality_labels' parse_ok."""
    unparsed = set(gold_parse_report([p.answer for p in problems])["unparsed_indices"])
    return [i not in unparsed for i in range(len(problems))]


def fit_difficulty(cfg: Config, problems, feats, labels) -> dict:
    """The difficulty proxy: ElasticNet from the probe columns to the labels, α by 5-fold cross-validation
    (estimators.fit_alpha), fit on every label to predict all problems. Its held-out figure is that whole
    procedure's, by nested cross-validation (estimators.nested_cv_predictions): labels it never saw.
    --oracle difficulty: every problem's known difficulty (meta 'difficulty') instead."""
    if "difficulty" in cfg.oracles:
        return oracle_difficulty(problems)
    subset = labels["subset"]
    cols = feats.most_active(subset, cfg.probe_features)
    X = feats.columns(subset, cols)
    y = np.asarray(labels["difficulty"], dtype=np.float64)
    held_pred, fold_alphas = estimators.nested_cv_predictions(X, y, folds=CV_FOLDS, seed=cfg.seed + 1)
    model, info = estimators.fit_alpha(X, y, folds=CV_FOLDS, seed=cfg.seed)
    if np.ptp(y) == 0:
        log(f"difficulty: all {len(y)} labels equal {y[0]:g}; the proxy is constant and the "
            "curriculum has no order to follow (use other labels or more rollouts)")
    return {"predicted": feats.predict(model.predict, cols).tolist(), "alpha": float(info["alpha"]),
            "held_out": {"spearman": finite_or_none(estimators.spearman(y, held_pred)),
                         "r2": finite_or_none(estimators.r2_score(y, held_pred)), "n": int(len(y)),
                         "method": f"nested {CV_FOLDS}-fold cross-validation", "fold_alphas": fold_alphas},
            "n_labelled": int(len(y)), "nonzero_coefficients": int(np.count_nonzero(model.coef_)),
            "constant_labels": bool(np.ptp(y) == 0)}


def cluster_kept(cfg: Config, problems, feats, kept, predicted, device) -> tuple[dict, str]:
    """k-means on the L2-normalised features of the kept problems (k by silhouette with --k auto);
    returns clusters.json's content and clusters.md. --oracle clusters: the known topics (meta 'topic')."""
    sub = PooledFeatures(feats.values[kept], feats.indices[kept], feats.d_sae)
    X = estimators.l2_normalize_rows(sub.sparse())
    silhouettes = None
    if "clusters" in cfg.oracles:
        k, labels = oracle_clusters([problems[i] for i in kept])
    elif cfg.no_cluster:
        k, labels = 1, torch.zeros(len(kept), dtype=torch.long)
    else:
        if cfg.k == "auto":
            k, silhouettes = estimators.choose_k(X, [x for x in (4, 8, 16, 32) if x < len(kept)], seed=cfg.seed)
        elif int(cfg.k) > len(kept):
            raise SystemExit(f"--k {cfg.k}: only {len(kept)} problems are kept; pass a smaller k")
        else:
            k = int(cfg.k)
        labels, _, _ = estimators.kmeans(X, k, seed=cfg.seed, device=device)
    labels = labels.tolist()
    summary = cluster_summary(labels, [predicted[i] for i in kept], sub.sparse(), [problems[i] for i in kept])
    return {"k": int(k), "labels": labels,
            "silhouettes": {str(a): b for a, b in silhouettes.items()} if silhouettes else None,
            "purity": cluster_purity(labels, [problems[i].meta for i in kept])}, summary


# The SAERL data operations: quality labels and the quality filter
CORRUPTIONS = ("shuffled", "truncated", "answer-swapped")


def corrupt_copies(problems, *, seed: int = 0, frac: float = 0.15) -> list:
    """Corrupted copies of a seeded ⌈frac·N⌉ sample of problems, negatives for the quality probe. Kinds
    cycle in a seeded order over the sample: "shuffled" (words of the statement permuted), "truncated" (the
    first half of the words kept), "answer-swapped" (the reference answer of another problem whose answer
    differs). A kind that cannot change the text (one word, or all answers equal) falls through to the next;
    if none applies the problem gets no copy. Copies have id "<id>#corrupt-<kind>" and meta {..., quality: 0,
    corruption: kind, corrupt_copy_of: id}."""
    if not 0 <= frac <= 1:
        raise ValueError(f"frac must be in [0, 1], got {frac}")
    rng = random.Random(seed)
    n = len(problems)
    picked = rng.sample(range(n), int(math.ceil(frac * n))) if n else []
    answers = [p.answer for p in problems]
    out = []
    for rank, i in enumerate(picked):
        p = problems[i]
        words = p.problem.split()
        first = (rank + rng.randrange(len(CORRUPTIONS))) % len(CORRUPTIONS)
        for kind in CORRUPTIONS[first:] + CORRUPTIONS[:first]:
            text, answer = p.problem, p.answer
            if kind == "shuffled" and len(set(words)) > 1:
                shuffled = words[:]
                while shuffled == words:
                    rng.shuffle(shuffled)
                text = " ".join(shuffled)
            elif kind == "truncated" and len(words) > 1:
                text = " ".join(words[:len(words) // 2])
            elif kind == "answer-swapped":
                others = [a for a in answers if a != p.answer]
                if not others:
                    continue
                answer = rng.choice(others)
            else:
                continue
            meta = dict(p.meta or {}, quality=0, corruption=kind, corrupt_copy_of=p.id)
            out.append(Problem(id=f"{p.id}#corrupt-{kind}", problem=text, answer=answer, meta=meta))
            break
    return out


def _same_answer(a: str, b: str) -> bool:
    return " ".join(str(a).split()) == " ".join(str(b).split())


def auto_quality_labels(problems, *, rollout_answers=None, parse_ok=None, agree: float = 0.75,
                        min_rollouts: int = 2, same_answer=_same_answer) -> list[int]:
    """Automatic quality labels (docs/design.md), 1 = keep-worthy, 0 = suspect. Label 0 when (a) parse_ok[i]
    is False (the reference answer does not parse); or (b) the problem has ≥ min_rollouts rollout answers, the
    most common parsed answer (None = unparsed, never a majority) is given by ≥ agree of all its rollouts, and
    it differs from the reference by `same_answer` (default: whitespace-normalised string equality; the
    pipeline passes the verifier's equivalence); or (c) it is a corrupt_copies copy (meta "corrupt_copy_of").
    Otherwise 1; other meta fields (a dataset's own 0/1 quality) are ignored. Pure: parse_ok and
    rollout_answers are lists aligned with problems."""
    n = len(problems)
    for name, seq in (("parse_ok", parse_ok), ("rollout_answers", rollout_answers)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries, expected {n} (one per problem)")
    labels = []
    for i, p in enumerate(problems):
        bad = parse_ok is not None and not parse_ok[i]
        bad = bad or "corrupt_copy_of" in (p.meta or {})
        answers = rollout_answers[i] if rollout_answers is not None else None
        if not bad and answers and len(answers) >= min_rollouts:
            counts = Counter(a for a in answers if a is not None)
            if counts:
                top, votes = counts.most_common(1)[0]
                bad = votes >= agree * len(answers) and not same_answer(top, p.answer)
        labels.append(0 if bad else 1)
    return labels


def quality_filter(scores, drop: float) -> list[int]:
    """Indices kept after dropping the ⌊drop·N⌋ lowest scores; ties are dropped in index order
    (lower index first). The kept indices come back in increasing order."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not 0 <= drop < 1:
        raise ValueError(f"drop must be in [0, 1), got {drop}")
    if np.isnan(s).any():
        raise ValueError("quality scores contain NaN")
    n_drop = int(math.floor(drop * len(s) + 1e-9))
    order = np.lexsort((np.arange(len(s)), s))  # by score, then index
    return sorted(order[n_drop:].tolist())


if __name__ == "__main__":
    main()
