"""k-diffusion's sampling module alone, and a random float64 network: references for solver parity tests.

k-diffusion's package __init__ imports training dependencies; its sampling module needs only torch,
scipy, torchsde and torchdiffeq, so it is loaded under a bare parent package.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from types import ModuleType

import pytest
import torch
from torch import Tensor

from diffbench.models.base import Denoiser
from diffbench.schedules import EDM


def k_sampling() -> ModuleType:
    """k_diffusion.sampling without k_diffusion/__init__.py; skips the test where k-diffusion is not installed."""
    if "k_diffusion" not in sys.modules:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1)")
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = package
    return importlib.import_module("k_diffusion.sampling")


class RandomNetDenoiser(Denoiser):
    """A fixed random two-layer network D(x, sigma) in float64: nonlinear in x and sigma, cheap, deterministic."""

    dtype = torch.float64
    schedule = EDM()

    def __init__(self, dim: int, seed: int = 0, hidden: int = 16):
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(dim + 1, hidden, generator=g, dtype=torch.float64) / dim**0.5
        self.w2 = torch.randn(hidden, dim, generator=g, dtype=torch.float64) / hidden**0.5

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        s = sigma.reshape(-1, 1).expand(len(x), 1).to(x)
        h = torch.tanh(torch.cat([x / (1 + s**2).sqrt(), s.log()], dim=1) @ self.w1)
        return h @ self.w2
