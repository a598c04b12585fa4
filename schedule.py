"""schedule.py -- the order in which GRPO sees the problems: SAERL's engineered schedule, vanilla GRPO's
random one, and the schedule file. The one file a curriculum experiment forks: change the order here and
`python saerl.py` trains on it (the data stages before it are cached, the trainer follows any schedule).
Imports: runtime (JSONL files) from this project -- never saerl.py or grpo.py; numpy.

build_schedule makes SAERL's engineered epoch (easy to hard inside each cluster, every cluster at the same
pace), budget_subset its stratified rows when a step budget is under one epoch (`--pace budget`; `--pace
epoch` trains the epoch's first steps), random_schedule vanilla's shuffled epochs, make_schedules every
arm's batches. The schedule file (schedule.jsonl, one {"step": i, "ids": [...]} per batch) and the input
checks come last, below the method.
"""
from __future__ import annotations

import math
import sys
from fractions import Fraction

import numpy as np
import torch

from runtime import read_jsonl, write_jsonl


def make_schedules(problems, quality: dict, difficulty: dict, clusters: dict, *, batch_size: int, steps: int,
                   schedule: str, compare: bool, seeds: int, seed: int, mix: float, curriculum: bool,
                   paced: bool) -> tuple[dict, list[list[str]]]:
    """One schedule per (arm, seed) of `arms`, each `steps` full batches of problem ids; and one whole epoch of
    the engineered arm over the kept problems (each exactly once, the last batch possibly short) for
    schedule.jsonl, which any trainer can follow. The engineered arm repeats build_schedule epochs (with
    `paced`, each over a budget_subset of steps * B rows); the random arms are random_schedule's shuffled
    epochs. quality, difficulty, clusters: the saerl stages' outputs ("kept"; "predicted" for every problem;
    "labels" for the kept ones)."""
    B = batch_size
    kept = quality["kept"]
    if len(kept) < B:
        raise SystemExit(f"only {len(kept)} problems are kept, fewer than one batch of {B}; lower "
                         "--quality-drop or --batch-size, or add problems")
    diff = [difficulty["predicted"][i] for i in kept]
    kept_ids = [problems[i].id for i in kept]

    def engineered_epoch(epoch_seed: int, budget: int | None = None) -> list[list[str]]:
        rows = list(range(len(kept)))
        if budget is not None:  # --pace budget: a stratified subset, so each cluster runs easy to hard
            rows = budget_subset(clusters["labels"], diff if curriculum else None, budget, seed=epoch_seed)
        batches = build_schedule([clusters["labels"][j] for j in rows], [diff[j] for j in rows], B, mix=mix,
                                 curriculum=curriculum, seed=epoch_seed, interleave=schedule == "mixed")
        return [[kept_ids[rows[j]] for j in b] for b in batches]

    out = {}
    for arm, arm_seed in arms(schedule, compare, seeds, seed):
        # seed * 1000 (+ n for the engineered arm's epoch n): arm seeds 0, 1, 2 ... never share an epoch's seed
        if arm in ("saerl", "saerl-mixed"):
            batches, n = [], 0
            while len(batches) < steps:  # full batches only, epochs reshuffled by seed
                batches += [b for b in engineered_epoch(arm_seed * 1000 + n, steps * B if paced else None)
                            if len(b) == B]
                n += 1
            out[f"{arm}-s{arm_seed}"] = batches[:steps]
        else:
            ids = kept_ids if arm == "saerl-random" else [p.id for p in problems]
            out[f"{arm}-s{arm_seed}"] = random_schedule(ids, B, steps, arm_seed * 1000)
    if schedule in ("saerl", "mixed"):
        epoch = engineered_epoch(seed * 1000)
    else:  # schedule "random": random_schedule's first shuffled epoch of the kept ids (as one batch)
        order = random_schedule(kept_ids, len(kept_ids), 1, seed * 1000)[0]
        epoch = [order[s:s + B] for s in range(0, len(order), B)]
    return out, epoch


def arms(schedule: str, compare: bool, seeds: int, seed: int) -> list[tuple[str, int]]:
    """(arm, seed) pairs. `vanilla`: random order over every problem (plain GRPO). `saerl`: the engineered
    schedule over the kept problems; with schedule="random", `saerl-random`: random order over the kept problems
    (the filter without the schedule); with schedule="mixed", `saerl-mixed`: the engineered progress with every
    batch mixed over all clusters. compare adds vanilla; seeds arms of each kind, seeded seed, seed+1, ..."""
    engineered = {"saerl": "saerl", "random": "saerl-random", "mixed": "saerl-mixed"}[schedule]
    names = ["vanilla", engineered] if compare else [engineered]
    return [(name, seed + s) for s in range(seeds) for name in names]


