"""Precision/recall (Kynkaanniemi et al. 2019) and density/coverage (Naeem et al. 2020) from k-NN balls.

Each real feature row gets the radius to its k-th nearest real neighbour (itself excluded), each
fake row the radius to its k-th nearest fake neighbour. Then
    precision = share of fakes inside some real ball,   recall = share of reals inside some fake ball,
    density   = (1 / kM) sum_fakes #(real balls containing it),
    coverage  = share of reals whose ball contains at least one fake.
Distances are Euclidean, computed in row chunks (memory O(chunk * n)), float64.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffbench.errors import check


def _chunks(n: int, size: int):
    return ((i, min(i + size, n)) for i in range(0, n, size))


def knn_radii(x: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Distance from each row of x to its k-th nearest other row of x."""
    radii = []
    for a, b in _chunks(len(x), chunk):
        # k + 1 smallest: the first is the row itself (distance 0).
        radii.append(torch.cdist(x[a:b], x).topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, chunk: int = 1024,
         device: torch.device | str = "cpu") -> dict[str, float]:
    """Precision, recall, density and coverage of fake rows [m, d] against real rows [n, d]."""
    check(k >= 1 and len(real) > k and len(fake) > k,
          f"precision/recall need more than k={k} samples per set (got {len(real)} real, {len(fake)} fake)")
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64, device=device)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float64, device=device)
    r_radii, f_radii = knn_radii(r, k, chunk), knn_radii(f, k, chunk)
    # Pass over fakes: how many real balls contain each fake.
    in_real = torch.cat([(torch.cdist(f[a:b], r) <= r_radii[None]).sum(1) for a, b in _chunks(len(f), chunk)])
    # Pass over reals: is each real inside some fake ball, and is its own ball hit by some fake.
    recall_hits, covered = [], []
    for a, b in _chunks(len(r), chunk):
        dist = torch.cdist(r[a:b], f)
        recall_hits.append((dist <= f_radii[None]).any(1))
        covered.append(dist.min(1).values <= r_radii[a:b])
    return {"precision": float((in_real > 0).double().mean()),
            "recall": float(torch.cat(recall_hits).double().mean()),
            "density": float(in_real.double().sum() / (k * len(f))),
            "coverage": float(torch.cat(covered).double().mean())}
