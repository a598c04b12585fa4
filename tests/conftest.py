"""Shared test setup: no network, tiny CPU threads, repo root importable; helpers the test files import
(`from conftest import ...`): tolerances relative to scale, and the attention masks a model runs with."""
import contextlib
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the entry points: no spinning threads on a busy machine
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
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


def assert_close_to_scale(actual, expected, rel: float = 1e-5, msg: str = "", scale: float | None = None) -> None:
    """|actual - expected| <= rel x scale, elementwise in float64; scale defaults to the largest |expected|.

    Float results that are summed in another order (packed vs padded rows, micro-batches, another
    thread count or CPU model) differ by a few units in the last place of their *scale*, not of each
    element: an absolute tolerance such as 1e-6 holds on one machine and fails on the next. Pass the
    scale of the whole computation (e.g. the largest weight of a model) when one tensor's own values
    are small beside it."""
    import torch

    a, e = torch.as_tensor(actual).detach().double(), torch.as_tensor(expected).detach().double()
    assert a.shape == e.shape, f"{msg} shapes {tuple(a.shape)} vs {tuple(e.shape)}"
    if scale is None:
        scale = float(e.abs().max()) if e.numel() else 0.0
    err = float((a - e).abs().max()) if e.numel() else 0.0
    assert err <= rel * max(scale, 1e-30), f"{msg} max |diff| {err:.3g} > {rel:g} x scale {scale:.3g}"


@contextlib.contextmanager
def attention_masks():
    """Every attention mask that reaches a transformers attention function inside the block (a list,
    filled as the model runs: [B, 1, q, kv] bool where True may attend, or None for plain causal)."""
    from transformers import AttentionInterface

    functions = AttentionInterface._global_mapping
    saved = dict(functions)
    seen = []

    def recording(inner):
        def attention(module, query, key, value, attention_mask, **kwargs):
            seen.append(attention_mask)
            return inner(module, query, key, value, attention_mask, **kwargs)
        return attention

    for name, fn in saved.items():
        functions[name] = recording(fn)
    try:
        yield seen
    finally:
        functions.clear()
        functions.update(saved)


def every_query_row_attends(masks) -> bool:
    """True when every query row of every recorded mask may attend to at least one key."""
    import torch

    for m in masks:
        if m is None:
            continue
        allowed = m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
        if not bool(allowed.any(-1).all()):
            return False
    return True
