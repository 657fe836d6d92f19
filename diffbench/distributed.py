"""Data-parallel sweeps under torchrun: every rank samples a share of each point, rank 0 writes.

`torchrun --nproc_per_node=K -m diffbench.cli sweep ...` starts K processes with WORLD_SIZE, RANK
and LOCAL_RANK in their environment. Every rank expands the same grid and runs the same points;
a point's batches (the very batches one process would sample, so batch-coupled solvers such as
rk45 give the same samples) are dealt round-robin to the ranks, and rank 0 gathers what the ranks
measured (diffbench.engine.shares) and writes the row. Backend: nccl when the points run on CUDA (rank r
on cuda:LOCAL_RANK), gloo on the CPU. Without torchrun every helper here acts as for one process.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from diffbench.errors import UsageError, check

T = TypeVar("T")
# Rank 0 builds caches (reference statistics) alone while the other ranks wait at a barrier.
TIMEOUT = timedelta(hours=1)
# Testing multi-rank code on fewer GPUs: DIFFBENCH_SHARE_GPUS=1 puts rank r on cuda:(LOCAL_RANK mod GPUs);
# NCCL refuses two ranks on one GPU, so sharing needs DIFFBENCH_DIST_BACKEND=gloo (default nccl on CUDA).
SHARE_ENV, BACKEND_ENV = "DIFFBENCH_SHARE_GPUS", "DIFFBENCH_DIST_BACKEND"


def launched() -> bool:
    """Whether torchrun (or another launcher setting WORLD_SIZE) started this process."""
    return "WORLD_SIZE" in os.environ


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one process that writes rows, plots and reports and prints."""
    return rank() == 0


@contextmanager
def session(devices: Iterable[torch.device]) -> Iterator[None]:
    """Join torchrun's process group while a sweep runs on `devices` (nothing to do without torchrun)."""
    if not launched() or dist.is_initialized():
        yield
        return
    name = backend(set(devices))
    device_id = torch.device("cuda", torch.cuda.current_device()) if name == "nccl" else None
    dist.init_process_group(name, timeout=TIMEOUT, device_id=device_id)
    try:
        yield
    finally:
        dist.destroy_process_group()


def backend(devices: set[torch.device]) -> str:
    """nccl for CUDA points (selecting cuda:LOCAL_RANK), gloo for CPU points; UsageError otherwise."""
    kinds = sorted({d.type for d in devices})
    check(len(kinds) == 1, f"under torchrun all points run on one kind of device (got {', '.join(kinds)}); "
                           "give one device=...")
    if kinds == ["cpu"]:
        return "gloo"
    check(kinds == ["cuda"], f"torchrun sweeps run on cuda or cpu devices (got device={kinds[0]})")
    pinned = sorted({d.index for d in devices if d.index is not None})
    if pinned and world_size() > 1:
        raise UsageError(f"device=cuda:{pinned[0]} puts every rank on one GPU; under torchrun give device=cuda "
                         "(rank r then runs on cuda:LOCAL_RANK)")
    local, visible = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    share = os.environ.get(SHARE_ENV) == "1"
    check(local < visible or share, f"LOCAL_RANK={local} but {visible} CUDA devices are visible; "
                                    f"use --nproc_per_node={visible} or fewer")
    torch.cuda.set_device(local % visible)
    name = os.environ.get(BACKEND_ENV, "nccl")
    check(name in ("nccl", "gloo"), f"{BACKEND_ENV}={name}: use nccl or gloo")
    return name


def shard_indices(n: int, batch_size: int, rank_: int | None = None, world: int | None = None) -> list[int]:
    """This rank's sample indices of 0..n-1: batches formed as one process forms them, dealt round-robin.

    Ranks get whole batches (batch k goes to rank k mod world), so the batches are identical to a
    single process's and counts differ by at most one batch between ranks.
    """
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    check(batch_size >= 1, f"batch_size must be >= 1 (got {batch_size})")
    starts = range(rank_ * batch_size, n, world * batch_size)
    return [i for start in starts for i in range(start, min(start + batch_size, n))]


# Collectives: the identity for one process -------------------------------------------------------

def gather(obj: T) -> list[T] | None:
    """Every rank's obj in rank order on rank 0, None on the others."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather(obj: T) -> list[T]:
    """Every rank's obj in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: T) -> T:
    """Rank 0's obj on every rank (what the others pass is ignored)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (building caches), the other ranks after it (reading them)."""
    if not is_main():
        _barrier()
    yield
    if is_main():
        _barrier()


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def guarded(fn: Callable[[], T], errors: tuple[type[Exception], ...]) -> T | Exception:
    """fn()'s value, or the error (of `errors`) it raised: a failing rank must still join the next collective."""
    try:
        return fn()
    except errors as e:
        return e


def unwrap(items: Sequence[T | Exception]) -> list[T]:
    """Gathered guarded() results; raises the lowest rank's error when any rank failed."""
    for item in items:
        if isinstance(item, Exception):
            raise item
    return list(items)  # type: ignore[arg-type]


def rows_by_index(pieces: Iterable[tuple[Sequence[int], Tensor]]) -> Tensor:
    """(indices, rows) pieces from any ranks as one tensor ordered by sample index."""
    pieces = list(pieces)
    indices = torch.as_tensor([i for idx, _ in pieces for i in idx], dtype=torch.int64)
    return torch.cat([x for _, x in pieces])[indices.argsort(stable=True)]
