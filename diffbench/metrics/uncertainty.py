"""Uncertainty of sample-based metrics: bootstrap intervals and paired (common-noise) differences.

Method: the nonparametric bootstrap over generated samples (Efron 1979). The n generated rows
(features, or per-sample errors) are resampled with replacement ``n_boot`` times and the metric is
recomputed on each replicate. By default the reference is fixed (its own sampling noise is not
included); with ``include_reference`` (``metrics.ci_includes_reference``) the reference rows are
resampled too, independently, so the interval also covers the finite reference set. The interval
is the normal one from the replicates' spread, estimate +- z((1 + level)/2) * std (``std`` their
standard deviation): FD is biased and resampling shifts its mean, so only the spread is used.
Read it as the sampling spread of the finite-n estimate; compare points at equal n.
Distances (FD, KID) cannot be negative, so ``nonnegative`` clips bounds below 0 at 0 and
the Interval says so (``clipped``).

Width stability (measured with scripts/interval_width.py, results/intervals/interval_width.json:
FD of 128 random_conv feature rows vs 512 reference rows, 12 bootstrap seeds per n_boot): the
width's coefficient of variation run to run was 0.18 / 0.06 / 0.07 / 0.052 / 0.029 at n_boot =
20 / 50 / 100 / 200 / 400, as a standard deviation's 1 / sqrt(2 (n_boot - 1)) predicts
(0.16 / 0.10 / 0.07 / 0.050 / 0.035; each measured CV is itself +-20% with 12 seeds). A first
run with the former percentile interval (256 rows vs 1024) gave 0.24 / 0.14 / 0.12 at 20 / 50 /
100: it needs about three times the replicates for the same stability. So: n_boot >= 200 keeps the width within
~5%, n_boot = 400 within 3%; the default 20 varies by ~17%.

Paired differences (common random numbers): sample i of solver A and of solver B start from the
same noise (diffbench.noise), so one resampled index set is applied to both and the interval is of
metric(A*) - metric(B*); the shared per-sample variation cancels and the interval is much tighter
than two independent ones. It excludes 0 when the difference is resolved at this n.

Cost: against a fixed reference the replicates run through FrechetTarget.resampled_distances
(fid.py): the rows are mapped once by the reference's root factor (O(n d^2)), then a replicate with
u distinct rows (~0.63 n) costs a weighted Gram matrix, O(u d min(u, d)), and one eigvalsh of size
min(u, d) — no gather, covariance or d x d x d products per replicate (scripts/bench_inception.py
times both paths). With n > d the d x d eigvalsh dominates: for d = 2048 about 1 s on 2 CPU cores,
so n_boot = 200 takes minutes on a CPU; random_conv (d = 224) is far cheaper. Including the
reference keeps the direct path (the factor changes every replicate) and adds, per replicate, the
resampled reference's covariance, O(n_ref d^2), and (with n > d) one d x d eigh.
A KID replicate costs num_subsets * m^2 * d; per-sample metrics (solver error, LPIPS) cost O(n).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

from diffbench.errors import check
from diffbench.metrics.fid import FrechetTarget
from diffbench.metrics.kid import kid


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval (``clipped``: the lower bound was raised to 0)."""

    estimate: float
    low: float
    high: float
    std: float
    n_boot: int
    level: float
    clipped: bool = False

    def fields(self, name: str) -> dict[str, float]:
        """Result-row columns: name, name_low, name_high, name_std."""
        return {name: self.estimate, f"{name}_low": self.low, f"{name}_high": self.high, f"{name}_std": self.std}


def bootstrap(statistic: Callable[..., float], n: int, n_boot: int = 200, level: float = 0.95,
              seed: int = 0, nonnegative: bool = False, n_ref: int = 0) -> Interval:
    """Normal bootstrap interval of statistic(indices) over n rows (see the module docstring).

    With ``n_ref`` > 0 the statistic is statistic(indices, reference_indices) and the n_ref
    reference rows are resampled too, independently of the generated ones.
    """
    estimate = statistic(*(np.arange(m) for m in ([n, n_ref] if n_ref else [n])))
    return bootstrap_replicates(estimate, lambda draws: [statistic(*d) for d in draws], n, n_boot, level, seed,
                                nonnegative, n_ref)


