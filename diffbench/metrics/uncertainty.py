"""Uncertainty of sample-based metrics: bootstrap intervals and paired (common-noise) differences.

Method: the nonparametric bootstrap over generated samples (Efron 1979). The n generated rows
(features, or per-sample errors) are resampled with replacement ``n_boot`` times and the metric is
recomputed on each replicate against the *fixed* reference (its own sampling noise is not
included). FD is a biased statistic and resampling shifts it further (duplicated rows change the
covariance spectrum; the shift can go either way), so the interval is the replicates' spread
recentred on the estimate: estimate + [q_lo - mean, q_hi - mean], q the (1 -+ level)/2 quantiles
of the replicates (for unbiased per-sample means this is the plain percentile interval). ``std`` is
the replicates' standard deviation. Read it as the sampling spread of the finite-n estimate;
compare points at equal n.

Paired differences (common random numbers): sample i of solver A and of solver B start from the
same noise (diffbench.noise), so one resampled index set is applied to both and the interval is of
metric(A*) - metric(B*); the shared per-sample variation cancels and the interval is much tighter
than two independent ones. It excludes 0 when the difference is resolved at this n.

Cost: with n <= d rows (e.g. 512 samples, 2048-d Inception) one FD replicate is O(n d^2 + n^3)
(fid.py's row path: ~0.1-0.3 s on 2 CPU cores); with n > d it is the covariance of the resampled
rows, O(n d^2), plus one d x d eigvalsh, O(d^3) (the reference's square root is computed once):
for d = 2048 about 1-3 s on 2 CPU cores and ~20 ms on a GPU, so n_boot = 200 takes minutes on a
CPU; random_conv (d = 224) is far cheaper.
A KID replicate costs num_subsets * m^2 * d; per-sample metrics (solver error, LPIPS) cost O(n).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from diffbench.errors import check
from diffbench.metrics.fid import FrechetTarget
from diffbench.metrics.kid import kid


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    std: float
    n_boot: int
    level: float

    def fields(self, name: str) -> dict[str, float]:
        """Result-row columns: name, name_low, name_high, name_std."""
        return {name: self.estimate, f"{name}_low": self.low, f"{name}_high": self.high, f"{name}_std": self.std}


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, n_boot: int = 200, level: float = 0.95,
              seed: int = 0) -> Interval:
    """Bootstrap interval of statistic(indices) over n rows (recentred percentile; see the module docstring)."""
    check(n_boot >= 2, f"metrics.n_boot must be >= 2 for an interval (got {n_boot})")
    check(0 < level < 1, f"metrics.ci_level must be in (0, 1) (got {level})")
    rng = np.random.default_rng(seed)
    estimate = statistic(np.arange(n))
    replicates = np.array([statistic(rng.integers(0, n, n)) for _ in range(n_boot)])
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2]) + (estimate - replicates.mean())
    return Interval(float(estimate), float(low), float(high), float(replicates.std(ddof=1)), n_boot, level)


def _rows(features: np.ndarray, target: FrechetTarget) -> torch.Tensor:
    return torch.as_tensor(np.asarray(features), dtype=torch.float64, device=target.device)


def fd_interval(features: np.ndarray, target: FrechetTarget, n_boot: int = 200, level: float = 0.95,
                seed: int = 0) -> Interval:
    """Bootstrap interval of the Frechet distance of generated feature rows [n, d] to the reference."""
    rows = _rows(features, target)
    return bootstrap(lambda idx: target.distance_to_rows(rows[torch.as_tensor(idx, device=rows.device)]),
                     len(rows), n_boot, level, seed)


def paired_fd_difference(features_a: np.ndarray, features_b: np.ndarray, target: FrechetTarget,
                         n_boot: int = 200, level: float = 0.95, seed: int = 0) -> Interval:
    """FD(A) - FD(B) with a paired bootstrap interval; row i of A and B must share noise (same index)."""
    check(len(features_a) == len(features_b),
          f"paired comparison needs the same sample indices for both solvers "
          f"(got {len(features_a)} and {len(features_b)})")
    a, b = _rows(features_a, target), _rows(features_b, target)

    def difference(idx: np.ndarray) -> float:
        i = torch.as_tensor(idx, device=a.device)
        return target.distance_to_rows(a[i]) - target.distance_to_rows(b[i])

    return bootstrap(difference, len(a), n_boot, level, seed)


def kid_interval(ref_features: np.ndarray, features: np.ndarray, n_boot: int = 50, level: float = 0.95,
                 seed: int = 0, num_subsets: int = 100, max_subset_size: int = 1000,
                 device: torch.device | str = "cpu") -> Interval:
    """Bootstrap interval of KID over the generated rows (the reference rows stay fixed)."""
    rows = np.asarray(features)
    return bootstrap(lambda idx: kid(ref_features, rows[idx], num_subsets, max_subset_size, seed, device)[0],
                     len(rows), n_boot, level, seed)


def paired_mean_difference(values_a: np.ndarray, values_b: np.ndarray, n_boot: int = 1000, level: float = 0.95,
                           seed: int = 0) -> Interval:
    """mean(A) - mean(B) of a per-sample metric (squared error, LPIPS) with a paired bootstrap interval."""
    check(len(values_a) == len(values_b),
          f"paired comparison needs the same sample indices for both solvers (got {len(values_a)} and {len(values_b)})")
    diff = np.asarray(values_a, dtype=np.float64) - np.asarray(values_b, dtype=np.float64)
    return bootstrap(lambda idx: float(diff[idx].mean()), len(diff), n_boot, level, seed)
