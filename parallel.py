"""parallel.py -- data-parallel GRPO under torchrun: which rank does what, and the collectives.

Owns: process-group setup (NCCL on CUDA, gloo on CPU), each rank's share of a step's prompts and of
an evaluation, the sums over ranks (gradients, the loss denominator, logged means), FSDP2 sharding
with its full-state gathers, and the GRPO step's equal micro-batch counts and gradient clip. Imports
torch (and safetensors) and runtime (NonFiniteError); grpo.py and evaluate.py call it. In one
process every function here is a no-op or returns (0, 1).

    torchrun --nproc_per_node N grpo.py  --model M --train-data FILE [--parallel fsdp2]
    torchrun --nproc_per_node N saerl.py --model M ...

A step's B prompts are cut into B/N contiguous shares of whole generate calls; call k of the global
batch is seeded by k, so the rollouts, and with global denominators and summed gradients the
update, are those of one process on the same batch (tests/test_parallel.py).

ddp: every rank holds the whole fp32 policy and AdamW state; gradients are all-reduced (summed).
fsdp2: `fully_shard` on each decoder layer and on a root that holds the rest (embeddings, final
norm, lm head), so each rank holds 1/N of the weights, gradients and AdamW moments (bf16 compute,
fp32 reduction on CUDA). Generation never runs through the shards (it would all-gather every layer
at every decoded token, and ranks stop decoding at different times): it runs on the unsharded
rollout copy (sampler.rollout_model), refreshed from the shards after each update. Checkpoints hold
full tensors in the one-process format, so a run resumes under any world size and either mode.
"""
from __future__ import annotations

import math
import os

import torch

from runtime import NonFiniteError


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(timeout_min: float = 30) -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU. A
    collective that waits longer than `timeout_min` (e.g. a barrier while rank 0 alone runs
    saerl.py's data stages) fails the run."""
    import datetime

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda and not dist.is_nccl_available():
            raise RuntimeError("torchrun on CUDA needs the NCCL backend, which this torch build lacks")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_min))
    return dist_info()


def rank_slice(n_prompts: int, gen_batch_size: int, rank: int, world: int) -> slice:
    """This rank's contiguous share of a step's prompts. Shares are whole generate calls, and a
    call's sampling seed is its index in the global batch, so N ranks draw exactly the rollouts
    one process draws: the update does not depend on the world size. One process takes them all."""
    if world == 1:
        return slice(0, n_prompts)
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


def all_reduce_stats(sums: dict[str, float], maxima: dict[str, float], device) -> tuple[dict, dict]:
    """A step's statistics over ranks: each value of `sums` summed and of `maxima` maximised, one
    collective for each dict (float64); both dicts as they are in one process."""
    summed = all_reduce_sum(list(sums.values()), device)
    most = all_reduce_sum(list(maxima.values()), device, op="max")
    return dict(zip(sums, summed)), dict(zip(maxima, most))


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


# ----------------------------------------------------------------------------------------------
# FSDP2
# ----------------------------------------------------------------------------------------------
class Sharded(torch.nn.Module):
    """The FSDP2 root around a *ForCausalLM. The trainer calls the decoder and the lm head
    separately (chunked log-probs), which would bypass the root's hooks, so the whole log-prob
    function runs as this module's forward: `sharded(fn, *args)` is `fn(model, *args)` with the
    root's parameters (embeddings, norm, lm head) gathered for it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def fsdp2(model: torch.nn.Module, *, bf16: bool) -> Sharded:
    """Shard `model` in place over all ranks: each decoder layer, then the root. bf16: gathered
    weights and compute in bf16, gradients reduced in fp32 (the fp32 shards stay the master copy).
    Gradients are summed over ranks, not averaged: the loss already divides by the global count."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise TypeError(f"--parallel fsdp2 shards per decoder layer; {type(model).__name__}.base_model has no "
                        "`layers` list")
    units = [fully_shard(layer, mp_policy=mp) for layer in layers]
    root = fully_shard(Sharded(model), mp_policy=mp)
    for unit in units + [root]:
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum
    return root


def is_sharded(model) -> bool:
    return isinstance(model, Sharded)


def holds_shards(model) -> bool:
    """Whether any parameter of `model` is an FSDP2 shard (a DTensor): true of the Sharded root and of
    the *ForCausalLM whose layers fsdp2 sharded in place. Such weights are whole only in a checkpoint
    or through a collective every rank joins."""
    return is_sharded(model) or any(hasattr(p, "full_tensor") for p in model.parameters())


def unwrap(model) -> torch.nn.Module:
    """The *ForCausalLM inside a Sharded root (the model itself otherwise)."""
    return model.model if isinstance(model, Sharded) else model


