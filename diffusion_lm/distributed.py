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
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")


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
