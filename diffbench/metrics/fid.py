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
two d x d x d products. Same values up to float64 rounding (tests/test_metrics.py checks it).
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from diffbench.errors import UsageError
from diffbench.metrics.stats import FeatureStats


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
        replicates), through the rows mapped once by ``root`` (module docstring); equal up to rounding."""
        rows = torch.as_tensor(rows, dtype=torch.float64, device=self.device)
        self._check(rows[0])
        mapped = rows @ self.root
        return np.array([self._resampled(rows, mapped, idx) for idx in draws])

    def _resampled(self, rows: Tensor, mapped: Tensor, idx: np.ndarray) -> float:
        """One replicate: the counts of idx weight its distinct rows (x and x R)."""
        n = len(idx)
        counts = np.bincount(idx, minlength=len(rows))
        distinct = torch.as_tensor(np.flatnonzero(counts), device=self.device)
        w = torch.as_tensor(counts[counts > 0], dtype=torch.float64, device=self.device)
        x, y = rows[distinct], mapped[distinct]
        mean = (w @ x) / n
        scale = (w / (n - 1)).sqrt()[:, None]
        xc, yc = (x - mean) * scale, (y - mean @ self.root) * scale
        gram = yc @ yc.T if len(yc) <= yc.shape[1] else yc.T @ yc
        return self._combine(mean, (xc * xc).sum(), _trace_sqrt_eig(gram))

    def distance_to(self, stats: FeatureStats) -> float:
        """Frechet distance of FeatureStats to this target (the row path when it is cheaper)."""
        if stats.features is not None and stats.n <= stats.dim:
            return self.distance_to_rows(stats.features)
        return self.distance(stats.mean, stats.cov)


def _trace_sqrt_eig(m: Tensor) -> Tensor:
    """sum_i sqrt(lambda_i(m)) of a symmetric PSD matrix (symmetrised; rounding negatives set to 0)."""
    return torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()


def frechet_distance(a: FeatureStats, b: FeatureStats, device: torch.device | str = "cpu") -> float:
    """FID / Frechet distance between two FeatureStats (b is the reference; symmetric up to rounding)."""
    return FrechetTarget.of(b, device).distance_to(a)
