"""A rank's share of one sweep point, and the merge of all shares into what one process would measure.

Under torchrun each rank samples some batches of a point (diffbench.distributed.shard_indices) and
streams them into its own MetricSuite. Its Share records the sample indices in the order it saw
them, its timings, its first samples (for the sample grid) and a CPU copy of its metric state:
the float64 feature moments with the feature/logit rows (StreamingStats), the per-sample solver
errors and LPIPS scores. Rank 0 merges the shares: moments by Chan's parallel update (equal to one
process's up to float64 summation order), every per-sample array reordered by sample index, so
bootstraps, KID subsets and the grid see the samples in the order one process would.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor

from diffbench.batching import FEATURE_BATCH
from diffbench.distributed import rows_by_index
from diffbench.metrics import StreamingStats

if TYPE_CHECKING:
    from diffbench.metrics.suite import MetricSuite


@dataclass
class Share:
    """What one rank measured of a point (all of it on one process); picklable, on the CPU."""

    indices: list[int] = field(default_factory=list)
    nfe_total: float = 0.0  # evaluations summed over the samples (adaptive solvers differ per sample)
    network_total: float = 0.0  # network forward passes summed over the samples
    time_sampling_s: float = 0.0
    time_metrics_s: float = 0.0
    time_decode_s: float = 0.0  # latent models: the VAE decode of the samples
    reason: str | None = None
    failed_at: int | None = None  # first sample index of the batch that failed
    kept: list[tuple[list[int], Tensor]] = field(default_factory=list)
    stats: StreamingStats | None = None
    own: dict[str, StreamingStats] = field(default_factory=dict)  # text-to-image metrics' own features
    clip_scores: list[tuple[list[int], Tensor]] = field(default_factory=list)
    mse: np.ndarray | None = None
    lpips: np.ndarray | None = None
    correct: np.ndarray | None = None  # class_accuracy: each sample's prediction equals its label (empty: off)
    per_class: tuple[np.ndarray, np.ndarray] | None = None  # fd_per_class: (sample indices, feature rows)
    exact: tuple[np.ndarray, np.ndarray | None] | None = None  # exact metrics' (sample rows, reference rows)

    def add(self, indices: Sequence[int], x: Tensor, seconds: float, nfe_measured: float, keep: int,
            nfe_network: float | None = None) -> None:
        """Record one sampled batch (nfe_network None: one pass per call); keep its first samples up to `keep`."""
        self.indices += indices
        self.time_sampling_s += seconds
        self.nfe_total += nfe_measured * len(indices)
        self.network_total += (nfe_measured if nfe_network is None else nfe_network) * len(indices)
        room = keep - sum(len(idx) for idx, _ in self.kept)
        if room > 0:
            self.kept.append((list(indices[:room]), x[:room].cpu()))

    @property
    def nfe_measured(self) -> float | None:
        """Evaluations per sample, averaged over the samples (an integer for fixed-step solvers)."""
        return per_sample_nfe(self.nfe_total, len(self.indices))

    @property
    def nfe_network(self) -> float | None:
        """Network forward passes per sample, averaged over the samples."""
        return per_sample_nfe(self.network_total, len(self.indices))

    def fail(self, indices: Sequence[int], reason: str) -> None:
        self.reason, self.failed_at = reason, indices[0]

    def capture(self, suite: MetricSuite) -> Share:
        """Copy the suite's metric state to the CPU (once this rank's batches are all in)."""
        if suite.stats is not None:
            self.stats = cpu_copy(suite.stats)
        self.own = {metric: cpu_copy(own.stats) for metric, own in suite.text_image.own.items()}
        self.clip_scores = list(suite.text_image.clip_scores)
        self.mse = suite.error.per_sample_mse
        self.lpips = suite.lpips.per_sample if suite.lpips is not None else None
        self.correct = suite.accuracy.per_sample
        self.per_class = suite.per_class.state()
        self.exact = suite.exact.state()
        return self

    @property
    def grid(self) -> Tensor:
        """The kept samples in index order."""
        return rows_by_index(self.kept)


def cpu_copy(stats: StreamingStats) -> StreamingStats:
    """A CPU copy of streamed feature statistics (rows kept)."""
    copy = StreamingStats(keep_features=True)
    copy.merge(stats)
    return copy


def merge_shares(shares: Sequence[Share], suite: MetricSuite, keep: int, batch_size: int) -> Share:
    """The point's Share as one process would have it, loading the merged metric state into `suite`.

    A failure is the failed batch with the lowest first index: the one a single process meets
    first. Times are the slowest rank's (the ranks run side by side). Feature moments of several
    shares are recomputed from their rows in the order and chunks one process adds them
    (`replay`), so they equal one process's bit for bit, not only up to summation order.
    """
    slowest: dict[str, Any] = {"time_sampling_s": max(s.time_sampling_s for s in shares),
               "time_metrics_s": max(s.time_metrics_s for s in shares),
               "time_decode_s": max(s.time_decode_s for s in shares)}
    failed = [s for s in shares if s.reason is not None]
    if failed:
        first = min(failed, key=lambda s: cast(int, s.failed_at))
        return Share(list(first.indices), first.nfe_total, first.network_total, reason=first.reason,
                     failed_at=first.failed_at, **slowest)
    indices = [i for s in shares for i in s.indices]
    pieces = [piece for s in shares for piece in s.kept]
    grid = ([i for idx, _ in pieces for i in idx], rows_by_index(pieces))
    _load_state(shares, suite, indices, batch_size)
    return Share(sorted(indices), sum(s.nfe_total for s in shares), sum(s.network_total for s in shares),
                 kept=[(sorted(grid[0])[:keep], grid[1][:keep])], **slowest)


def per_sample_nfe(total: float, n: int) -> float | None:
    """Mean evaluations per sample; an integer when every sample made the same number (fixed-step solvers)."""
    if n == 0:
        return None
    mean = total / n
    return int(mean) if float(mean).is_integer() else mean


def _load_state(shares: Sequence[Share], suite: MetricSuite, indices: list[int], batch_size: int) -> None:
    """Set the suite's accumulators to the union of the shares', per-sample rows in index order."""
    order = torch.as_tensor(np.argsort(indices, kind="stable"))
    if suite.stats is not None:
        suite.stats = _merged([cast(StreamingStats, s.stats) for s in shares], order, batch_size, suite.stats.device)
    for metric, own in suite.text_image.own.items():
        own.stats = _merged([s.own[metric] for s in shares], order, batch_size, own.stats.device)
    suite.text_image.clip_scores = [piece for s in shares for piece in s.clip_scores]
    # The paired metrics compare exactly the samples 0..n-1 that have a reference solution.
    n_paired = sum(len(cast(np.ndarray, s.mse)) for s in shares)
    paired = np.argsort([i for i in indices if i < n_paired], kind="stable")
    suite.error.mse = [np.concatenate([s.mse for s in shares])[paired]]
    if suite.lpips is not None:
        suite.lpips.scores = [np.concatenate([s.lpips for s in shares])[paired]]
    hits = np.concatenate([s.correct for s in shares])  # empty while class_accuracy is off
    suite.accuracy.correct = [hits[order.numpy()] if len(hits) else hits]
    suite.per_class.load([s.per_class for s in shares if s.per_class is not None])
    suite.exact.load([(s.indices, *s.exact) for s in shares if s.exact is not None])


def _merged(stats: Sequence[StreamingStats], order: Tensor, batch_size: int, device: torch.device) -> StreamingStats:
    """The shares' streamed statistics as one process accumulates them (rows in sample-index order)."""
    if len(stats) == 1:
        return stats[0]
    rows = torch.cat([r for st in stats for r in st.rows])[order]
    logit_rows = [r for st in stats for r in st.logit_rows]
    return replay(rows, torch.cat(logit_rows)[order] if logit_rows else None, batch_size, device)


def replay(rows: Tensor, logits: Tensor | None, batch_size: int, device: torch.device) -> StreamingStats:
    """Feature rows (index order) accumulated as one process does: sampling batches, each in FEATURE_BATCH parts."""
    stats = StreamingStats(keep_features=True, device=device)
    for start in range(0, len(rows), batch_size):
        stop = min(start + batch_size, len(rows))
        for part in range(start, stop, FEATURE_BATCH):
            end = min(part + FEATURE_BATCH, stop)
            stats.update(rows[part:end], None if logits is None else logits[part:end])
    return stats
