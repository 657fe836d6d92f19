"""Seconds spent warming up compiled graphs (the first call at each new input shape), counted per process.

Rows record the increase over a point (`time_warmup_s`): 0 when every graph the point needs was compiled by an
earlier point of the sweep (models and extractors are cached across points, and their compiled graphs with them).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_seconds = [0.0]


def total() -> float:
    """Warm-up seconds of this process so far."""
    return _seconds[0]


@contextmanager
def timed(device: torch.device) -> Iterator[None]:
    """Count the block's seconds as warm-up (a CUDA device is synchronised first, so its work is in them)."""
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    _seconds[0] += time.perf_counter() - start
