"""The first-hitting sampler: one pass per revealed token, at the exact time the next token is revealed."""
from __future__ import annotations

import torch
from torch import Tensor

from diffbench.discrete.contract import CountingDiscreteDenoiser, masked, sample_categorical
from diffbench.discrete.registry import register
from diffbench.noise import NoiseSource


@register("first_hitting", one_pass_per_token=True)
def first_hitting(denoiser: CountingDiscreteDenoiser, x: Tensor, times: Tensor, *, noise: NoiseSource,
                  precision: str = "float64") -> Tensor:
    """First-hitting sampler (Zheng et al. 2024, "Masked diffusion models are secretly time-agnostic...", alg. 1).

    With m tokens masked at time t, the next reveal happens at t * u^(1/m) (alpha(t) = 1 - t); one
    uniformly chosen masked position then takes a token from p_x0. Exact for exact conditionals;
    `times` only fixes the number of steps (L, one per token).
    """
    batch, length = x.shape
    rows = torch.arange(batch, device=x.device)
    t = torch.ones(batch, dtype=torch.float64, device=x.device)
    for k in range(len(times) - 1):
        t = t * noise.rand((1,))[:, 0] ** (1.0 / (length - k))  # First hitting time of the next reveal.
        p_x0 = denoiser(x, t)
        keys = torch.where(masked(x, denoiser.vocab), noise.rand((length,)), -1.0)
        position = keys.argmax(1)  # Uniform among the masked positions.
        x = x.clone()
        x[rows, position] = sample_categorical(p_x0[rows, position], noise.rand((denoiser.vocab,)), precision)
    return x
