"""CMMD (Jayasumana et al. 2024, "Rethinking FID: Towards a Better Evaluation Metric for Image Generation").

The squared MMD between CLIP image embeddings (unit norm) of generated and reference images with a
Gaussian RBF kernel k(x, y) = exp(-|x - y|^2 / (2 sigma^2)), sigma = 10, times 1000, in the paper's
(and its reference code's) biased form: every pair, diagonals included,

    CMMD = 1000 * (mean k(x, x') + mean k(y, y') - 2 mean k(x, y)).

Kernel means are summed in float64 over row blocks, so 30k x 30k pairs need no 30k^2 matrix.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

SIGMA = 10.0
SCALE = 1000.0


def kernel_mean(x: Tensor, y: Tensor, sigma: float = SIGMA, block: int = 4096) -> float:
    """Mean of the Gaussian RBF kernel over all pairs (x_i, y_j), in float64 blocks of rows of x."""
    gamma = 1.0 / (2.0 * sigma * sigma)
    y_sq = (y * y).sum(1)
    total = 0.0
    for part in x.split(block):
        d2 = (part * part).sum(1)[:, None] + y_sq[None, :] - 2.0 * part @ y.T
        total += float(torch.exp(-gamma * d2.clamp(min=0)).sum())
    return total / (len(x) * len(y))


def cmmd(generated: np.ndarray | Tensor, reference: np.ndarray | Tensor, sigma: float = SIGMA,
         scale: float = SCALE, device: torch.device | str = "cpu") -> float:
    """CMMD of embedding rows [n, d] and [m, d] (biased squared MMD, RBF kernel, times `scale`)."""
    x = torch.as_tensor(generated, dtype=torch.float64, device=device)
    y = torch.as_tensor(reference, dtype=torch.float64, device=device)
    return scale * (kernel_mean(x, x, sigma) + kernel_mean(y, y, sigma) - 2.0 * kernel_mean(x, y, sigma))