def bootstrap_replicates(estimate: float,
                         replicates: Callable[[list[tuple[np.ndarray, ...]]], Sequence[float] | np.ndarray],
                         n: int, n_boot: int = 200, level: float = 0.95, seed: int = 0, nonnegative: bool = False,
                         n_ref: int = 0) -> Interval:
    """``bootstrap`` with all replicates computed in one call: replicates(draws) -> one value per draw,
    each draw (indices,) or (indices, reference_indices); the same draws as ``bootstrap`` for a seed."""
    check(n_boot >= 2, f"metrics.n_boot must be >= 2 for an interval (got {n_boot})")
    check(0 < level < 1, f"metrics.ci_level must be in (0, 1) (got {level})")
    rng = np.random.default_rng(seed)
    sides = [n, n_ref] if n_ref else [n]
    draws = [tuple(rng.integers(0, m, m) for m in sides) for _ in range(n_boot)]
    std = float(np.std(np.asarray(replicates(draws), dtype=np.float64), ddof=1))
    half = float(NormalDist().inv_cdf((1 + level) / 2)) * std
    low, high = estimate - half, estimate + half
    clipped = nonnegative and low < 0
    if clipped:  # a distance is >= 0: so are its bounds (an unbiased KID estimate itself may be < 0)
        low, high = 0.0, max(high, 0.0)
    return Interval(float(estimate), float(low), float(high), std, n_boot, level, clipped)


def _rows(features: np.ndarray, device: torch.device | str) -> torch.Tensor:
    return torch.as_tensor(np.asarray(features), dtype=torch.float64, device=device)


def fd_interval(features: np.ndarray, target: FrechetTarget, n_boot: int = 200, level: float = 0.95,
                seed: int = 0, ref_features: np.ndarray | None = None) -> Interval:
    """Interval of the Frechet distance of generated rows [n, d] to the reference (clipped at 0).

    With ``ref_features`` (the reference rows) each replicate also resamples the reference.
    """
    rows = _rows(features, target.device)
    if ref_features is None:
        return bootstrap_replicates(target.distance_to_rows(rows),
                                    lambda draws: target.resampled_distances(rows, [d[0] for d in draws]),
                                    len(rows), n_boot, level, seed, nonnegative=True)
    ref_rows = _rows(ref_features, target.device)

    def distance(idx: np.ndarray, ref_idx: np.ndarray) -> float:
        r = ref_rows[torch.as_tensor(ref_idx, device=ref_rows.device)]
        return FrechetTarget(r.mean(0), torch.cov(r.T), target.device).distance_to_rows(
            rows[torch.as_tensor(idx, device=rows.device)])

    return bootstrap(distance, len(rows), n_boot, level, seed, nonnegative=True, n_ref=len(ref_rows))


def paired_fd_difference(features_a: np.ndarray, features_b: np.ndarray, target: FrechetTarget,
                         n_boot: int = 200, level: float = 0.95, seed: int = 0) -> Interval:
    """FD(A) - FD(B) with a paired bootstrap interval; row i of A and B must share noise (same index)."""
    check(len(features_a) == len(features_b),
          f"paired comparison needs the same sample indices for both solvers "
          f"(got {len(features_a)} and {len(features_b)})")
    a, b = _rows(features_a, target.device), _rows(features_b, target.device)

    def differences(draws: list[tuple[np.ndarray, ...]]) -> np.ndarray:
        indices = [d[0] for d in draws]
        return target.resampled_distances(a, indices) - target.resampled_distances(b, indices)

    return bootstrap_replicates(target.distance_to_rows(a) - target.distance_to_rows(b), differences, len(a),
                                n_boot, level, seed)


def kid_interval(ref_features: np.ndarray, features: np.ndarray, n_boot: int = 50, level: float = 0.95,
                 seed: int = 0, num_subsets: int = 100, max_subset_size: int = 1000,
                 device: torch.device | str = "cpu", include_reference: bool = False) -> Interval:
    """Bootstrap interval of KID over the generated rows (and the reference rows with
    ``include_reference``); the lower bound is clipped at 0 (MMD^2 >= 0)."""
    rows, ref = np.asarray(features), np.asarray(ref_features)

    def statistic(idx: np.ndarray, ref_idx: np.ndarray | slice = slice(None)) -> float:
        return kid(ref[ref_idx], rows[idx], num_subsets, max_subset_size, seed, device)[0]

    return bootstrap(statistic, len(rows), n_boot, level, seed, nonnegative=True,
                     n_ref=len(ref) if include_reference else 0)


def paired_mean_difference(values_a: np.ndarray, values_b: np.ndarray, n_boot: int = 1000, level: float = 0.95,
                           seed: int = 0) -> Interval:
    """mean(A) - mean(B) of a per-sample metric (squared error, LPIPS) with a paired bootstrap interval."""
    check(len(values_a) == len(values_b),
          f"paired comparison needs the same sample indices for both solvers (got {len(values_a)} and {len(values_b)})")
    diff = np.asarray(values_a, dtype=np.float64) - np.asarray(values_b, dtype=np.float64)
    return bootstrap(lambda idx: float(diff[idx].mean()), len(diff), n_boot, level, seed)
