"""runtime.py: atomic IO and JSONL, cache keys, the one device rule and model loader, dataclass CLI flags,
pad-safe attention."""
import os

import pytest

from runtime import DataError, Stage, Stages, append_jsonl, read_jsonl, stable_hash, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])

    class Boom:
        def __iter__(self):
            yield {"a": 2}
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_jsonl(path, Boom())
    assert read_jsonl(path) == [{"a": 1}]
    assert os.listdir(tmp_path) == ["out.jsonl"]  # no temp file left behind


def test_read_jsonl_ignores_torn_last_line_only(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"step": 0})
    with open(path, "a") as f:
        f.write('{"step": 1')
    assert read_jsonl(path) == [{"step": 0}]
    path.write_text('{"a"\n{"b": 1}\n')
    with pytest.raises(DataError, match="line 1"):
        read_jsonl(path)


def test_read_jsonl_accepts_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_read_jsonl_names_the_line_and_byte_offset_of_non_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')  # \xe9 (latin-1 e-acute) follows 9 + 10 bytes
    with pytest.raises(DataError, match=r"latin1\.jsonl: line 2 is not UTF-8 text \(byte 0xe9 at offset 19 of"):
        read_jsonl(path)


def test_read_jsonl_rows_must_be_objects(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n{"a": 3}\n')
    with pytest.raises(DataError, match=r"list\.jsonl: line 2 is a JSON list, expected an object"):
        read_jsonl(path)


def test_jsonl_round_trips_unicode_line_separators(tmp_path):
    """write_jsonl leaves U+2028, U+2029 and U+0085 raw inside strings; they do not end a JSONL line."""
    rows = [{"problem": "a\u2028b\u2029c\x85d"}, {"problem": "e"}]
    write_jsonl(tmp_path / "sep.jsonl", rows)
    assert read_jsonl(tmp_path / "sep.jsonl") == rows


def test_stable_hash_is_order_independent_for_dicts():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1}) != stable_hash({"a": 1, "b": 3})



PIPELINE = (Stage("a", settings=("x",), files=("a.txt",)), Stage("b", reads=("a",), settings=("y",), files=("b.txt",)),
            Stage("c", settings=("y",), files=("c.txt",)))


def stages_run(root, settings) -> list[str]:
    """Run the three stages of PIPELINE through the cache; returns the ones that were computed."""
    stages = Stages(root, PIPELINE, settings, log=lambda message: None)
    computed = []
    for name in ("a", "b", "c"):
        with stages.run(name) as compute:
            if compute:
                (root / f"{name}.txt").write_text(name)
                computed.append(name)
    return computed


def test_stage_keys_follow_the_settings_and_stages_they_name(tmp_path):
    settings = {"x": 1, "y": 2, "z": 3}
    assert stages_run(tmp_path, settings) == ["a", "b", "c"]
    assert stages_run(tmp_path, settings) == []                      # nothing changed: all read back
    assert stages_run(tmp_path, settings | {"z": 4}) == []           # a setting no stage names
    assert stages_run(tmp_path, settings | {"x": 5}) == ["a", "b"]   # a's setting: a and b, which reads a
    assert stages_run(tmp_path, settings | {"x": 5, "y": 6}) == ["b", "c"]
    (tmp_path / "c.txt").unlink()                                    # a missing file is recomputed
    assert stages_run(tmp_path, settings | {"x": 5, "y": 6}) == ["c"]


# ------------------------------------------------------------------------------------------------ entry points
def test_unreachable_hub_model_fails_fast_naming_a_local_path():
    import time

    from runtime import load_model

    start = time.perf_counter()
    with pytest.raises(SystemExit, match="local path"):
        load_model("no-such-org/no-such-model-for-saerl")
    assert time.perf_counter() - start < 5.0


def test_device_rule():
    import torch

    from runtime import resolve_device

    auto = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == resolve_device(None) == auto
    assert resolve_device("cpu") == torch.device("cpu")


