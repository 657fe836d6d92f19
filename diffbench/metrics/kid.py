"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3.

Averaged over random subsets exactly as clean-fid's ``kernel_distance``: ``num_subsets`` draws of
m = min(n_1, n_2, max_subset_size) rows without replacement, the second set's rows drawn first,
from ``np.random.RandomState(seed)`` -- so with clean-fid's global seed set to the same value the
two agree draw for draw. The kernel sums run in float64 with torch (GPU when given).
"""
from __future__ import annotations

import numpy as np
import torch

from diffbench.errors import check


def _cubic(k: torch.Tensor) -> torch.Tensor:
    """k^3 by two multiplications (torch's float64 pow is ~15x slower on CPU)."""
    return k * k * k


def kid(feats1: np.ndarray, feats2: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000,
        seed: int = 0, device: torch.device | str = "cpu") -> tuple[float, float]:
    """KID between feature rows feats1 [n1, d] and feats2 [n2, d] -> (mean, std over subsets).

    clean-fid's argument order: ``kernel_distance(reference_feats, generated_feats)``.
    """
    check(num_subsets >= 1, f"metrics.kid_subsets must be >= 1 (got {num_subsets})")
    d = feats1.shape[1]
    m = min(len(feats1), len(feats2), max_subset_size)
    check(m >= 2, f"KID needs at least 2 samples in each set (got {len(feats1)} and {len(feats2)})")
    rng = np.random.RandomState(seed)
    f1 = torch.as_tensor(np.asarray(feats1), dtype=torch.float64, device=device)
    f2 = torch.as_tensor(np.asarray(feats2), dtype=torch.float64, device=device)
    values = []
    for _ in range(num_subsets):
        # Draw a subset of each set (the second first, as clean-fid).
        x = f2[torch.as_tensor(rng.choice(len(feats2), m, replace=False), device=f2.device)]
        y = f1[torch.as_tensor(rng.choice(len(feats1), m, replace=False), device=f1.device)]
        # Polynomial kernel sums: within-set off-diagonal terms, cross term in full.
        k_xx, k_yy, k_xy = (_cubic(x @ x.T / d + 1), _cubic(y @ y.T / d + 1), _cubic(x @ y.T / d + 1))
        within = k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()
        values.append(float(within / (m * (m - 1)) - 2 * k_xy.sum() / m**2))
    return float(np.mean(values)), float(np.std(values))
