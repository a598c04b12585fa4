"""Specification of checkpoint.py: a damaged newest checkpoint falls back to the previous one, naming
it; nothing is applied from a checkpoint that cannot be read whole; a full disk is said so and leaves
the previous checkpoint intact. (Resume and parity end to end: tests/test_grpo.py, test_parallel.py.)"""
import errno

import pytest
import torch

import checkpoint
from grpo import GRPOConfig
from test_grpo import tiny_model


def trained(steps, tmp_path, cfg):
    """A tiny model and AdamW, one optimizer step per schedule step, a checkpoint after each."""
    model = tiny_model(seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    snapshots = {}
    for step in range(1, steps + 1):
        model(input_ids=torch.randint(0, 40, (2, 6))).logits.sum().backward()
        opt.step()
        opt.zero_grad()
        checkpoint.save_checkpoint(tmp_path, step, model, opt, cfg, "h")
        snapshots[step] = {k: v.clone() for k, v in model.state_dict().items()}
    return snapshots


def fresh():
    model = tiny_model(seed=9)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    cfg = GRPOConfig(keep_checkpoints=3)
    snapshots = trained(3, tmp_path, cfg)
    newest = tmp_path / "step_000003" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # torn by a disk fault
    model, opt = fresh()
    with pytest.warns(UserWarning, match=r"step_000003 is unreadable.*trying the previous checkpoint"):
        step, path = checkpoint.resume_latest(tmp_path, model, opt, cfg, "h")
    assert (step, path.name) == (2, "step_000002")
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[2][k]), k


def test_no_readable_checkpoint_is_an_error_naming_them_and_changes_nothing(tmp_path):
    cfg = GRPOConfig(keep_checkpoints=2)
    trained(2, tmp_path, cfg)
    for step in (1, 2):
        (tmp_path / f"step_00000{step}" / "optimizer.pt").write_bytes(b"not a pickle")
    model, opt = fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning), pytest.raises(checkpoint.CorruptCheckpoint, match=r"step_000002.*step_000001"):
        checkpoint.resume_latest(tmp_path, model, opt, cfg, "h")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # optimizer.pt is read before any weight is applied


def test_an_empty_folder_resumes_nothing(tmp_path):
    model, opt = fresh()
    assert checkpoint.resume_latest(tmp_path / "none", model, opt, GRPOConfig(), "h") == (0, None)


def test_a_full_disk_is_named_and_the_previous_checkpoint_survives(tmp_path, monkeypatch):
    cfg = GRPOConfig(keep_checkpoints=2)
    trained(1, tmp_path, cfg)
    model, opt = fresh()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):  # what torch.save raises when the device fills mid-write
        if str(f).endswith("optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1984 vs 1872")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"no space left on the device while writing checkpoint .*step_000002.*"
                                      r"previous checkpoint is intact: .*step_000001") as err:
        checkpoint.save_checkpoint(tmp_path, 2, model, opt, cfg, "h")
    assert err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000001"]  # no half-written folder left
