"""Frechet distance between Gaussian fits of two feature sets (FID: Heusel et al. 2017).

    d^2 = |mu_1 - mu_2|^2 + tr(C_1) + tr(C_2) - 2 tr sqrt(C_1 C_2)

clean-fid computes tr sqrt(C_1 C_2) with scipy.linalg.sqrtm on the non-symmetric product (about
18 s for d=2048 on 2 CPU cores). Here it is the same quantity from two symmetric eigen-solves:
C_1 C_2 is similar to S C_2 S with S = C_1^{1/2}, a PSD matrix, so tr sqrt(C_1 C_2) =
sum_i sqrt(lambda_i(S C_2 S)). It is exact for singular covariances (n < d) and about 10x faster;
the parity test checks it against clean-fid's ``frechet_distance``. S is cached per target so
that bootstrap replicates against a fixed reference cost one matmul pair and one eigvalsh.
When the n feature rows of one side are at hand and n <= d (a few hundred samples against 2048-d
Inception features), C_2 = B^T B with B the centred rows / sqrt(n - 1), and the nonzero
eigenvalues of C_1 C_2 are those of the n x n matrix B C_1 B^T: O(n d^2 + n^3), no d x d solve.

Bootstrap replicates (``resampled_distances``): with the reference factored once as C_1 = R R^T
(R = V diag(sqrt(w)) from its eigh), the eigenvalues of C_1 C_2 are those of R^T C_2 R = Y^T Y with
Y = B R. Mapping the rows once to x R, a replicate needs only the weighted Gram matrix of its distinct
rows (the draw's counts as weights; ~63% of the rows are distinct) and one eigvalsh: per replicate
O(u d min(u, d)) + eig(min(u, d)) for u distinct rows, instead of a gather, an O(n d^2) covariance and
two d x d x d products. Same values up to float64 rounding (tests/test_fd_bootstrap.py checks it).
The replicates run in batched chunks (one gather, one bmm and one batched eigvalsh per chunk, rows padded
with zero weights to the largest distinct count), and small batches on one CPU thread (SERIAL_FLOPS):
the per-replicate loop with torch's default 2 threads took 27-41 s for 20 replicates at d = 224, n = 1024
on the busy 2-core machine, this 1.0-1.3 s (one thread: 1.1-1.3 s either way).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from diffbench.errors import UsageError
from diffbench.metrics.stats import FeatureStats

CHUNK_BYTES = 2**27  # float64 working set of one batched chunk of bootstrap replicates (128 MiB)
# Below this many flops a replicate batch runs on one CPU thread: measured on the shared 2-core machine, 10
# replicates at d = 4 took 0.5-1.7 s with torch's 2 threads (each tiny matmul waiting ~20 ms for the second,
# descheduled thread) vs 0.002 s with one; at d = 2048 the matrices are large enough to keep every thread.
SERIAL_FLOPS = 2e9


class FrechetTarget:
    """A fixed Gaussian (mean, cov) to measure Frechet distances to; caches cov^{1/2}."""

    def __init__(self, mean: np.ndarray | Tensor, cov: np.ndarray | Tensor, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.mean = torch.as_tensor(mean, dtype=torch.float64, device=self.device)
        self.cov = torch.as_tensor(cov, dtype=torch.float64, device=self.device)
        self.trace = float(torch.trace(self.cov))

    @cached_property
    def _eigh(self) -> tuple[Tensor, Tensor]:
        """(eigenvalues, eigenvectors) of cov, negative rounding-error eigenvalues set to 0."""
        w, v = torch.linalg.eigh(self.cov)
        return w.clamp(min=0), v

    @cached_property
    def root(self) -> Tensor:
        """R = V diag(sqrt(w)), a factor with cov = R R^T (the bootstrap maps rows through it)."""
        w, v = self._eigh
        return v * w.sqrt()

    @cached_property
    def sqrt(self) -> Tensor:
        """cov^{1/2} = R V^T, computed on first use (the row path never needs it)."""
        return self.root @ self._eigh[1].T

    @classmethod
    def of(cls, stats: FeatureStats, device: torch.device | str = "cpu") -> FrechetTarget:
        return cls(stats.mean, stats.cov, device)

    def _check(self, mean: Tensor) -> None:
        if mean.shape != self.mean.shape:
            raise UsageError(f"feature dimensions differ: {tuple(mean.shape)} vs the reference's "
                             f"{tuple(self.mean.shape)} (statistics from different extractors?)")

    def _combine(self, mean: Tensor, trace: Tensor, tr_sqrt: Tensor) -> float:
        diff = mean - self.mean
        return float(diff @ diff + trace + self.trace - 2 * tr_sqrt)

    def distance(self, mean: np.ndarray | Tensor, cov: np.ndarray | Tensor) -> float:
        """Squared Frechet distance from N(mean, cov) to this target."""
        mean = torch.as_tensor(mean, dtype=torch.float64, device=self.device)
        cov = torch.as_tensor(cov, dtype=torch.float64, device=self.device)
        self._check(mean)
        m = self.sqrt @ cov @ self.sqrt
        return self._combine(mean, torch.trace(cov), _trace_sqrt_eig(m))

    def distance_to_rows(self, rows: np.ndarray | Tensor) -> float:
        """Frechet distance of the Gaussian fit (mean, unbiased cov) of feature rows [n, d]."""
        rows = torch.as_tensor(rows, dtype=torch.float64, device=self.device)
        mean = rows.mean(0)
        self._check(mean)
        b = (rows - mean) / (len(rows) - 1) ** 0.5
        if len(rows) > len(mean):
            return self.distance(mean, b.T @ b)
        # Low-rank path: tr sqrt(C_ref B^T B) = sum sqrt(eig(B C_ref B^T)).
        return self._combine(mean, (b * b).sum(), _trace_sqrt_eig(b @ self.cov @ b.T))

    def resampled_distances(self, rows: np.ndarray | Tensor, draws: Sequence[np.ndarray]) -> np.ndarray:
        """float64 [len(draws)]: distance_to_rows(rows[idx]) for each index array idx (bootstrap
        replicates), through the rows mapped once by ``root``, in batched chunks (module docstring)."""
        rows = torch.as_tensor(rows, dtype=torch.float64, device=self.device)
        self._check(rows[0])
        counts = torch.as_tensor(np.stack([np.bincount(i, minlength=len(rows)) for i in draws]),
                                 dtype=torch.float64, device=self.device)
        distinct = int((counts > 0).sum(1).max())
        side = min(distinct, rows.shape[1])
        flops = len(draws) * distinct * rows.shape[1] * side + len(rows) * rows.shape[1] ** 2
        with _threads_for(flops, self.device):
            centre = rows.mean(0)
            x = rows - centre  # centred once: the replicates' moments without cancellation
            mapped = x @ self.root
            n = counts.sum(1)
            mean = counts @ x / n[:, None]
            trace = (counts @ (x * x).sum(1) - n * (mean * mean).sum(1)) / (n - 1)
            diff = mean + centre - self.mean
            per = 3 * 8 * distinct * (rows.shape[1] + side)  # bytes of one replicate's gathered rows and Gram
            chunk = max(1, CHUNK_BYTES // per)
            tr_sqrt = torch.cat([_resampled_trace_sqrt(mapped, counts[i:i + chunk], distinct)
                                 for i in range(0, len(draws), chunk)])
            return ((diff * diff).sum(1) + trace + self.trace - 2 * tr_sqrt).cpu().numpy()

    def distance_to(self, stats: FeatureStats) -> float:
        """Frechet distance of FeatureStats to this target (the row path when it is cheaper)."""
        if stats.features is not None and stats.n <= stats.dim:
            return self.distance_to_rows(stats.features)
        return self.distance(stats.mean, stats.cov)


def _trace_sqrt_eig(m: Tensor) -> Tensor:
    """sum_i sqrt(lambda_i(m)) of symmetric PSD matrices [..., k, k] (symmetrised; rounding negatives set to 0)."""
    return torch.linalg.eigvalsh((m + m.mT) / 2).clamp(min=0).sqrt().sum(-1)


def _resampled_trace_sqrt(mapped: Tensor, counts: Tensor, distinct: int) -> Tensor:
    """tr sqrt(C_ref C_b) of replicates b (counts [b, n]): each one's distinct rows of x R, weighted by their
    counts and padded with zero-weight rows to `distinct`, give its Gram matrix; one batched eigvalsh."""
    n = counts.sum(1)
    idx = torch.argsort((counts > 0).to(torch.int8), dim=1, descending=True, stable=True)[:, :distinct]
    w = counts.gather(1, idx)
    y = mapped[idx] - (counts @ mapped / n[:, None])[:, None]
    y = y * (w / (n - 1)[:, None]).sqrt()[:, :, None]
    return _trace_sqrt_eig(y @ y.mT if distinct <= y.shape[2] else y.mT @ y)


@contextmanager
def _threads_for(flops: float, device: torch.device) -> Iterator[None]:
    """One intra-op CPU thread for work under SERIAL_FLOPS: on a busy machine each parallel region waits for
    a descheduled worker thread (milliseconds), more than such small matrices take to compute."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or flops >= SERIAL_FLOPS:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def frechet_distance(a: FeatureStats, b: FeatureStats, device: torch.device | str = "cpu") -> float:
    """FID / Frechet distance between two FeatureStats (b is the reference; symmetric up to rounding)."""
    return FrechetTarget.of(b, device).distance_to(a)
