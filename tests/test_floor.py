"""The lowest transformers that requirements.txt allows runs the code that depends on its version.

The compact engine subclasses transformers' cache layer (`DynamicLayer.lazy_initialization(keys,
values)`, `is_initialized`, `Cache(layers=...)`), the loader passes `from_pretrained(dtype=...)` and
registers `sdpa_pad_safe` through `AttentionInterface`: these appeared in different releases, and a
floor that is never run is a guess (4.56.0 fails here: its `DynamicLayer` has no `is_initialized`).

This test builds, once per machine, a virtual environment that sees the installed packages but holds
transformers pinned to the floor (and the huggingface-hub and tokenizers it wants), then runs the
tests of those code paths with it. Set SAERL_FLOOR_VENV to choose the folder; it needs the package
registry the first time (as `pip install -r requirements.txt` does).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The tests whose code depends on transformers' version: the compact engine against `generate`, its
# log-probs against the trainer's, the pad-safe attention, the model loader's errors, the graph
# engine's greedy tokens, and one whole GRPO step.
FLOOR_TESTS = [
    "tests/test_sampler.py::test_compact_greedy_tokens_equal_hf_generate",
    "tests/test_sampler.py::test_sampler_logprobs_equal_the_trainers",
    "tests/test_sampler.py::test_prefill_gives_every_left_padded_query_row_a_key",
    "tests/test_runtime.py::test_pad_safe_attention_changes_only_the_padding_rows",
    "tests/test_runtime.py::test_an_empty_or_damaged_model_folder_is_named_with_a_hint",
    "tests/test_graph_decode.py::test_greedy_tokens_equal_the_compact_engines",
    "tests/test_batching.py::test_packed_logprobs_and_gradients_equal_padded",
    "tests/test_grpo.py::test_nan_loss_stops_before_the_update",
]


def requirement_floor(name: str) -> str:
    """The version after `name>=` in requirements.txt."""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.fullmatch(rf"\s*{re.escape(name)}\s*>=\s*([0-9][0-9.]*)\s*(#.*)?", line)
        if m:
            return m.group(1)
    raise AssertionError(f"requirements.txt has no '{name}>=' line")


def test_requirement_floor_is_read_from_the_file():
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", requirement_floor("transformers"))
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", requirement_floor("torch"))


def test_the_version_dependent_code_passes_its_tests_on_the_lowest_transformers_allowed(tmp_path):
    floor = requirement_floor("transformers")
    home = Path(os.environ.get("SAERL_FLOOR_VENV") or Path.home() / ".cache" / "saerl" / f"floor-transformers-{floor}")
    python = home / "bin" / "python"
    version = [str(python), "-c", "import transformers; print(transformers.__version__)"]
    have = subprocess.run(version, capture_output=True, text=True) if python.exists() else None
    if have is None or have.stdout.strip() != floor:
        venv.create(home, system_site_packages=True, with_pip=True, clear=True)
        pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              f"transformers=={floor}"], capture_output=True, text=True, timeout=900)
        assert pip.returncode == 0, f"pip could not install transformers=={floor} into {home}:\n{pip.stderr[-3000:]}"
        have = subprocess.run(version, capture_output=True, text=True)
    assert have.stdout.strip() == floor, f"{home} runs transformers {have.stdout.strip()!r}, not {floor}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *FLOOR_TESTS],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, f"on transformers {floor}:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"
    summary = run.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary, f"on transformers {floor}: {summary}"
