"""Ordered unmasking: each step drafts every masked token and keeps the most certain ones (LLaDA, Dream)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffbench.discrete._common import denoise_all
from diffbench.discrete.contract import CountingDiscreteDenoiser, masked, sample_categorical
from diffbench.discrete.registry import register
from diffbench.noise import NoiseSource

Score = Callable[[Tensor, Tensor], Tensor]  # (p_x0 [B, L, V], drafts [B, L]) -> certainty [B, L]


def transfer_counts(length: int, steps: int) -> list[int]:
    """Tokens revealed per step: L split as evenly as possible, earlier steps first (LLaDA's schedule)."""
    base, extra = divmod(length, steps)
    return [base + (k < extra) for k in range(steps)]


def unmask_ranked(denoiser: CountingDiscreteDenoiser, x: Tensor, times: Tensor, noise: NoiseSource,
                  precision: str, score: Score) -> Tensor:
    """Draft all masked tokens from p_x0, reveal the `count` with the highest score, remask the rest."""
    length = x.shape[1]
    for t, count in zip(times[:-1], transfer_counts(length, len(times) - 1)):
        p_x0 = denoise_all(denoiser, x, t)
        draft = sample_categorical(p_x0, noise.rand((length, denoiser.vocab)), precision)
        certainty = score(p_x0, draft).masked_fill(~masked(x, denoiser.vocab), -torch.inf)
        top = certainty.topk(count, dim=1).indices  # Keep the most certain drafts.
        x = x.scatter(1, top, draft.gather(1, top))
    return x


@register("llada_confidence", at_most_length=True)
def llada_confidence(denoiser: CountingDiscreteDenoiser, x: Tensor, times: Tensor, *, noise: NoiseSource,
                     precision: str = "float64") -> Tensor:
    """Low-confidence remasking (Nie et al. 2025, "Large language diffusion models", LLaDA): likeliest drafts first."""
    return unmask_ranked(denoiser, x, times, noise, precision,
                         lambda p, draft: p.gather(-1, draft[..., None])[..., 0])


@register("entropy_unmask", at_most_length=True)
def entropy_unmask(denoiser: CountingDiscreteDenoiser, x: Tensor, times: Tensor, *, noise: NoiseSource,
                   precision: str = "float64") -> Tensor:
    """Entropy-ordered unmasking (Ye et al. 2025, "Dream 7B", alg="entropy"): lowest-entropy positions first."""
    return unmask_ranked(denoiser, x, times, noise, precision,
                         lambda p, draft: (p * p.clamp_min(1e-300).log()).sum(-1))
