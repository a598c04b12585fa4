"""checkpoint.py -- the trainer's checkpoints: one directory per step, written under a temporary name
and renamed (atomic), holding whole tensors in the one-process format.
Imports: parallel (FSDP2 full-state gathers) from this project; torch, numpy, safetensors.

    checkpoints/step_{step:06d}/ model.safetensors  the policy (tied weights once)
                                 optimizer.pt       AdamW state, keyed by parameter index
                                 state.pt           step, RNG states, the config, the schedule hash

A checkpoint written by one process, by N ranks under ddp, or by N ranks under fsdp2 (gathered to
whole tensors on rank 0) is the same file set, so a run resumes under any world size and either
mode. grpo.train calls save_checkpoint on every rank (the gather is a collective); rank 0 writes.
Resuming (`resume_latest`) reads every file of the newest checkpoint before applying any; a damaged
one is named in a warning and the one before it is used. A full disk while writing is said so, and
the previous checkpoint stays intact (the new one is only renamed into place once whole).
"""
from __future__ import annotations

import errno
import os
import random
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

import parallel
from parallel import dist_info


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
             "python": {"version": py_state[0], "state": list(py_state[1])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((state["python"]["version"], tuple(state["python"]["state"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(ckpt_dir: Path, step: int, policy, optimizer, cfg, schedule_hash: str) -> Path:
    """Write checkpoints/step_{step:06d}/ {model.safetensors, optimizer.pt, state.pt}; `step` is the
    number of schedule steps completed. Older checkpoints beyond cfg.keep_checkpoints are removed.
    Every rank calls it (FSDP2 gathers the shards); rank 0 writes the one-process format."""
    from safetensors.torch import save_file, save_model

    if parallel.is_sharded(policy):
        model_state, optim_state = parallel.full_model_state(policy), parallel.full_optimizer_state(policy, optimizer)
    if dist_info()[0] != 0:
        return ckpt_dir / f"step_{step:06d}"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:06d}"
    tmp = ckpt_dir / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if parallel.is_sharded(policy):
            save_file(model_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            torch.save(optim_state, tmp / "optimizer.pt")
        else:
            save_model(policy, str(tmp / "model.safetensors"))  # save_model handles tied embeddings
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"step": step, "rng": _rng_state(), "config": asdict(cfg), "schedule_hash": schedule_hash},
                   tmp / "state.pt")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except (OSError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        # torch.save on a full disk says "[enforce fail at inline_container.cc] unexpected pos ..."
        full = getattr(e, "errno", None) == errno.ENOSPC or "unexpected pos" in str(e)
        kept = latest_checkpoint(ckpt_dir)
        raise OSError(errno.ENOSPC if full else getattr(e, "errno", None) or errno.EIO,
                      f"{'no space left on the device' if full else 'could not write'} while writing checkpoint "
                      f"{final} ({str(e)[:160]}); the previous checkpoint is intact: {kept or 'none'}") from e
    if final.exists():  # only after a crash between rename and the next step; same step, same content
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_dir)
    for old in sorted(ckpt_dir.glob("step_*"))[:-cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def completed_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The finished checkpoints under ckpt_dir, oldest first (a renamed folder with its state.pt)."""
    return sorted(p for p in Path(ckpt_dir).glob("step_*") if (p / "state.pt").exists())


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = completed_checkpoints(ckpt_dir)
    return done[-1] if done else None


class CorruptCheckpoint(RuntimeError):
    """A checkpoint's files cannot be read back (truncated, overwritten, not what we wrote)."""


def resume_latest(ckpt_dir: Path, policy, optimizer, cfg, schedule_hash: str) -> tuple[int, Path | None]:
    """Load the newest readable checkpoint: (steps completed, its folder), (0, None) when there is none.
    A corrupt newest checkpoint is named in a warning and the previous one is used; when none can be
    read the error names them all."""
    broken = []
    for path in reversed(completed_checkpoints(ckpt_dir)):
        try:
            return load_checkpoint(path, policy, optimizer, cfg, schedule_hash), path
        except CorruptCheckpoint as e:
            broken.append(str(e))
            warnings.warn(f"{e}; trying the previous checkpoint")
    if broken:
        raise CorruptCheckpoint(f"no checkpoint under {ckpt_dir} can be read ({'; '.join(broken)}); move them aside "
                                "to start the run over")
    return 0, None


def _read_checkpoint(path: Path) -> dict:
    """Every file of a checkpoint, read and checked before anything is applied to the model."""
    from safetensors.torch import load_file

    try:
        state = torch.load(path / "state.pt", weights_only=True)
        model = load_file(str(path / "model.safetensors"))
        optim = torch.load(path / "optimizer.pt", weights_only=True)
        missing = {"step", "rng", "config", "schedule_hash"} - set(state)
        if missing:
            raise KeyError(f"state.pt lacks {sorted(missing)}")
    except Exception as e:  # torch, safetensors and pickle each raise their own kinds on a damaged file
        raise CorruptCheckpoint(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:200]})") from e
    return {"state": state, "model": model, "optimizer": optim}


def load_checkpoint(path: Path, policy, optimizer, cfg, schedule_hash: str) -> int:
    """Restore weights, optimizer and RNG states in place; returns the number of steps completed.
    A checkpoint written under any world size and either --parallel mode loads into any other.
    Raises CorruptCheckpoint, naming the folder, before touching the model when a file is damaged."""
    from safetensors.torch import load_model

    files = _read_checkpoint(path)
    state = files["state"]
    if state["schedule_hash"] != schedule_hash:
        raise ValueError(f"checkpoint {path} was written for a different schedule (hash "
                         f"{state['schedule_hash'][:12]} vs {schedule_hash[:12]}); use a new out_dir")
    length_only = {"max_steps", "num_steps", "save_every", "keep_checkpoints", "eval_every", "report_to"}
    changed = [k for k, v in state["config"].items() if k not in length_only and getattr(cfg, k, v) != v]
    if changed:
        warnings.warn(f"resuming from {path} with changed settings: "
                      + ", ".join(f"{k}: {state['config'][k]!r} -> {getattr(cfg, k)!r}" for k in changed))
    if parallel.is_sharded(policy):  # every rank reads the whole files and keeps its shard
        parallel.load_full_model_state(policy, files["model"])
        parallel.load_full_optimizer_state(policy, optimizer, files["optimizer"])
    else:
        load_model(policy, str(path / "model.safetensors"), device=str(next(policy.parameters()).device))
        optimizer.load_state_dict(files["optimizer"])
    _set_rng_state(state["rng"])
    return int(state["step"])
