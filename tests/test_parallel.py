"""Specification of parallel.py (data-parallel GRPO: grpo.py under torchrun). Two gloo processes on
the CPU must give the weights one process gives on the same global batch, and a 2-rank run stopped
after a checkpoint must resume to the weights of an uninterrupted one."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import grpo
from test_grpo import has_e_reward, tiny_model, tiny_problems, tiny_tokenizer

CFG = dict(batch_size=8, group_size=4, max_new_tokens=8, gen_batch_size=2, micro_batch_size=5,
           lr=1e-3, template="plain", save_every=1, loss_type="dapo", rollout_engine="compact")


def schedule():
    ids = [p.id for p in tiny_problems(16)]
    return [ids[:8], ids[8:]]


def run(out_dir, max_steps=None):
    torch.set_num_threads(1)
    model = tiny_model(seed=7)
    cfg = grpo.GRPOConfig(**CFG, max_steps=max_steps)
    grpo.train(model, tiny_tokenizer(), tiny_problems(16), schedule(), cfg, out_dir=out_dir, reward_fn=has_e_reward)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rank(rank, world, port, out_dir, max_steps, result_path):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        weights = run(out_dir, max_steps)
        if rank == 0:
            torch.save(weights, result_path)
    finally:
        dist.destroy_process_group()


def two_ranks(tmp_path, out_dir, max_steps=None):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = tmp_path / f"weights_{max_steps}.pt"
    mp.spawn(_rank, args=(2, port, str(out_dir), max_steps, str(result)), nprocs=2, join=True)
    return torch.load(result)


def assert_same(a, b):
    shared = a.keys() & b.keys()  # a checkpoint stores tied weights once
    assert len(shared) >= len(a) - 1
    for k in shared:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=lambda m: f"{k}: {m}")


def checkpoint_weights(out_dir, step):
    from safetensors.torch import load_file

    return load_file(str(out_dir / "checkpoints" / f"step_{step:06d}" / "model.safetensors"))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_two_ranks_equal_one_process_and_a_stopped_run_resumes(tmp_path):
    one = run(tmp_path / "one")
    assert any(not torch.equal(one[k], v) for k, v in tiny_model(seed=7).state_dict().items())  # it trained
    # 2 ranks, stopped after step 1 (its checkpoint written by rank 0) ...
    two_ranks(tmp_path, tmp_path / "two", max_steps=1)
    assert grpo.latest_checkpoint(tmp_path / "two" / "checkpoints").name == "step_000001"
    assert_same(checkpoint_weights(tmp_path / "two", 1), checkpoint_weights(tmp_path / "one", 1))
    # ... then a new 2-rank launch resumes from it to step 2
    assert_same(two_ranks(tmp_path, tmp_path / "two"), one)


def test_uneven_split_is_refused():
    with pytest.raises(ValueError, match="multiple of world size x gen_batch_size"):
        grpo.rank_slice(8, 3, 0, 2)
    assert grpo.rank_slice(8, 2, 1, 2) == slice(4, 8)
