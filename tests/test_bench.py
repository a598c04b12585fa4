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
