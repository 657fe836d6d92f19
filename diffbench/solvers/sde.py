"""Reverse-time SDE solvers in sigma (Song et al. 2021b, score SDE)."""
from __future__ import annotations

import math

from torch import Tensor

from diffbench.errors import check
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


def _pc_nfe(steps: int, final_zero: bool, corrector_steps: int = 1) -> int:
    """One predictor evaluation and `corrector_steps` Langevin evaluations per step."""
    return steps * (1 + corrector_steps)


def langevin_step(denoiser: Denoiser, x: Tensor, sigma: float, snr: float, noise: NoiseSource) -> Tensor:
    """One Langevin MCMC step at level sigma (Song et al. 2021b, Alg. 4, VE): x + eps score + sqrt(2 eps) z.

    The paper sets eps = 2 (snr |z| / |score|)^2 from the sample's norms; at high noise |z| / |score|
    tends to sigma, and eps = 2 (snr sigma)^2 is used: a per-sample ratio is unstable in few
    dimensions (a near-zero |score| gives a huge step: std up to 4.6x the data's on 2-D Gaussian data at
    snr 0.16), and the reference code's batch average would tie a sample to its batch.
    """
    score = -to_d(x, sigma, denoiser(x, sigma)) / sigma
    eps = 2 * (snr * sigma) ** 2
    return x + eps * score + math.sqrt(2 * eps) * noise.randn_like(x)


@register("pc_langevin", order=1, nfe=_pc_nfe, stochastic=True)
def pc_langevin(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
                snr: float = 0.16, corrector_steps: int = 1) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021b, Alg. 2/4, VE): Langevin corrector, reverse-diffusion predictor.

    At each level sigma_i, `corrector_steps` Langevin steps whose size is set by the signal-to-noise
    ratio `snr` (0.16: the paper's VE CIFAR-10 value; see langevin_step), then the reverse-diffusion
    (ancestral) step x + (sigma^2 - sigma'^2) score + sqrt(sigma^2 - sigma'^2) z; a step to sigma' = 0
    returns its mean, D. corrector_steps=0 is the reverse-diffusion predictor alone.
    """
    check(snr > 0, f"solver.snr must be > 0 (got {snr})")
    check(isinstance(corrector_steps, int) and corrector_steps >= 0,
          f"solver.corrector_steps must be an integer >= 0 (got {corrector_steps})")
    if noise is None:
        raise ValueError("pc_langevin needs a NoiseSource")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # Corrector: Langevin MCMC at the current level.
        for _ in range(corrector_steps):
            x = langevin_step(denoiser, x, sigma, snr, noise)
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            return denoised
        # Predictor: reverse diffusion (the VE ancestral step).
        variance = sigma**2 - sigma_next**2
        x = x + variance * (denoised - x) / sigma**2 + math.sqrt(variance) * noise.randn_like(x)
    return x
