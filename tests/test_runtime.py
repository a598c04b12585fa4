"""runtime.py: atomic IO and JSONL, cache keys, the one device rule and model loader, dataclass CLI flags,
pad-safe attention."""
import os

import pytest

from runtime import DataError, Stage, Stages, append_jsonl, read_jsonl, stable_hash, write_jsonl


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