def call(model, fn, *args, **kwargs):
    """fn(model, *args): through the root's forward when the model is sharded."""
    return model(fn, *args, **kwargs) if isinstance(model, Sharded) else fn(model, *args, **kwargs)


def full(t: torch.Tensor) -> torch.Tensor:
    """A parameter, gradient or optimizer moment as one whole tensor (a collective for a shard)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _named_unique(model) -> list[tuple[str, list[str], torch.nn.Parameter]]:
    """(name, every alias, parameter) once per parameter: tied weights have several names."""
    names: dict[int, list[str]] = {}
    for n, p in unwrap(model).named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    return [(n, names[id(p)], p) for n, p in unwrap(model).named_parameters()]


def full_model_state(model) -> dict[str, torch.Tensor]:
    """{name: whole tensor on the CPU} in the unsharded model's names, tied weights once under the
    alphabetically first of their names (as safetensors.save_model keeps them). Under FSDP2 every
    rank must call it (one all-gather per parameter)."""
    return {min(aliases): full(p.detach()).cpu() for _, aliases, p in _named_unique(model)}


@torch.no_grad()
def load_full_model_state(model, state: dict[str, torch.Tensor]) -> None:
    """The inverse of full_model_state: each rank keeps its own shard of every whole tensor."""
    for name, aliases, p in _named_unique(model):
        key = next((a for a in aliases if a in state), None)
        if key is None:
            raise KeyError(f"the checkpoint has no tensor for parameter {name!r}")
        p.copy_(_like(state[key], p))


def _like(whole: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """`whole` laid out like `p`: the same shard of it for a DTensor, else moved to p's device."""
    whole = whole.to(device=p.device, dtype=p.dtype)
    if hasattr(p, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(whole, p.device_mesh, p.placements, src_data_rank=None)
    return whole


def full_optimizer_state(model, optimizer) -> dict:
    """optimizer.state_dict() with whole moments (a collective under FSDP2): the one-process format,
    keyed by parameter index, so any world size and either mode can load it."""
    sd = optimizer.state_dict()
    sd["state"] = {i: {k: full(v).cpu() if torch.is_tensor(v) else v for k, v in st.items()}
                   for i, st in sd["state"].items()}
    return sd


def load_full_optimizer_state(model, optimizer, sd: dict) -> None:
    """The inverse of full_optimizer_state: each rank takes its shard of every moment."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for i, st in sd["state"].items():
        p = params[int(i)]
        state[i] = {k: _like(v, p) if torch.is_tensor(v) and v.shape == p.shape else v for k, v in st.items()}
    optimizer.load_state_dict({**sd, "state": state})


# ----------------------------------------------------------------------------------------------
# The GRPO step's collectives: equal micro-batch counts under FSDP2, the gradient sum and clip
# ----------------------------------------------------------------------------------------------
def even_micro_batches(ids, att, cmask, adv, s_lp, mbs: list, roll, device):
    """Under FSDP2 every forward and backward gathers weights and reduces gradients, collectives, so
    all ranks must run as many micro-batches: a rank with fewer appends micro-batches of one dummy
    row (its first rollout again) whose loss the step multiplies by 0 (the graph, so the backward's
    collectives, still run). Returns the padded tensors and micro-batches."""
    most = int(all_reduce_sum([float(len(mbs))], device, op="max")[0])
    if most == len(mbs):
        return ids, att, cmask, adv, s_lp, mbs
    dummy = torch.tensor([len(ids)], device=ids.device)
    ids, att = torch.cat([ids, roll.input_ids[:1]]), torch.cat([att, roll.attention_mask[:1]])
    cmask, adv = torch.cat([cmask, roll.completion_mask[:1].float()]), torch.cat([adv, adv.new_zeros(1)])
    s_lp = None if s_lp is None else torch.cat([s_lp, roll.sampler_logprobs[:1]])
    return ids, att, cmask, adv, s_lp, mbs + [dummy] * (most - len(mbs))


def reduce_and_clip_gradients(policy, max_grad_norm: float, step: int) -> float:
    """Sum the gradients over ranks (ddp; FSDP2 reduce-scatters them in backward) and clip them by global
    norm to max_grad_norm (<= 0: no clipping). Returns the norm before clipping; a non-finite norm
    stops the run before the update."""
    if dist_info()[1] > 1 and not is_sharded(policy):
        all_reduce_gradients([p for p in policy.parameters() if p.requires_grad])
    params = [p for p in policy.parameters() if p.grad is not None]
    clip_to = max_grad_norm if max_grad_norm > 0 else float("inf")
    grad_norm = float(full(torch.nn.utils.clip_grad_norm_(params, clip_to)))
    if not math.isfinite(grad_norm):
        raise NonFiniteError(f"step {step}: gradient norm is {grad_norm}; the update was not applied")
    return grad_norm

