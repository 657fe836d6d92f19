"""Common random numbers: sample i's noise is a pure function of (seed, i, draw number, element).

A counter-based generator (splitmix64 hashing + Box-Muller, vectorised in torch) makes sample i the
same whatever the batch size, GPU count or sharding, costs one tensor op per draw instead of one
generator call per sample, and gives every solver run with the same seed the same initial noise
(paired comparisons). Draw 0 is the initial noise; SDE solvers' draws follow in order.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_GOLDEN = 0x9E3779B97F4A7C15
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 torch stores (two's complement)."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix64(z: Tensor) -> Tensor:
    """splitmix64's finaliser: a bijective, well-avalanching hash of int64 values (wrapping arithmetic)."""
    z = z + _signed(_GOLDEN)
    z = (z ^ _shr(z, 30)) * _signed(_M1)
    z = (z ^ _shr(z, 27)) * _signed(_M2)
    return z ^ _shr(z, 31)


def _uniform(z: Tensor) -> Tensor:
    """Top 53 bits of a hash as a float64 uniform in (0, 1)."""
    return (_shr(z, 11).double() + 0.5) * 2.0**-53


class NoiseSource:
    """Standard normal noise for one batch of sample indices, reproducible per index."""

    def __init__(self, seed: int, indices: Sequence[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        index = torch.as_tensor(list(indices), dtype=torch.int64, device=self.device)
        self._keys = mix64(mix64(torch.full_like(index, int(seed))) ^ index)
        self.draws = 0

    def _bits(self, count: int) -> Tensor:
        """The next draw's `count` hashes per row [B, count]; row b depends only on (seed, index b, draw number)."""
        key = mix64(self._keys ^ mix64(torch.tensor(self.draws, dtype=torch.int64, device=self.device)))
        self.draws += 1
        counter = torch.arange(count, dtype=torch.int64, device=self.device)
        return mix64(key[:, None] ^ mix64(counter)[None, :])

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """Noise of shape [B, *shape]; row b depends only on (seed, index b, draw number)."""
        n = math.prod(shape)
        bits = self._bits(2 * n)
        u1, u2 = _uniform(bits[:, :n]), _uniform(bits[:, n:])
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
        return z.to(torch.float32).reshape(len(self._keys), *shape).to(dtype)

    def randn_like(self, x: Tensor) -> Tensor:
        """Standard normal noise shaped like x (batch-first), in x's dtype."""
        return self.randn(x.shape[1:], x.dtype)

    def rand(self, shape: Sequence[int]) -> Tensor:
        """Float64 uniforms in (0, 1) of shape [B, *shape] (53 random bits each), reproducible per index."""
        return _uniform(self._bits(math.prod(shape))).reshape(len(self._keys), *shape)
