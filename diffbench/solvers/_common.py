"""Maths shared by several solver families (never pasted into each)."""
from __future__ import annotations

import math

from torch import Tensor

from diffbench.noise import NoiseSource


def to_d(x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
    """The probability-flow ODE's derivative dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step into a deterministic part to sigma_down and fresh noise of std sigma_up.

    eta=1 is DDPM's posterior variance (DDIM with eta=1); eta=0 is deterministic DDIM.
    """
    if sigma_to == 0 or eta == 0:
        return sigma_to, 0.0
    up = eta * math.sqrt(max(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2, 0.0))
    up = min(up, sigma_to)
    return math.sqrt(sigma_to**2 - up**2), up


def churn(x: Tensor, sigma: float, gamma: float, s_noise: float, noise: NoiseSource | None) -> tuple[Tensor, float]:
    """EDM's stochastic churn (Karras et al. 2022, Alg. 2 lines 4-6): raise sigma to sigma*(1+gamma)."""
    if gamma <= 0:
        return x, sigma
    if noise is None:
        raise ValueError("a stochastic step needs a NoiseSource")
    sigma_hat = sigma * (1 + gamma)
    return x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * noise.randn_like(x), sigma_hat


def churn_gamma(sigma: float, steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """EDM's gamma_i = min(S_churn / N, sqrt(2) - 1) inside [S_tmin, S_tmax], else 0."""
    if s_churn <= 0 or not s_tmin <= sigma <= s_tmax:
        return 0.0
    return min(s_churn / steps, math.sqrt(2) - 1)


def lambdas(sigmas: Tensor) -> list[float]:
    """lambda = -log sigma per grid point (-inf never appears: a final 0 maps to +inf)."""
    return [math.inf if float(s) == 0 else -math.log(float(s)) for s in sigmas]


AFS_DATA_STD = 1.0  # the data scale AMED's reference code assumes (images in [-1, 1])


def analytic_eps(x: Tensor, sigma: float) -> Tensor:
    """AMED's analytical first step (Zhou et al. 2024, AFS): eps(x_T, sigma_max) ~ x_T / sqrt(sigma^2 + 1).

    At sigma_max the denoiser returns almost the data mean (~0), so the noise estimate is x_T scaled
    to unit variance; used in place of the first model evaluation, it saves one NFE.
    """
    return x / math.sqrt(sigma**2 + AFS_DATA_STD**2)


def afs_nfe(steps: int, final_zero: bool, afs: bool = False) -> int:
    """NFE rule of one-evaluation-per-step solvers with the `afs` option: AFS saves the first evaluation."""
    return steps - int(afs)
