"""Feeds a point's sample batches to its metric suite, in order, optionally in a worker thread on its own stream."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from diffbench.metrics.suite import MetricSuite


class MetricFeed:
    """Feeds sample batches to a MetricSuite in order, on the samples' device (no host round trip).

    With background=True (CUDA) each update runs in a worker thread, so the work of batch k (x() first: a latent
    model's decode; CPU resize, Inception) overlaps the sampling of batch k+1; `seconds` sums the metric updates.
    With a CUDA `stream` (the one x() decodes on) the updates' kernels run on it, apart from the sampling's, and
    each update waits for its stream only: its seconds are its own, and its stages time only its kernels."""

    def __init__(self, suite: MetricSuite, solutions: Tensor | None, background: bool,
                 stream: torch.cuda.Stream | None = None):
        self.suite, self.solutions, self.seconds, self.stream = suite, solutions, 0.0, stream
        self.pool = ThreadPoolExecutor(max_workers=1) if background else None
        self.pending: Future[None] | None = None

    def __enter__(self) -> MetricFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown()
            if self.stream is not None:  # the metric state is read next on the current stream
                torch.cuda.current_stream(self.stream.device).wait_stream(self.stream)

    def submit(self, x: Tensor | Callable[[], Tensor | None], indices: Sequence[int]) -> None:
        """Wait for the previous batch's update, then start this one's (x: the batch, or what makes it, or None)."""
        self.wait()
        if self.pool is None:
            self._update(x, indices)
        else:
            self.pending = self.pool.submit(self._update, x, indices)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def _update(self, x: Tensor | Callable[[], Tensor | None], indices: Sequence[int]) -> None:
        if (batch := x() if callable(x) else x) is not None:
            start = time.perf_counter()
            if self.stream is None:
                self.suite.update(batch, indices, self.solutions)
            else:
                with torch.cuda.stream(self.stream):
                    self.suite.update(batch, indices, self.solutions)
                self.stream.synchronize()
            self.seconds += time.perf_counter() - start