def test_dataclass_flags_round_trip():
    import argparse
    from dataclasses import dataclass

    from runtime import add_dataclass_args, dataclass_from_args, flag, given_args

    @dataclass
    class Args:
        steps: int | None = flag(None, "steps (default: the preset's)")
        mix: float = flag(0.25, "mixing in 100%")
        name: str = flag("toy", "run name", aliases=["--run-name"])
        no_cluster: bool = flag(False, "ablation")
        bf16: bool = flag(True, "autocast")

    ap = add_dataclass_args(argparse.ArgumentParser(), Args)
    assert dataclass_from_args(Args, ap.parse_args([])) == Args()
    got = dataclass_from_args(Args, ap.parse_args(["--steps", "7", "--mix", "0.5", "--run-name", "x",
                                                   "--no-cluster", "--no-bf16"]))
    assert got == Args(steps=7, mix=0.5, name="x", no_cluster=True, bf16=False)
    assert "mixing in 100%" in ap.format_help()  # a % in help text is not an argparse format

    overrides = add_dataclass_args(argparse.ArgumentParser(), Args, unset=None)
    assert given_args(Args, overrides.parse_args(["--mix", "1"])) == {"mix": 1.0}
    assert "[0.25]" in overrides.format_help()  # the field's default is shown when flags start unset


def test_pad_safe_attention_changes_only_the_padding_rows():
    """Real tokens see exactly what they saw; a padding row that could attend to nothing now attends."""
    import torch
    from conftest import assert_close_to_scale, attention_masks, every_query_row_attends
    from test_grpo import tiny_model

    from runtime import pad_safe_attention

    model = tiny_model(seed=2).eval()
    ids = torch.randint(5, 40, (3, 9))
    att = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1], [1] * 9, [0, 0, 1, 1, 1, 1, 1, 1, 1]])
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), attention_masks() as before:
        plain = model(input_ids=ids, attention_mask=att, position_ids=pos).logits
    assert not every_query_row_attends(before), "plain sdpa masks leave the padding rows empty"
    assert pad_safe_attention(model) is model and model.config._attn_implementation == "sdpa_pad_safe"
    with torch.no_grad(), attention_masks() as after:
        safe = model(input_ids=ids, attention_mask=att, position_ids=pos).logits
    assert every_query_row_attends(after)
    real = att.bool()
    assert_close_to_scale(safe[real], plain[real], rel=1e-6)
    # without padding nothing is materialised: plain causal attention, as before
    with torch.no_grad(), attention_masks() as unpadded:
        model(input_ids=ids[1:2])
    assert unpadded and all(m is None for m in unpadded)


def test_grouped_decode_attention_equals_sdpa_with_repeated_heads():
    """One new token per row over grouped KV heads, without copying K and V: the same output as
    transformers' SDPA (which repeats each KV head for its query heads), masks included."""
    import torch
    from conftest import assert_close_to_scale
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from runtime import grouped_decode_attention

    torch.manual_seed(0)
    rows, heads, kv_heads, keys, head_dim = 3, 6, 2, 11, 8
    q = torch.randn(rows, heads, 1, head_dim)
    k, v = torch.randn(rows, kv_heads, keys, head_dim), torch.randn(rows, kv_heads, keys, head_dim)
    mask = torch.ones(rows, 1, 1, keys, dtype=torch.bool)
    mask[0, ..., :4] = False  # a left-padded row
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal, module.training = heads // kv_heads, True, False
    for m in (mask, None):
        want, _ = sdpa_attention_forward(module, q, k, v, m, scaling=0.3)
        assert_close_to_scale(grouped_decode_attention(q, k, v, m, 0.3), want, rel=1e-6)


