"""parallel.py -- data-parallel GRPO under torchrun: which rank does what, and the collectives.

Owns: process-group setup (NCCL on CUDA, gloo on CPU), each rank's share of a step's prompts, and
the sums over ranks (gradients, the loss denominator, logged means). Imports only torch;
grpo.py calls it. In one process every function here is a no-op or returns (0, 1).

    torchrun --nproc_per_node N grpo.py --model M --train-data FILE --schedule schedule.jsonl

A step's B prompts are cut into B/N contiguous shares of whole generate calls; call k of the global
batch is seeded by k, so the rollouts, and with global denominators and summed gradients the
update, are those of one process on the same batch (tests/test_parallel.py).
"""
from __future__ import annotations

import os

import torch


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda and not dist.is_nccl_available():
            raise RuntimeError("torchrun on CUDA needs the NCCL backend, which this torch build lacks")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist_info()


def rank_slice(n_prompts: int, gen_batch_size: int, rank: int, world: int) -> slice:
    """This rank's contiguous share of a step's prompts. Shares are whole generate calls, and a
    call's sampling seed is its index in the global batch, so N ranks draw exactly the rollouts
    one process draws: the update does not depend on the world size."""
    share = n_prompts // world
    if n_prompts % world or share % gen_batch_size:
        raise ValueError(f"a step of {n_prompts} prompts cannot be split over {world} ranks in whole generate "
                         f"calls of --gen-batch-size {gen_batch_size}: B must be a multiple of world size x "
                         f"gen_batch_size ({world} x {gen_batch_size})")
    return slice(rank * share, (rank + 1) * share)


def all_reduce_sum(values: list[float], device, op: str = "sum") -> list[float]:
    """Sums (or maxima, op="max") over ranks; the values themselves in one process."""
    if dist_info()[1] == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def all_gather(value) -> list:
    """Every rank's `value` (any picklable object), in rank order; [value] in one process."""
    if dist_info()[1] == 1:
        return [value]
    import torch.distributed as dist

    out = [None] * dist_info()[1]
    dist.all_gather_object(out, value)
    return out


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients over ranks, one flat buffer (each rank's loss is already divided by the
    global denominator, so the sum is the one-process gradient)."""
    import torch.distributed as dist

    for p in params:
        if p.grad is None:  # a rank whose rows were all dropped still takes part
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def barrier() -> None:
    if dist_info()[1] > 1:
        import torch.distributed as dist

        dist.barrier()
