"""Specification of schedule.py: SAERL's batch schedule with mixing and pacing, the random order, the
schedule file. Expected values come from hand derivations or slow obvious re-implementations written here,
never from the code under test."""
import numpy as np
import pytest

import schedule as sch
from data import Problem
from runtime import write_jsonl


def make_problems(n=20):
    return [Problem(id=f"p{i}", problem=f"what is {i} plus {i + 1} added together",
                    answer=str(2 * i + 1), meta={"topic": "add"}) for i in range(n)]


CL = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2]
DIFF = [5, 4, 3, 2, 1, 1, 2, 3, 1, 1, 1, 1, 1, 1, 1]


def test_schedule_worked_example():
    # B = 2. Cluster 0 easy-first is 4,3,2,1,0: batches [4,3] (progress 1/4), [2,1] (3/4), rest 0
    # at progress 9/10. Cluster 1: [5,6] (1/2), rest 7 at 5/6. Cluster 2 (all ties, by index):
    # [8,9] (1/6), [10,11] (1/2), [12,13] (5/6), rest 14 at 13/14. The pool 7, 0, 14 gives [7,0]
    # (mean 13/15) and the short final [14]. [10,11] and [5,6] tie at 1/2: the cluster rank
    # (seeded) orders them, so only that pair may swap places.
    out = sch.build_schedule(CL, DIFF, 2, mix=0.0, seed=0)
    head = [[8, 9], [4, 3]]
    tail = [[2, 1], [12, 13], [7, 0], [14]]
    assert out[:2] == head and out[4:] == tail
    assert sorted(out[2:4]) == [[5, 6], [10, 11]]
    # mix = 1: s = ⌊1·2/2⌋ = 1, pairs (0,1), (2,3), (4,5), (6,7) swap their last items.
    mixed = sch.build_schedule(CL, DIFF, 2, mix=1.0, seed=0)
    for j in range(0, 8, 2):
        a, b = out[j], out[j + 1]
        assert mixed[j] == a[:-1] + b[-1:] and mixed[j + 1] == b[:-1] + a[-1:]


def schedule_case(seed=0):
    rng = np.random.default_rng(seed)
    clusters = rng.integers(0, 7, size=301)
    difficulty = rng.random(301)
    return clusters, difficulty


@pytest.mark.parametrize("mix", [0.0, 0.25, 0.5, 1.0])
def test_schedule_every_problem_once_and_batch_sizes(mix):
    clusters, difficulty = schedule_case()
    out = sch.build_schedule(clusters, difficulty, 16, mix=mix, seed=2)
    assert sorted(i for b in out for i in b) == list(range(301))
    assert [len(b) for b in out] == [16] * 18 + [301 - 18 * 16]


