"""DDIM / DDPM / Euler-ancestral: one ancestral step family (Song et al. 2021a; Ho et al. 2020).

In EDM coordinates DDIM's eta-step from sigma to sigma' equals k-diffusion's ancestral step: a
deterministic move to sigma_down followed by fresh noise of std sigma_up, with
sigma_up = eta * sigma' * sqrt(1 - sigma'^2 / sigma^2). eta=0 is DDIM (= Euler), eta=1 is DDPM's
posterior variance (beta-tilde) and Euler-ancestral. The three names are variants of one function.
"""
from __future__ import annotations

from torch import Tensor

from diffbench.errors import check
from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource
from diffbench.solvers._common import ancestral_step
from diffbench.solvers.registry import register


@register("euler_ancestral", order=1, stochastic="eta", eta=1.0)
@register("ddpm", order=1, stochastic="eta", eta=1.0)
@register("ddim", order=1, stochastic="eta")
def ancestral(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
              eta: float = 0.0, s_noise: float = 1.0) -> Tensor:
    """DDIM (Song et al. 2021a, eq. 12) with stochasticity eta; eta=1 is DDPM ancestral sampling."""
    check(eta >= 0 and s_noise >= 0, f"solver.eta and solver.s_noise must be >= 0 (got {eta}, {s_noise})")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        # Deterministic DDIM move to sigma_down: keep the predicted noise direction.
        x = denoised + (sigma_down / sigma) * (x - denoised)
        # Fresh noise back up to sigma_next.
        if sigma_up > 0:
            if noise is None:
                raise ValueError("ddim with eta > 0 needs a NoiseSource")
            x = x + noise.randn_like(x) * s_noise * sigma_up
    return x
