"""Sharded generation: `generate`, `baseline` and `evaluate-image` split their work over processes, and the
pieces merge into exactly what one process writes.

The unit of a shard is a *batch*: the jobs (targets × n, in order) are cut into batches of `batch_size` as in
one process, and batch k belongs to shard k mod N. Every batch draws its noise from a generator seeded by the
batch's position in the whole job list, so a batch computes the same rows with the same numbers in whichever
process runs it: the merged output equals one process's output bit for bit (a batch of other rows would
round its batched matmuls differently). Hence a shard needs at least one batch: with fewer batches than
shards, lower `batch_size`.

`evaluate-image` shards under torchrun only: its metrics (the Fréchet distance above all) need every
image, so the ranks' batches are gathered on rank 0, which scores and writes (`gather_batches`).

Two ways to run shards of `generate` and `baseline`:
* `shard=i/N` (any launcher, one machine or many): shard i writes its own JSONL, whose rows carry
  "shard", "job" and "jobs"; `evaluate` merges the N files of a run back into one process's rows;
* under `torchrun --nproc_per_node=N`, every rank takes shard rank/N and rank 0 writes the merged file.
"""
from __future__ import annotations

import os
import re

from . import distributed
from .errors import UserError

SHARD_KEYS = ("shard", "job", "jobs")  # what a shard's rows carry besides one process's keys


def parse_shard(value, key: str = "shard") -> tuple[int, int] | None:
    """(i, N) from `shard=i/N`; under torchrun (WORLD_SIZE > 1) the rank's shard; None for one process."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if value is None or value == "":
        if size > 1:
            rank, size = distributed.world()
            return rank, size
        return None
    if size > 1:
        raise UserError(f"{key}= is for separate processes; under torchrun each rank takes its own shard (drop {key}=)")
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
    if not m:
        raise UserError(f"{key} must be i/N (shard i of N, counting from 0), e.g. {key}=0/2; got {value!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or n > 4096 or i >= n:
        raise UserError(f"{key}={value}: need 0 <= i < N <= 4096")
    return i, n


def owned_batches(jobs: int, batch_size: int, shard: tuple[int, int] | None) -> list[int]:
    """The starts of the batches this shard runs (every batch's start without a shard)."""
    starts = list(range(0, jobs, batch_size))
    if shard is None:
        return starts
    i, n = shard
    mine = starts[i::n]
    if not mine:
        raise UserError(f"shard {i}/{n} has no batch: {jobs} jobs in batches of {batch_size} make {len(starts)}; "
                        f"use batch_size <= {max(1, jobs // n)} for {n} shards")
    return mine


def tag_rows(rows: list[dict], jobs: list[int], total: int, shard: tuple[int, int] | None) -> list[dict]:
    """A shard's rows with their place in the whole run; one process's rows unchanged."""
    if shard is None:
        return rows
    return [{**r, "shard": f"{shard[0]}/{shard[1]}", "job": j, "jobs": total} for r, j in zip(rows, jobs)]


def merge_parts(parts: list[tuple[str, list[dict]]]) -> list[tuple[str, list[dict]]]:
    """Files of rows, with each sharded run's files merged back into one process's rows (in job order, the
    shard keys dropped) at the place of its first file; files without shard keys pass through. A run with
    a missing, repeated or foreign shard is a one-line error."""
    out: list[tuple[str, list[dict]]] = []
    runs: dict[tuple, dict] = {}
    for source, rows in parts:
        tagged = [r for r in rows if "shard" in r]
        if not tagged:
            out.append((source, rows))
            continue
        if len(tagged) != len(rows):
            raise UserError(f"{source}: some rows carry a shard and some do not")
        shards = {r["shard"] for r in rows}
        if len(shards) != 1:
            raise UserError(f"{source}: rows of several shards ({', '.join(sorted(shards))}) in one file")
        (name,) = shards
        m = re.fullmatch(r"(\d+)/(\d+)", str(name))
        if not m or int(m.group(1)) >= int(m.group(2)):
            raise UserError(f"{source}: bad shard {name!r} (expected i/N)")
        i, n = int(m.group(1)), int(m.group(2))
        totals = {r.get("jobs") for r in rows}
        if len(totals) != 1 or not all(isinstance(r.get("job"), int) and not isinstance(r.get("job"), bool)
                                       for r in rows):
            raise UserError(f"{source}: shard rows need an integer job and one jobs count")
        (total,) = totals
        key = (rows[0].get("task"), rows[0].get("system"), n, total)
        run = runs.get(key)
        if run is None:
            run = runs[key] = {"files": {}, "rows": [], "at": len(out), "source": source}
            out.append((source, run["rows"]))
        if i in run["files"]:
            raise UserError(f"{source}: shard {i}/{n} of {key[1]} {key[0]} is also in {run['files'][i]}")
        run["files"][i] = source
        run["rows"].extend(rows)
    for (task, system, n, total), run in runs.items():
        missing = [str(i) for i in range(n) if i not in run["files"]]
        if missing:
            raise UserError(f"{system} {task}: shard(s) {', '.join(missing)} of {n} missing "
                            f"(have {', '.join(run['files'][i] for i in sorted(run['files']))})")
        jobs = sorted(r["job"] for r in run["rows"])
        if jobs != list(range(total)):
            raise UserError(f"{system} {task}: the {n} shards hold jobs that are not 0..{total - 1} once each")
        merged = [{k: v for k, v in r.items() if k not in SHARD_KEYS} for r in sorted(run["rows"], key=lambda r: r["job"])]
        run["rows"][:] = merged
    return out


def gather_rows(rows: list[dict]) -> list[dict] | None:
    """Under torchrun: every rank's tagged rows on rank 0, merged (None on the other ranks); rows unchanged
    in one process."""
    if distributed.world()[1] == 1:
        return rows
    every = distributed.gather_objects(rows)
    if not distributed.is_main():
        return None
    return [row for _, merged in merge_parts([(f"rank {k}", part) for k, part in enumerate(every)]) for row in merged]


def gather_batches(part, jobs: int, batch_size: int, shard: tuple[int, int] | None):
    """Under torchrun: every rank's images of its batches (`part`, its owned batches concatenated) put back in
    batch order on rank 0 (None on the other ranks); `part` itself without a shard."""
    import torch

    if shard is None:
        return part
    every = distributed.gather_objects(part)
    if not distributed.is_main():
        return None
    placed = {}
    for rank, tensor in enumerate(every):
        starts = owned_batches(jobs, batch_size, (rank, shard[1]))
        sizes = [min(batch_size, jobs - lo) for lo in starts]
        for lo, piece in zip(starts, torch.split(tensor, sizes)):
            placed[lo] = piece
    return torch.cat([placed[lo] for lo in sorted(placed)])
