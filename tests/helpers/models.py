"""Test-only denoisers with exact answers."""
from __future__ import annotations

import torch
from torch import Tensor

from diffbench.models.base import Denoiser
from diffbench.schedules import EDM


class AnalyticFirstDenoiser(Denoiser):
    """A model whose noise estimate is exactly AMED's analytic one, eps = x / sqrt(sigma^2 + 1)."""

    dtype = torch.float64
    schedule = EDM()

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return x - s * x / (s**2 + 1).sqrt()
