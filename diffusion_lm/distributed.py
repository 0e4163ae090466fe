"""Data-parallel training on torch.distributed, as `torchrun --nproc_per_node=N diffusion-lm <train command>` runs it.

torchrun (not Accelerate): the loop is already ours (`training.fit`), so what data parallelism needs is
three small things, written here against torch.distributed directly rather than through another
launcher's config files:

* every rank computes the same step's *global* batch as a function of the step (rows, timesteps,
  noise), then keeps its own contiguous slice of it (`shard`): equal slices, so the mean of the
  ranks' mean losses is the global batch's mean loss;
* after backward, the gradients are averaged over the ranks in one flat all-reduce (`average_gradients`),
  so every rank takes the same optimizer step and holds the same weights, EMA and schedule;
* rank 0 alone writes: checkpoints, logs, model folders, plots (`is_main`); every rank reads the same
  checkpoint to resume, so a run killed under one N resumes under any N.

Gloo on the CPU, NCCL on GPUs. With one process (no torchrun) everything here is a no-op.
"""
from __future__ import annotations

import atexit
import os
import sys

import torch
import torch.distributed as dist

from .errors import UserError


def world() -> tuple[int, int]:
    """(rank, number of processes); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def setup() -> None:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); silence the other
    ranks' stdout, so a command prints its summary once. Nothing happens in a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # gloo for the small CPU tensors the loop all-reduces (logged terms, the clock), NCCL for CUDA gradients
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    # leave the group before the interpreter tears down: gloo's threads destroyed while still running
    # have aborted a rank at exit ("terminate called without an active exception") under load
    atexit.register(_leave)
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")


def _leave() -> None:
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a peer already gone: nothing left to tidy
            pass


def check_batch(batch_size: int, key: str = "train.batch_size") -> None:
    """The global batch must split evenly over the ranks (equal slices keep the mean loss the same)."""
    rank, size = world()
    if batch_size % size:
        raise UserError(f"{key}={batch_size} does not split evenly over {size} processes; use a multiple of {size}")


def shard(batch):
    """This rank's contiguous slice of a global batch: a tensor, or a dict of tensors (and other values,
    kept whole) whose first dimension is the batch."""
    rank, size = world()
    if size == 1:
        return batch
    if isinstance(batch, dict):
        return {k: shard(v) if torch.is_tensor(v) and v.dim() > 0 else v for k, v in batch.items()}
    n = batch.shape[0]
    if n % size:
        raise UserError(f"a batch of {n} does not split evenly over {size} processes")
    per = n // size
    return batch[rank * per: (rank + 1) * per]


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace every trainable parameter's gradient by its mean over the ranks (one flat all-reduce). A
    parameter no rank has a gradient for keeps none, as in one process (so AdamW skips it); one that some
    rank lacks counts as zero there."""
    rank, size = world()
    if size == 1:  # every step of every one-process run comes through here: nothing to do, not even a list
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(has)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for p, g, any_rank in zip(params, grads, has.tolist()):
        n = g.numel()
        p.grad = flat[offset: offset + n].view_as(g).clone() if any_rank > 0 else None
        offset += n


def mean(values: dict[str, float]) -> dict[str, float]:
    """The ranks' mean of each logged number (the global batch's loss terms)."""
    rank, size = world()
    if size == 1 or not values:
        return values
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / size for k, v in zip(values, t.tolist())}


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's equal-sized `x` concatenated in rank order (the global batch's rows); `x` itself in
    one process."""
    rank, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def global_mean(local_sum: torch.Tensor, total) -> torch.Tensor:
    """This rank's share of a mean over the *global* batch: `local_sum` (this rank's rows' summed loss) over
    `total` (the global batch's count of what the mean runs over: tokens, rows), times the number of ranks,
    since `average_gradients` and `mean` divide by it. Ranks whose slices hold unequal counts (padding,
    ignored labels) then still give the gradient one process gives on the whole batch."""
    return local_sum * world()[1] / total


def main_first(fn):
    """fn() on rank 0, then on the other ranks: work that caches its result on disk (oracle labels) is done
    once, and the other ranks read the cache rank 0 wrote. In one process, just fn()."""
    if world()[1] == 1:
        return fn()
    result = fn() if is_main() else None
    barrier()
    return result if is_main() else fn()


def gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order ([obj] in one process)."""
    rank, size = world()
    if size == 1:
        return [obj]
    out = [None] * size
    dist.all_gather_object(out, obj)
    return out


def shard_rows(n: int) -> slice:
    """This rank's contiguous share of n rows when n need not split evenly (the last batch of an epoch): the
    first n % size ranks take one row more. With global_mean's totals the loss is still the global mean."""
    rank, size = world()
    per, extra = divmod(n, size)
    start = rank * per + min(rank, extra)
    return slice(start, start + per + (rank < extra))


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (as DDP does when it wraps a model): ranks whose random
    initialisations drew different numbers (rank 0 ran the oracles, the others read its cache) start equal."""
    if world()[1] == 1:
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            dist.broadcast(t, src=0)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's equal-sized `x` concatenated in rank order, differentiable: the backward pass sums each
    rank's gradient for this rank's rows back to it. A contrastive loss (InfoNCE) computed on the gathered
    rows is then the global batch's loss on every rank, and after `average_gradients` each weight holds the
    global loss's gradient, as in one process. `x` itself in one process."""
    rank, size = world()
    if size == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))