def test_schedule_before_mixing_is_pure_and_easy_to_hard():
    clusters, difficulty = schedule_case()
    out = sch.build_schedule(clusters, difficulty, 16, mix=0.0, seed=2)
    pooled = []
    for b in out:
        if len(set(clusters[b])) == 1:  # a cluster's own batch: sorted easy first
            assert list(difficulty[b]) == sorted(difficulty[b])
        else:
            pooled.append(b)
    assert len(out) - len(pooled) >= 7 * (301 // 7 // 16) - 7
    for c in range(7):  # across a cluster's own batches, difficulty never decreases
        seq = [difficulty[i] for b in out if b not in pooled for i in b if clusters[i] == c]
        assert seq == sorted(seq)


@pytest.mark.parametrize("mix,s", [(0.25, 2), (0.5, 4), (1.0, 8)])
def test_schedule_swaps_exactly_floor_mix_b_over_2(mix, s):
    clusters, difficulty = schedule_case()
    pure = sch.build_schedule(clusters, difficulty, 16, mix=0.0, seed=2)
    mixed = sch.build_schedule(clusters, difficulty, 16, mix=mix, seed=2)
    moved = sum(a != b for p, m in zip(pure, mixed) for a, b in zip(p, m))
    pairs = len(pure) // 2  # 19 batches: pairs (0,1) … (16,17); the short last one is unpaired
    assert moved == 2 * s * pairs
    for p, m in zip(pure, mixed):
        assert p[:16 - s] == m[:16 - s]


def test_schedule_is_deterministic_and_seeded():
    clusters, difficulty = schedule_case()
    a = sch.build_schedule(clusters, difficulty, 16, seed=5)
    assert a == sch.build_schedule(clusters, difficulty, 16, seed=5)
    c = sch.build_schedule(clusters, difficulty, 16, curriculum=False, seed=5)
    assert c != a and sorted(i for b in c for i in b) == list(range(301))
    assert c == sch.build_schedule(clusters, None, 16, curriculum=False, seed=5)


def test_budget_subset_worked_example():
    # CL has clusters of 5, 3 and 7 rows (n = 15); n_take = 6. Shares 5*6/15 = 2, 3*6/15 = 1.2,
    # 7*6/15 = 2.8: floors 2, 1, 2 (sum 5), the one leftover row to the largest remainder (cluster 2).
    # Cluster 0 easy-to-hard is rows 4,3,2,1,0; m = 2 strata: positions [0, 2) and [2, 5), so one
    # of rows {4, 3} and one of {2, 1, 0}. Cluster 1 (rows 5,6,7, m = 1): any one. Cluster 2 (ties,
    # by index 8..14, m = 3): strata [0, 2), [2, 4), [4, 7) -> one of {8,9}, {10,11}, {12,13,14}.
    for seed in range(20):
        out = sch.budget_subset(CL, DIFF, 6, seed=seed)
        assert out == sorted(out) and len(set(out)) == 6
        assert len({4, 3} & set(out)) == 1 and len({2, 1, 0} & set(out)) == 1
        assert len({5, 6, 7} & set(out)) == 1
        for stratum in ({8, 9}, {10, 11}, {12, 13, 14}):
            assert len(stratum & set(out)) == 1
    draws = {tuple(sch.budget_subset(CL, DIFF, 6, seed=seed)) for seed in range(20)}
    assert len(draws) > 1 and sch.budget_subset(CL, DIFF, 6, seed=3) == sch.budget_subset(CL, DIFF, 6, seed=3)


def test_budget_subset_ties_counts_and_edges():
    # sizes 6, 3, 1 with n_take 5: shares 3, 1.5, 0.5 -> floors 3, 1, 0; remainders tie at 0.5 and
    # the smaller cluster id (1) takes the leftover row.
    cl = [0] * 6 + [1] * 3 + [2]
    out = sch.budget_subset(cl, list(range(10)), 5, seed=0)
    assert [sum(cl[i] == c for i in out) for c in (0, 1, 2)] == [3, 2, 0]
    assert sch.budget_subset(cl, None, 5, seed=0) != [] and len(sch.budget_subset(cl, None, 5, seed=1)) == 5
    assert sch.budget_subset(cl, None, 10) == list(range(10)) == sch.budget_subset(cl, None, 99)
    assert sch.budget_subset(cl, None, 0) == []
    with pytest.raises(ValueError, match="NaN"):
        sch.budget_subset(cl, [float("nan")] * 10, 5)
    with pytest.raises(ValueError, match="entries"):
        sch.budget_subset(cl, [1.0] * 9, 5)


def test_budget_subset_spans_each_clusters_difficulty_range():
    clusters, difficulty = schedule_case()
    out = sch.budget_subset(clusters, difficulty, 64, seed=1)
    assert len(out) == 64
    for c in range(7):
        mine = sorted(difficulty[clusters == c])
        got = sorted(difficulty[i] for i in out if clusters[i] == c)
        # the first pick lies in the cluster's easiest stratum, the last in its hardest
        m, n_c = len(got), len(mine)
        assert m > 0, f"cluster {c} got no share; the case needs every cluster represented"
        assert got[0] <= mine[n_c // m - 1] and got[-1] >= mine[(m - 1) * n_c // m]


def test_random_arm_epoch_is_a_seeded_permutation():
    # --schedule random: schedule.jsonl is one shuffled epoch of the kept problems (random_schedule's)
    problems = make_problems(10)
    quality = {"kept": list(range(10))}
    difficulty = {"predicted": [0.0] * 10}
    clusters = {"labels": [0] * 10}

    def epoch(seed):
        return sch.make_schedules(problems, quality, difficulty, clusters, batch_size=4, steps=2, schedule="random",
                                  compare=False, seeds=1, seed=seed, mix=0.25, curriculum=True, paced=False)[1]

    out = epoch(1)
    assert [len(b) for b in out] == [4, 4, 2]
    assert sorted(i for b in out for i in b) == sorted(p.id for p in problems)
    assert out == epoch(1) != epoch(2)


def test_schedule_file_round_trip_and_errors(tmp_path):
    write_jsonl(tmp_path / "s.jsonl", [{"step": 1, "ids": ["b", "c"]}, {"step": 0, "ids": ["a", 7]}])
    assert sch.read_schedule(tmp_path / "s.jsonl") == [["a", "7"], ["b", "c"]]
    write_jsonl(tmp_path / "gap.jsonl", [{"step": 0, "ids": ["a"]}, {"step": 2, "ids": ["b"]}])
    with pytest.raises(ValueError, match="without gaps"):
        sch.read_schedule(tmp_path / "gap.jsonl")
    sched = sch.random_schedule(["a", "b", "c", "d", "e"], 2, 5, seed=0)
    assert len(sched) == 5 and sorted(sum(sched[:2], []) + sched[2][:1]) == ["a", "b", "c", "d", "e"]


def test_interleaved_schedule_mixes_every_batch_over_the_clusters_by_progress():
    # cluster 0: rows 0-3 (easy to hard), cluster 1: rows 4-5; B = 2. Within-cluster progress:
    # rows 0..3 -> 1/8, 3/8, 5/8, 7/8; rows 4, 5 -> 1/4, 3/4. One sequence by progress:
    # 0 (1/8), 4 (1/4), 1 (3/8), 2 (5/8), 5 (3/4), 3 (7/8), cut into batches of 2.
    clusters, diff = [0, 0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.1, 0.9]
    assert sch.build_schedule(clusters, diff, 2, mix=0.0, interleave=True) == [[0, 4], [1, 2], [5, 3]]
    # mixing has nothing left to do: the same batches at any mix
    assert sch.build_schedule(clusters, diff, 2, mix=1.0, interleave=True) == [[0, 4], [1, 2], [5, 3]]
    # cluster-first (the default) keeps whole-cluster batches instead
    assert sorted(map(sorted, sch.build_schedule(clusters, diff, 2, mix=0.0))) == [[0, 1], [2, 3], [4, 5]]


def test_pace_applies_only_under_one_epoch_of_an_ordered_schedule_and_says_why_not():
    said = []
    assert sch.pace_applies("budget", "saerl", 4, 8, 100, log=said.append)  # 32 of 100
    assert sch.pace_applies("budget", "mixed", 4, 8, 100, log=said.append)
    assert said == []
    assert not sch.pace_applies("budget", "mixed", 20, 8, 100, log=said.append)  # 160 >= 100
    assert not sch.pace_applies("budget", "random", 4, 8, 100, log=said.append)
    assert said == ["--pace budget has no effect here: --steps 20 x batch 8 covers all 100 kept problems",
                    "--pace budget has no effect here: --schedule random has no easy-to-hard order"]
    assert not sch.pace_applies("epoch", "saerl", 4, 8, 100, log=said.append) and len(said) == 2
