"""Streaming feature statistics: float64 running mean/covariance batch by batch (no images kept).

Batches are combined with Chan et al.'s pairwise update (1979): each batch contributes its own
mean and centred scatter matrix, so the result does not depend on the batch size beyond float
rounding and two accumulators (e.g. one per GPU rank) merge exactly the same way.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffbench.errors import UsageError

Progress = Callable[[int, "int | None"], None]
"""Progress callback: progress(items_done, items_total_or_None); the CLI draws the bar."""


@dataclass
class FeatureStats:
    """Mean/covariance of n feature rows, the rows themselves when kept, and logits when available.

    Attributes:
        n: number of rows.
        mean: float64 [d].
        cov: float64 [d, d], unbiased (ddof=1, as np.cov).
        features: float32 [n, d] rows (for KID, precision/recall, bootstrap) or None.
        logits: float32 [n, classes] (Inception Score) or None.
        identity: the extractor's identity() (name, resize mode, weights, ...).
    """

    n: int
    mean: np.ndarray
    cov: np.ndarray
    features: np.ndarray | None = None
    logits: np.ndarray | None = None
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def from_features(cls, features: np.ndarray | Tensor, logits: np.ndarray | Tensor | None = None,
                      identity: dict[str, Any] | None = None, keep: bool = True) -> FeatureStats:
        """Statistics of a whole [n, d] feature array at once."""
        acc = StreamingStats(keep_features=keep)
        logits = None if logits is None else torch.as_tensor(np.asarray(logits))
        acc.update(torch.as_tensor(np.asarray(features)), logits)
        return acc.finalize(identity)


class StreamingStats:
    """Accumulates feature batches into a float64 mean and scatter matrix (Chan's parallel update).

    Args:
        keep_features: also keep the rows (float32, on the CPU) for KID / precision-recall / bootstrap.
        device: where the float64 sums live (the extractor's device avoids copies).
    """

    def __init__(self, keep_features: bool = True, device: torch.device | str = "cpu"):
        self.keep_features, self.device = keep_features, torch.device(device)
        self.n = 0
        self.mean: Tensor | None = None
        self.scatter: Tensor | None = None
        self.rows: list[Tensor] = []
        self.logit_rows: list[Tensor] = []

    def update(self, features: Tensor, logits: Tensor | None = None) -> None:
        """Add a batch of feature rows [B, d] (and logits [B, classes] if the extractor has them)."""
        x = features.detach().to(self.device, torch.float64)
        if x.ndim != 2 or (self.mean is not None and x.shape[1] != self.mean.shape[0]):
            raise UsageError(f"feature batch has shape {tuple(x.shape)}; expected [B, {self._dim()}]")
        if not bool(torch.isfinite(x).all()):
            raise UsageError("features contain NaN or inf: the samples are not finite images")
        if len(x):
            mean_b = x.mean(0)
            centred = x - mean_b
            self._combine(len(x), mean_b, centred.T @ centred)
        if self.keep_features:
            self.rows.append(features.detach().float().cpu())
        if logits is not None:
            self.logit_rows.append(logits.detach().float().cpu())

    def _dim(self) -> str:
        return "d" if self.mean is None else str(self.mean.shape[0])

    def _combine(self, n_b: int, mean_b: Tensor, scatter_b: Tensor) -> None:
        """Chan et al.'s update: merge (n_b, mean_b, scatter_b) into the running (n, mean, scatter)."""
        if self.n == 0:
            self.n, self.mean, self.scatter = n_b, mean_b.clone(), scatter_b.clone()
            return
        assert self.mean is not None and self.scatter is not None  # set once n > 0
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.scatter = self.scatter + scatter_b + torch.outer(delta, delta) * (self.n * n_b / n)
        self.n = n

    def merge(self, other: StreamingStats) -> None:
        """Fold another accumulator in (e.g. another rank's); rows are appended after this one's."""
        if other.n:
            assert other.mean is not None and other.scatter is not None  # set once n > 0
            self._combine(other.n, other.mean.to(self.device), other.scatter.to(self.device))
        self.rows += other.rows
        self.logit_rows += other.logit_rows

    def finalize(self, identity: dict[str, Any] | None = None) -> FeatureStats:
        """The FeatureStats of everything seen so far (needs at least 2 rows for a covariance)."""
        if self.n < 2:
            raise UsageError(f"need at least 2 samples for feature statistics (got {self.n})")
        assert self.mean is not None and self.scatter is not None  # set once n > 0
        cov = (self.scatter / (self.n - 1)).cpu().numpy()
        rows = torch.cat(self.rows).numpy() if self.keep_features else None
        logits = torch.cat(self.logit_rows).numpy() if self.logit_rows else None
        return FeatureStats(self.n, self.mean.cpu().numpy(), cov, rows, logits, dict(identity or {}))


def extract(images: Iterable[Tensor], extractor: Any, *, keep_features: bool = True,
            total: int | None = None, progress: Progress | None = None) -> FeatureStats:
    """Stream uint8 image batches [B, 3, H, W] through an extractor into FeatureStats.

    Args:
        images: any iterable of uint8 batches (a generator from the sampler, data.batches(...)).
        extractor: a FeatureExtractor (diffbench.metrics.features).
        keep_features: keep the feature rows (KID, precision/recall and bootstrap need them).
        total: number of images expected, passed to the progress callback.
        progress: called as progress(done, total) after every batch.
    """
    acc = StreamingStats(keep_features, extractor.device)
    for batch in images:
        out = extractor(batch)
        acc.update(out.features, out.logits)
        if progress is not None:
            progress(acc.n, total)
    return acc.finalize(extractor.identity())
