"""Tau-leaping for the reverse continuous-time Markov chain of absorbing diffusion."""
from __future__ import annotations

import math

from torch import Tensor

from diffbench.discrete._common import denoise_all, steps_of, unmask_step
from diffbench.discrete.contract import CountingDiscreteDenoiser
from diffbench.discrete.registry import register
from diffbench.noise import NoiseSource


@register("tau_leaping")
def tau_leaping(denoiser: CountingDiscreteDenoiser, x: Tensor, times: Tensor, *, noise: NoiseSource,
                precision: str = "float64") -> Tensor:
    """Tau-leaping (Campbell et al. 2022, "A continuous time framework for discrete denoising models", sec. 4).

    The reverse rates out of MASK, p_x0(v) / t under alpha(t) = 1 - t, are held fixed over [s, t]: a
    masked position jumps at least once with probability 1 - exp(-(t - s) / t), its first jump to v ~ p_x0
    (it is absorbed there); the last step reveals every remaining token. (The Euler step 1 - s / t
    coincides with MDLM's ancestral step under this schedule, so it is not registered again.)
    """
    for t, s in steps_of(times):
        p_x0 = denoise_all(denoiser, x, t)
        move = 1.0 - math.exp(-float((t - s) / t)) if s > 0 else 1.0  # Leap with rates frozen at t.
        x = unmask_step(x, p_x0, move, noise, precision)
    return x
