"""Batch sizes: `batch_size: auto`, and halving the batch when it runs out of memory.

A batch that raises torch.OutOfMemoryError is retried at half the size (the CUDA cache emptied
first); the smaller size is kept for the rest of the point. Noise depends only on (seed, sample
index), so samples do not change: bitwise for fixed-step solvers, to float rounding for the adaptive
ones (rk45, dpm_solver_adaptive), whose step sizes are controlled per sample.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar, cast

import torch

from diffbench.distributed import world_size
from diffbench.errors import UsageError, check

T = TypeVar("T")
AUTO_CUDA_START = 4096  # batch_size=auto on CUDA starts here (at most n_samples) and halves on OOM
AUTO_CPU = 256  # batch_size=auto on a CPU: memory is rarely the limit there, speed barely grows beyond
FEATURE_BATCH = 256  # images per feature-extractor call, whatever the sampling batch


def resolve_batch_size(value: object, n_samples: int, device: torch.device, world: int | None = None) -> int:
    """The configured batch_size: a positive integer, or auto (see AUTO_CUDA_START and AUTO_CPU), which under
    torchrun (`world` processes) also splits a point into at least `world` batches, so every rank gets work."""
    if value == "auto":
        per_rank = max(1, n_samples // (world_size() if world is None else world))  # floor: >= world batches
        return min(per_rank, AUTO_CUDA_START if device.type == "cuda" else AUTO_CPU)
    check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
          f"batch_size must be an integer >= 1 or auto (got {value!r})")
    return int(cast(int, value))


class BatchSizer:
    """Splits sample indices into batches, halving the batch size each time a batch runs out of memory."""

    def __init__(self, size: int, device: torch.device):
        self.size, self.device = size, device
        self.halvings = 0
        self.used = 0  # the largest batch that ran since the last halving

    def map(self, fn: Callable[[list[int]], T], indices: Sequence[int]) -> Iterator[tuple[list[int], T]]:
        """Yield (batch indices, fn(batch indices)) over consecutive batches of `indices`."""
        start = 0
        while start < len(indices):
            idx = list(indices[start:start + self.size])
            why = None
            try:
                out = fn(idx)
            except torch.OutOfMemoryError as e:
                why = str(e).splitlines()[0] if str(e) else "out of memory"
            if why is not None:  # outside the except block: the failed batch's tensors are released
                self._halve(why)
                continue
            self.used = max(self.used, len(idx))
            yield idx, out
            start += len(idx)

    def _halve(self, why: str) -> None:
        if self.size == 1:
            raise UsageError(f"out of memory on {self.device} even at batch size 1 ({why}); "
                             "the model does not fit: use a device with more memory or device=cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.size, self.halvings, self.used = max(1, self.size // 2), self.halvings + 1, 0

    def columns(self) -> dict[str, int]:
        """Row columns: the batch size the point ended with and how often it was halved."""
        return {"batch_size_used": self.used or self.size, "oom_halvings": self.halvings}
