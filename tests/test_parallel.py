"""Specification of parallel.py (data-parallel GRPO: grpo.py under torchrun). Two gloo processes on
the CPU, under ddp and under fsdp2, must give the weights and the evaluation one process gives on
the same global batch, and a 2-rank run stopped after a checkpoint must resume to the weights of an
uninterrupted one."""
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import grpo
from conftest import assert_close_to_scale
from evaluate import evaluate, make_eval_fn
from runtime import read_jsonl
from test_grpo import has_e_reward, tiny_model, tiny_problems, tiny_tokenizer

CFG = dict(batch_size=8, group_size=4, max_new_tokens=8, gen_batch_size=2, micro_batch_size=5,
           lr=1e-3, template="plain", save_every=1, loss_type="dapo", rollout_engine="compact", eval_every=2,
           skip_zero_std=True)


def skewed_reward(text, gold):
    """has_e_reward, but 0 for three of the four problems rank 0 holds at step 0 (golds 2, 3, 4): with
    skip_zero_std their groups leave the loss, so rank 0 has fewer micro-batches than rank 1, which
    under FSDP2 it must pad (parallel.even_micro_batches) to keep the collectives in step."""
    return 0.0 if gold in ("2", "3", "4") else has_e_reward(text, gold)


def schedule():
    ids = [p.id for p in tiny_problems(16)]
    return [ids[:8], ids[8:]]


def run(out_dir, max_steps=None, parallel="ddp"):
    """Train the tiny model; evaluate at steps 0 and 2 by sampling 2 completions of 7 problems in
    batches of 2 (so 2 ranks split them 2 + 2 / 2 + 1). Returns the final checkpoint's weights."""
    torch.set_num_threads(1)
    out_dir = Path(out_dir)
    model, tok = tiny_model(seed=7), tiny_tokenizer()
    cfg = grpo.GRPOConfig(**CFG, max_steps=max_steps, parallel=parallel)
    eval_fn = make_eval_fn(tok, [("tiny", tiny_problems(7))], metric="avg@2", template="plain", n=2,
                           temperature=1.0, max_new_tokens=6, batch_size=2, seed=3)
    grpo.train(model, tok, tiny_problems(16), schedule(), cfg, out_dir=out_dir, reward_fn=skewed_reward,
               eval_fn=eval_fn)
    # the completions themselves (the tiny model never boxes an answer, so accuracies are all 0)
    evaluate(tiny_model(seed=7), tok, tiny_problems(7), template="plain", n=2, temperature=1.0, max_new_tokens=6,
             batch_size=2, seed=3, out_dir=out_dir / "eval", name="tiny")
    return checkpoint_weights(out_dir, max_steps or 2)


def _rank(rank, world, port, out_dir, max_steps, parallel):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        run(out_dir, max_steps, parallel)
    finally:
        dist.destroy_process_group()


def two_ranks(out_dir, max_steps=None, parallel="ddp"):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(out_dir), max_steps, parallel), nprocs=2, join=True)
    return checkpoint_weights(out_dir, max_steps or 2)


def assert_same(a, b):
    shared = a.keys() & b.keys()  # a checkpoint stores tied weights once
    assert len(shared) >= len(a) - 1
    scale = max(float(b[k].abs().max()) for k in shared)  # the model's: a small bias moves by Adam steps as large
    for k in shared:
        assert_close_to_scale(a[k], b[k], rel=1e-5, msg=k, scale=scale)


def checkpoint_weights(out_dir, step):
    from safetensors.torch import load_file

    return load_file(str(out_dir / "checkpoints" / f"step_{step:06d}" / "model.safetensors"))


def eval_rows(out_dir):
    return list(read_jsonl(out_dir / "eval_log.jsonl"))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    return out, run(out)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_two_ranks_equal_one_process_and_a_stopped_run_resumes(tmp_path, one_process, parallel):
    one_dir, one = one_process
    assert any(not torch.equal(one[k], v) for k, v in tiny_model(seed=7).state_dict().items() if k in one)
    # 2 ranks, stopped after step 1 (its checkpoint written by rank 0) ...
    two_ranks(tmp_path / "two", max_steps=1, parallel=parallel)
    assert grpo.latest_checkpoint(tmp_path / "two" / "checkpoints").name == "step_000001"
    assert_same(checkpoint_weights(tmp_path / "two", 1), checkpoint_weights(one_dir, 1))
    # ... then a new 2-rank launch resumes from it to step 2
    assert_same(two_ranks(tmp_path / "two", parallel=parallel), one)
    # the optimizer state is whole and in the one-process layout (any world size or mode resumes it)
    a, b = (torch.load(d / "checkpoints" / "step_000002" / "optimizer.pt") for d in (tmp_path / "two", one_dir))
    assert a["state"].keys() == b["state"].keys()
    scale = max(float(b["state"][i]["exp_avg"].abs().max()) for i in b["state"])
    for i in b["state"]:
        assert_close_to_scale(a["state"][i]["exp_avg"], b["state"][i]["exp_avg"], rel=1e-5, scale=scale)
    # evaluation split over the ranks: the same sampled completions, in the same order
    completions = [[r["completion"] for r in read_jsonl(d / "eval" / "tiny.jsonl")] for d in (tmp_path / "two", one_dir)]
    assert completions[0] == completions[1] and len(completions[0]) == 14 and len(set(completions[0])) > 7
    assert [r for r in eval_rows(tmp_path / "two") if r["step"] != 1] == eval_rows(one_dir)  # + the stop at 1
    assert [r["step"] for r in eval_rows(one_dir)] == [0, 2]
    assert list(read_jsonl(one_dir / "train_log.jsonl"))[0]["n_loss_seqs"] <= 20  # 3 of rank 0's groups left
    # the step's statistics over both ranks: per-problem pass rates in batch order, reward_std per group
    logs = [list(read_jsonl(d / "train_log.jsonl")) for d in (tmp_path / "two", one_dir)]
    for a, b in zip(*logs):
        assert a["pass_rates"] == pytest.approx(b["pass_rates"], abs=1e-12) and len(a["pass_rates"]) == 8
        assert a["reward_std"] == pytest.approx(b["reward_std"], rel=1e-9)
    assert any(r > 0 for row in logs[1] for r in row["pass_rates"][4:])  # rank 1's half is not left at 0


def test_uneven_split_is_refused():
    with pytest.raises(ValueError, match="multiple of world size x gen_batch_size"):
        grpo.rank_slice(8, 3, 0, 2)
    assert grpo.rank_slice(8, 2, 1, 2) == slice(4, 8)