def pace_applies(pace: str, schedule: str, steps: int, batch_size: int, n_kept: int, *,
                 log=lambda msg: print(msg, file=sys.stderr)) -> bool:
    """--pace budget acts only on the engineered arm, and only when the budget is under one epoch;
    where it cannot act, `log` says why."""
    paced = pace == "budget" and schedule in ("saerl", "mixed") and steps * batch_size < n_kept
    if pace == "budget" and not paced:
        why = ("--schedule random has no easy-to-hard order" if schedule == "random" else
               f"--steps {steps} x batch {batch_size} covers all {n_kept} kept problems")
        log(f"--pace budget has no effect here: {why}")
    return paced


def build_schedule(cluster_ids, difficulty, batch_size: int, *, mix: float = 0.25, curriculum: bool = True,
                   seed: int = 0, interleave: bool = False) -> list[list[int]]:
    """The SAERL batch schedule: a list of batches of row indices into cluster_ids / difficulty (the kept problems).

    1. Inside each cluster, order problems easy first: stable sort by predicted difficulty, ties by index
       (curriculum=False: a seeded shuffle instead; difficulty may then be None).
    2. Cut each cluster of n_c problems into ⌊n_c / B⌋ full batches; full batch i of a cluster with n_b of them
       gets progress (i + ½) / n_b.
    3. Remainders (the last n_c mod B problems of each cluster) are pooled: each keeps its own within-cluster
       progress (pos + ½) / n_c, the pool is sorted by (progress, cluster rank, index) and cut into batches of B
       whose progress is the mean of their items'.
    4. All complete batches are ordered by (progress, full before pooled, cluster rank), where the cluster rank
       is a seeded permutation of the clusters, so batches of equal progress come from different clusters in a
       seeded order; progress is compared as exact fractions. The one possibly partial batch (the end of the
       pool, N mod B problems) goes last.
    5. Mixing: s = ⌊mix·B/2⌋; for j = 0, 2, 4, … the last s items of batch j and of batch j+1 are swapped
       (disjoint pairs, so no item moves twice; with a short final batch the tail is min(s, its size)). mix=0
       keeps pure cluster batches, mix=1 makes every paired batch half and half.
    interleave=True (--schedule mixed, the fully mixed ablation): no cluster-first batches; every problem goes to
    the pool of step 3, so each batch holds the problems of every cluster at the same progress, and mixing has
    nothing left to do. Every index appears exactly once; every batch has B items except possibly the last."""
    clusters, diff = _schedule_inputs(cluster_ids, difficulty, batch_size, mix, curriculum)
    rng = np.random.default_rng(seed)
    ids = sorted(set(clusters))
    rank = {c: r for r, c in enumerate(np.asarray(ids)[rng.permutation(len(ids))].tolist())}
    members = {c: [] for c in ids}
    for i, c in enumerate(clusters):
        members[c].append(i)

    keyed, pool = [], []  # keyed: (sort key, batch); pool: (progress, rank, index)
    B = batch_size
    for c in ids:
        items = members[c]
        if curriculum:
            items = sorted(items, key=lambda i: (diff[i], i))
        else:
            items = [items[j] for j in rng.permutation(len(items))]
        n_full = 0 if interleave else len(items) // B
        for b in range(n_full):
            keyed.append(((Fraction(2 * b + 1, 2 * n_full), 0, rank[c]), items[b * B:(b + 1) * B]))
        pool += [(Fraction(2 * pos + 1, 2 * len(items)), rank[c], i)
                 for pos, i in enumerate(items) if pos >= n_full * B]
    pool.sort()
    tail = []
    for r, s in enumerate(range(0, len(pool), B)):
        chunk = pool[s:s + B]
        if len(chunk) < B:
            tail = [i for _, _, i in chunk]
            break
        progress = sum((p for p, _, _ in chunk), Fraction(0)) / len(chunk)
        keyed.append(((progress, 1, r), [i for _, _, i in chunk]))
    keyed.sort(key=lambda kb: kb[0])
    batches = [list(b) for _, b in keyed] + ([tail] if tail else [])

    s = 0 if interleave else int(math.floor(mix * B / 2))
    for j in range(0, len(batches) - 1, 2):
        t = min(s, len(batches[j]), len(batches[j + 1]))
        if t > 0:
            a, b = batches[j], batches[j + 1]
            a[-t:], b[-t:] = b[-t:], a[-t:]
    return batches


