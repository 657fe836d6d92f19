"""The discrete denoiser contract: masked tokens and time -> per-position categorical probabilities.

Tokens are integers in [0, V); the MASK id is V. A denoiser maps tokens [B, L] and times t [B]
(t = 1 all masked, t = 0 clean; under the linear schedule alpha(t) = 1 - t a position is masked
with probability t) to float64 probabilities [B, L, V] of the clean token at each position, one-hot
at unmasked positions (MDLM's carry-over). One call is one forward pass: the counting wrapper
records passes per sample, so a pass run on only some rows (caching) costs only those rows.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from diffbench.errors import check

FLOAT32_BITS = 24  # torch.rand in float32 returns multiples of 2^-24


class DiscreteDenoiser(Protocol):
    """Clean-token probabilities [B, L, V] of masked tokens [B, L] (MASK = vocab) at times t [B]."""

    vocab: int
    length: int
    device: torch.device

    def __call__(self, tokens: Tensor, t: Tensor) -> Tensor: ...


class CountingDiscreteDenoiser:
    """Counts forward passes per sample: `counts[b]` is the passes row b of the batch took part in."""

    def __init__(self, model: DiscreteDenoiser, batch: int):
        self.model, self.vocab, self.length, self.device = model, model.vocab, model.length, model.device
        self.counts = torch.zeros(batch, dtype=torch.int64, device=model.device)

    @property
    def mask_id(self) -> int:
        return self.vocab

    def __call__(self, tokens: Tensor, t: Tensor, rows: Tensor | None = None) -> Tensor:
        """One pass over `tokens` (the batch's rows `rows`, all rows when None)."""
        self.counts[slice(None) if rows is None else rows] += 1
        probs = self.model(tokens, t)
        check(probs.shape == (*tokens.shape, self.vocab),
              f"the discrete denoiser returned shape {tuple(probs.shape)}; expected {(*tokens.shape, self.vocab)}")
        return probs

    @property
    def nfe_per_sample(self) -> float:
        """Mean passes per sample."""
        return float(self.counts.double().mean())


def sample_categorical(probs: Tensor, u: Tensor, precision: str) -> Tensor:
    """Categorical draws from (unnormalised) probs [..., K] by the Gumbel-max trick on uniforms u [..., K].

    As in MDLM's `_sample_categorical`: argmax p / E with E = 1e-10 - log(u + 1e-10). In float32 the
    uniform is rounded to 24 bits as torch.rand makes it, which truncates the Gumbel tail and so
    under-samples rare categories (Zheng et al. 2024, sec. 4); float64 keeps 53 bits.
    """
    dtype = torch.float32 if precision == "float32" else torch.float64
    if dtype == torch.float32:
        u = torch.floor(u * 2.0**FLOAT32_BITS) * 2.0**-FLOAT32_BITS
    exponential = 1e-10 - torch.log(u.to(dtype) + 1e-10)
    return (probs.to(dtype) / exponential).argmax(-1)


def masked(tokens: Tensor, vocab: int) -> Tensor:
    """Boolean [B, L]: which positions hold the MASK id."""
    return tokens == vocab


def all_masked(batch: int, length: int, vocab: int, device: torch.device) -> Tensor:
    """The starting sequences: every position MASK."""
    return torch.full((batch, length), vocab, dtype=torch.int64, device=device)


def time_grid(steps: int) -> Tensor:
    """Uniform grid in t from 1 (all masked) to 0 (clean), float64 [steps + 1]."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