@pytest.mark.parametrize("entry", ["saerl", "grpo", "evaluate", "sae", "toy"])
def test_entry_points_let_waiting_threads_sleep(entry):
    """Each entry point sets OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP (spinning waiters stall
    every small op on a busy machine: bench/busy_machine.py), unless the user set it."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS")}
    code = f"import {entry}, os; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('OPENBLAS_NUM_THREADS'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "PASSIVE 1", out.stderr[-500:]
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ACTIVE 1"


# ---------------------------------------------------------------------------------------------- bad flags, locks, Ctrl-C
def test_check_names_each_flag_its_value_and_what_is_allowed():
    from runtime import ConfigError, check

    check(True, {"group_size": 1}, "anything")  # nothing to say
    with pytest.raises(ConfigError) as bad:
        check(False, {"group_size": 1, "adv_scale": "std"}, "an integer >= 2", owner="GRPOConfig")
    assert str(bad.value) == ("--group-size 1 with --adv-scale std: expected an integer >= 2 "
                              "(GRPOConfig.group_size=1, GRPOConfig.adv_scale='std')")
    with pytest.raises(ValueError, match=r"^--name '': expected a folder name$"):  # quoted as a shell would
        check(False, {"name": ""}, "a folder name")


@pytest.mark.parametrize("device", ["gpu", "cuda:x"])
def test_check_device_refuses_what_torch_cannot_parse(device):
    from runtime import ConfigError, check_device

    check_device("auto")
    check_device("cpu")
    with pytest.raises(ConfigError, match=f"^--device {device}: expected auto, cpu, cuda or cuda:N$"):
        check_device(device)


HOLD_LOCK = ("import sys, time\nfrom runtime import folder_lock\nwith folder_lock(sys.argv[1]):\n"
             "    print('held', flush=True)\n    time.sleep(600)\n")


def hold_lock(folder):
    """A separate process holding folder's lock until it is killed (its pid is proc.pid)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], cwd=root, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_folder_lock_turns_away_a_second_process_and_is_free_once_the_holder_is_killed(tmp_path):
    import signal
    import socket

    from runtime import FolderInUse, folder_lock

    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(FolderInUse) as refused:
            with folder_lock(tmp_path):
                pass
        message = str(refused.value)
        assert f"pid {holder.pid} on {socket.gethostname()} (started " in message and "\n" not in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    said = []
    with folder_lock(tmp_path, log=said.append):  # the kernel dropped the dead holder's lock: taken over
        pass
    assert len(said) == 1 and f"taking over the lock of pid {holder.pid} " in said[0]


def test_folder_lock_is_left_empty_by_a_holder_that_ends_normally(tmp_path):
    from runtime import LOCK_FILE, FolderInUse, folder_lock

    with pytest.raises(RuntimeError, match="boom"):
        with folder_lock(tmp_path, log=pytest.fail):
            with pytest.raises(FolderInUse):  # one open file per lock: this process is turned away too
                with folder_lock(tmp_path):
                    pass
            raise RuntimeError("boom")
    assert (tmp_path / LOCK_FILE).read_text() == ""  # nothing for the next run to take over
    with folder_lock(tmp_path, log=pytest.fail):
        pass


@pytest.mark.parametrize("kind,status", [("ConfigError", 2), ("FolderInUse", 1), ("Interrupted", 130),
                                         ("KeyboardInterrupt", 130)])
def test_command_line_turns_each_error_into_one_line_and_its_status(capsys, kind, status):
    import runtime

    message = {"ConfigError": "--seeds 0: expected an integer >= 1", "FolderInUse": "runs/toy is in use by pid 7",
               "Interrupted": "interrupted during stage sae", "KeyboardInterrupt": ""}[kind]
    exception = getattr(runtime, kind, KeyboardInterrupt)(message)
    with pytest.raises(SystemExit) as stopped:
        with runtime.command_line("prog.py"):
            raise exception
    assert stopped.value.code == status
    assert capsys.readouterr().err == f"prog.py: {message or 'interrupted'}\n"


def test_an_empty_or_damaged_model_folder_is_named_with_a_hint(tmp_path):
    from test_grpo import tiny_model, tiny_tokenizer

    from runtime import load_model

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"model folder .*empty has no config.json \(found: nothing\)"):
        load_model(tmp_path / "empty")
    folder = tmp_path / "model"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(SystemExit, match=r"could not read the weights of model .*truncated or corrupt"):
        load_model(folder)


def test_tensorboard_tracker_writes_the_scalars_read_back_by_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from runtime import Tracker

    t = Tracker("tensorboard", tmp_path / "arm-s0")
    t.log({"step": 0, "reward": 0.25, "skipped": False, "problem_ids": ["a"], "entropy": None}, 1, "train/")
    t.log({"step": 2, "reward": 0.75, "skipped": True}, 2, "train/")
    t.close()
    acc = EventAccumulator(str(tmp_path / "arm-s0" / "tensorboard"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["train/reward", "train/skipped"]
    assert [(e.step, e.value) for e in acc.Scalars("train/reward")] == [(1, 0.25), (2, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("train/skipped")] == [(1, 0.0), (2, 1.0)]