def budget_subset(cluster_ids, difficulty, n_take: int, *, seed: int = 0) -> list[int]:
    """The rows a step budget shorter than one epoch trains on (`--pace budget`): n_take of them, sorted, so that
    a curriculum over the subset still runs from each cluster's easiest to its hardest problems within the budget.

    Each cluster's share is proportional to its size: n_c * n_take / n rounded down, the leftover rows going to
    the largest remainders (ties: smaller cluster id). A cluster's m rows are drawn one per stratum: its
    easy-to-hard order (stable sort by difficulty, ties by index) cut into m ranges [floor(t n_c / m),
    floor((t + 1) n_c / m)), one seeded pick in each. difficulty=None (no curriculum): m seeded picks without
    replacement. n_take >= n returns every row."""
    clusters = _int_list(cluster_ids)
    n = len(clusters)
    if n_take < 0:
        raise ValueError(f"n_take must be >= 0, got {n_take}")
    if n_take >= n:
        return list(range(n))
    diff = None if difficulty is None else _difficulty_array(difficulty, n)
    members: dict[int, list[int]] = {}
    for i, c in enumerate(clusters):
        members.setdefault(c, []).append(i)
    ids = sorted(members)
    quota = {c: len(members[c]) * n_take // n for c in ids}
    leftover = n_take - sum(quota.values())
    by_remainder = sorted(ids, key=lambda c: (-(len(members[c]) * n_take % n), c))
    for c in by_remainder[:leftover]:
        quota[c] += 1
    rng = np.random.default_rng(seed)
    picked = []
    for c in ids:
        items, m = members[c], quota[c]
        if m == 0:
            continue
        if diff is None:
            picked += [items[j] for j in rng.choice(len(items), size=m, replace=False)]
            continue
        items = sorted(items, key=lambda i: (diff[i], i))
        n_c = len(items)
        picked += [items[int(rng.integers(t * n_c // m, (t + 1) * n_c // m))] for t in range(m)]
    return sorted(picked)


def random_schedule(ids: list[str], batch_size: int, num_steps: int, seed: int) -> list[list[str]]:
    """Vanilla GRPO's data order: shuffled epochs (a fresh permutation each epoch), cut into batches."""
    if len(ids) < batch_size:
        raise ValueError(f"{len(ids)} problems cannot fill a batch of {batch_size}")
    rng = np.random.default_rng(seed)
    order: list[str] = []
    while len(order) < num_steps * batch_size:
        order += [ids[i] for i in rng.permutation(len(ids))]
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(num_steps)]


# The schedule file and the input checks (below the method)


def read_schedule(path) -> list[list[str]]:
    """schedule.jsonl rows {"step": i, "ids": [...]} -> batches ordered by step (steps must be 0..S-1)."""
    rows = list(read_jsonl(path))
    for n, r in enumerate(rows):
        if "step" not in r or "ids" not in r:
            raise ValueError(f"row {n + 1} of {path} needs keys 'step' and 'ids'; got {sorted(r)}")
    rows.sort(key=lambda r: r["step"])
    if [r["step"] for r in rows] != list(range(len(rows))):
        raise ValueError(f"{path}: steps must be 0..{len(rows) - 1} without gaps or repeats")
    return [[str(i) for i in r["ids"]] for r in rows]


def write_schedule(path, batches: list[list[str]]) -> None:
    """schedule.jsonl: one row {"step": i, "ids": [...]} per batch, which read_schedule reads back."""
    write_jsonl(path, [{"step": i, "ids": b} for i, b in enumerate(batches)])


def _schedule_inputs(cluster_ids, difficulty, batch_size: int, mix: float, curriculum: bool):
    """build_schedule's inputs checked: (the cluster ids as ints, the difficulties as a float64 array, or None
    without a curriculum)."""
    clusters = _int_list(cluster_ids)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= mix <= 1:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    if curriculum and difficulty is None:
        raise ValueError("difficulty is required when curriculum=True")
    return clusters, _difficulty_array(difficulty, len(clusters)) if curriculum else None


def _int_list(values) -> list[int]:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    return [int(v) for v in np.asarray(values).reshape(-1).tolist()]


def _difficulty_array(difficulty, n: int) -> np.ndarray:
    """Predicted difficulties as a float64 [n] array; wrong length or NaN is an error."""
    diff = np.asarray(difficulty.detach().cpu() if isinstance(difficulty, torch.Tensor) else difficulty,
                      dtype=np.float64).reshape(-1)
    if diff.shape[0] != n:
        raise ValueError(f"difficulty has {diff.shape[0]} entries, cluster_ids has {n}")
    if np.isnan(diff).any():
        raise ValueError("difficulty contains NaN")
    return diff
