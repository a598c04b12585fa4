"""The bench scripts are not run by CI (they need minutes, real models or a GPU), so a rename in a
module can break one unseen (bench_grpo --learn once called a grpo._left_pad that had moved to the
sampler). This reads every bench script's syntax tree and checks that each name it takes from a
project module, by `from m import x` or as `m.x`, exists in that module."""
import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {p.stem for p in ROOT.glob("*.py")}
SCRIPTS = sorted((ROOT / "bench").glob("*.py"))


def used_names(tree: ast.AST) -> set[tuple[str, str]]:
    """(module, name) for every project-module name the tree uses."""
    aliases, used = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in PROJECT:
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module in PROJECT and node.level == 0:
            used |= {(node.module, a.name) for a in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            used.add((aliases[node.value.id], node.attr))
    return used


def test_the_checker_sees_both_import_forms():
    tree = ast.parse("import grpo\nimport sae as S\nfrom data import flag\ngrpo.train(S.SAE, x.y)\n")
    assert used_names(tree) == {("grpo", "train"), ("sae", "SAE"), ("data", "flag")}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_scripts_use_only_names_that_exist(script):
    missing = [f"{m}.{name}" for m, name in sorted(used_names(ast.parse(script.read_text())))
               if not hasattr(importlib.import_module(m), name)]
    assert not missing, f"{script.name} uses names its modules no longer have: {missing}"


# ------------------------------------------------------------------------------------------------
# bench/ablations.py: the grid's statistics on hand-made logs, and its learnability stop on a real run
# ------------------------------------------------------------------------------------------------
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import ablations  # noqa: E402


def _write_arm(folder: Path, curve, items, zero_std):
    folder.mkdir(parents=True)
    (folder / "eval_log.jsonl").write_text("".join(
        json.dumps({"step": s, "mean": a, **({"items": items} if k == len(curve) - 1 else {})}) + "\n"
        for k, (s, a) in enumerate(curve)))
    (folder / "train_log.jsonl").write_text("".join(json.dumps({"step": i, "frac_zero_std": z}) + "\n"
                                                    for i, z in enumerate(zero_std)))


def test_ablation_summary_by_hand(tmp_path):
    # two seeds; vanilla and the no-filter arm, each evaluated at steps 0 and 20 on 4 problems
    for s, (v_items, a_items) in enumerate((([0, 0, 1, 1], [1, 0, 1, 1]), ([0, 1, 0, 1], [1, 1, 1, 1]))):
        _write_arm(tmp_path / f"s{s}" / "saerl" / "arms" / f"vanilla-s{s}", [(0, 0.2), (20, 0.5)], v_items,
                   [0.5] * 20)
        _write_arm(tmp_path / f"s{s}" / "no-filter" / "arms" / f"saerl-s{s}", [(0, 0.2), (20, 0.6 + 0.2 * s)],
                   a_items, [0.25] * 10 + [0.75] * 10)
    vanilla = ablations.collect(tmp_path, "vanilla", 2)
    rows = ablations.summarise({"no-filter": ablations.collect(tmp_path, "no-filter", 2)}, vanilla, target=0.4)
    arm = rows["no-filter"]
    # paired differences per seed: (1+0+0+0)/4 = 0.25 and (1+0+1+0)/4 = 0.5; mean 0.375
    assert arm["paired_difference"]["values"] == [0.25, 0.5] and arm["paired_difference"]["mean"] == 0.375
    # t(0.975, 1) = 12.71, sd 0.1768: half 12.71 * 0.1768 / sqrt 2 = 1.589
    assert abs(arm["paired_difference"]["high"] - (0.375 + 1.589)) < 1e-3
    # 0.4 crossed between (0, 0.2) and (20, 0.6): step 10; and (20, 0.8): step 20 * 0.2 / 0.6 = 6.67
    assert arm["steps_to_target"]["per_seed"] == pytest.approx([10.0, 20 / 3])
    assert rows["vanilla"]["steps_to_target"]["per_seed"] == pytest.approx([40 / 3, 40 / 3])
    # informative groups: 1 - 0.25 over steps 0-9, 1 - 0.75 over 10-19
    assert arm["informative_groups"] == pytest.approx([0.75, 0.25])
    assert rows["vanilla"]["final"]["mean"] == 0.5 and "paired_difference" not in rows["vanilla"]
    # learnability: vanilla gains 0.3 on both seeds: sd 0, the interval is the point, above zero
    check = ablations.learnability(tmp_path, 2)
    assert check["gains"] == pytest.approx([0.3, 0.3]) and check["passed"]


def test_ablation_grid_stops_loudly_when_vanilla_does_not_learn(tmp_path):
    # a 2-step budget on a miniature world cannot move the policy clearly: the grid must stop before
    # any variant runs, with a non-zero exit, and say so in its JSON
    import toy

    world = toy.build_world(tmp_path / "world", n_train=120, n_test=30, warm_steps=20, verbose=False)
    flags = ["--sae-width", "64", "--sae-k", "8", "--sae-tokens", "5000", "--label-size", "40", "--k", "2",
             "--steps", "2", "--batch-size", "8", "--group-size", "4", "--eval-every", "2", "--eval-limit", "20",
             "--probe-features", "32", "--eval-samples", "2"]
    env = dict(__import__("os").environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "ablations.py"), "--seeds", "2", "--variants",
                           "no-filter", "--out", str(tmp_path / "grid"), "--world", str(tmp_path / "world"),
                           "--json", str(tmp_path / "grid.json"), "--", *flags],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    result = json.loads((tmp_path / "grid.json").read_text())
    if result["learnability"]["passed"]:  # a lucky clear gain: then the variant must have run
        assert proc.returncode == 0 and "no-filter" in result["variants"], proc.stderr[-2000:]
    else:
        assert proc.returncode == 1 and "LEARNABILITY CHECK FAILED" in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / "grid" / "s0" / "no-filter").exists()
    assert world.model_dir.exists()
