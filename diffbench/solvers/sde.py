"""Reverse-time SDE solvers in sigma (Song et al. 2021b, score SDE)."""
from __future__ import annotations

import math

from torch import Tensor

from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource
from diffbench.solvers._common import to_d
from diffbench.solvers.registry import register


@register("euler_maruyama", order=1, stochastic=True)
def euler_maruyama(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None) -> Tensor:
    """Euler-Maruyama on the reverse SDE dx = -2 sigma score dsigma + sqrt(2 sigma) dW (Song et al. 2021b).

    The final step to sigma=0 returns the denoiser's estimate (the usual 'denoise at the end').
    """
    if noise is None:
        raise ValueError("euler_maruyama needs a NoiseSource")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            return denoised
        # Drift twice the ODE's, plus diffusion with variance 2 sigma |dsigma|.
        dsigma = sigma_next - sigma
        x = x + 2 * dsigma * to_d(x, sigma, denoised) + math.sqrt(-2 * sigma * dsigma) * noise.randn_like(x)
    return x
