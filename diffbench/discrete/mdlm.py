"""MDLM's ancestral sampler and its cached variant (Sahoo et al. 2024, `ddpm` and `ddpm_cache`)."""
from __future__ import annotations

import torch
from torch import Tensor

from diffbench.discrete._common import denoise_all, steps_of, unmask_step
from diffbench.discrete.contract import CountingDiscreteDenoiser
from diffbench.discrete.registry import register
from diffbench.noise import NoiseSource


@register("mdlm_ancestral")
def mdlm_ancestral(denoiser: CountingDiscreteDenoiser, x: Tensor, times: Tensor, *, noise: NoiseSource,
                   precision: str = "float64") -> Tensor:
    """MDLM ancestral sampling (Sahoo et al. 2024, "Simple and effective masked diffusion language models", ddpm).

    Under alpha(t) = 1 - t a masked token is revealed between t and s with probability (t - s) / t.
    """
    for t, s in steps_of(times):
        p_x0 = denoise_all(denoiser, x, t)
        x = unmask_step(x, p_x0, (t - s) / t, noise, precision)  # Ancestral step q(x_s | x_t, x_0 ~ p_x0).
    return x


@register("mdlm_ancestral_cache", adaptive=True)
def mdlm_ancestral_cache(denoiser: CountingDiscreteDenoiser, x: Tensor, times: Tensor, *, noise: NoiseSource,
                         precision: str = "float64") -> Tensor:
    """MDLM ancestral sampling with pass caching (Sahoo et al. 2024, ddpm_cache): same samples as ddpm, fewer passes.

    A row's pass is reused while its tokens are unchanged (exact for time-agnostic denoisers); the cache
    is per sample, not per batch as in MDLM's code, so passes counted per sample do not depend on the
    batch size. A row's NFE is 1 + the steps before the last one in which at least one of its tokens changed.
    """
    p_x0 = torch.empty(*x.shape, denoiser.vocab, dtype=torch.float64, device=x.device)
    stale = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for t, s in steps_of(times):
        rows = stale.nonzero().squeeze(1)
        if len(rows):  # Refresh the rows whose tokens changed in the previous step.
            p_x0[rows] = denoiser(x[rows], t.expand(len(rows)), rows)
        new = unmask_step(x, p_x0, (t - s) / t, noise, precision)
        stale, x = (new != x).any(1), new
    return x
