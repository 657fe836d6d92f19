"""Seconds per stage of a point's metric work (resize, features, statistics), without device-wide syncs.

On CUDA a stage is a pair of timing events recorded on the stream that runs it (the metric stream while
sampling goes on in the main thread), read once at the end of the point: the elapsed GPU time of that
stream's work, which a host timer cannot see and a `torch.cuda.synchronize()` per stage would stall. On a
CPU it is the host's perf_counter. Stages that overlap the sampling (CUDA) are not additive with it.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

STAGES = ("resize", "features", "statistics")  # the metric stages rows record, as time_<stage>_s


class StageClock:
    """Accumulates seconds per named stage on one device; `columns()` gives them as row columns."""

    def __init__(self, device: torch.device):
        self.device = device
        self._seconds: dict[str, float] = defaultdict(float)
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as `name` (CUDA: events on the current stream; CPU: wall clock)."""
        if self.device.type != "cuda":
            start = time.perf_counter()
            yield
            self._seconds[name] += time.perf_counter() - start
            return
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        yield
        end.record()
        self._events.append((name, begin, end))

    def seconds(self) -> dict[str, float]:
        """Seconds per stage so far (waits for the recorded CUDA events only, not the whole device)."""
        for name, begin, end in self._events:
            end.synchronize()
            self._seconds[name] += begin.elapsed_time(end) / 1000.0
        self._events.clear()
        return dict(self._seconds)

    def columns(self) -> dict[str, float]:
        """time_<stage>_s for every stage in STAGES (0.0 for a stage the point did not run)."""
        seconds = self.seconds()
        return {f"time_{name}_s": seconds.get(name, 0.0) for name in STAGES}


def timed(clock: StageClock | None, name: str) -> AbstractContextManager[None]:
    """`clock.stage(name)`, or nothing to time without a clock."""
    return clock.stage(name) if clock is not None else nullcontext()
