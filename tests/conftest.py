"""Shared test setup: no network, tiny CPU threads, repo root importable."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory):
    """The default toy world (warm-started model + labelled problems), built once per test session."""
    import toy

    return toy.build_world(tmp_path_factory.mktemp("toy_world"), verbose=False)


@pytest.fixture
def one_thread():
    """One torch thread for the test (other suites may share the cores; small SAE checks stay exact)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
