"""EDM-family solvers on the probability-flow ODE in sigma (Karras et al. 2022)."""
from __future__ import annotations

from torch import Tensor

from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource
from diffbench.solvers._common import churn, churn_gamma, to_d
from diffbench.solvers.registry import last_step_single, per_step, register


@register("euler", order=1, nfe=per_step(1), stochastic="s_churn")
def euler(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
          s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0) -> Tensor:
    """Euler on dx/dsigma = (x - D) / sigma (EDM Alg. 2 without the Heun correction); = DDIM(eta=0)."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # Optional churn: add noise to move up to sigma_hat.
        x, sigma = churn(x, sigma, churn_gamma(sigma, n, s_churn, s_tmin, s_tmax), s_noise, noise)
        # Euler step.
        x = x + (sigma_next - sigma) * to_d(x, sigma, denoiser(x, sigma))
    return x


@register("heun", order=2, nfe=last_step_single(2), stochastic="s_churn")
def heun(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
         s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0) -> Tensor:
    """EDM's 2nd-order Heun sampler (Karras et al. 2022, Alg. 1/2); a step to sigma=0 is plain Euler."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # Optional churn (Alg. 2): raise the noise level to sigma_hat.
        x, sigma = churn(x, sigma, churn_gamma(sigma, n, s_churn, s_tmin, s_tmax), s_noise, noise)
        # Euler predictor.
        d = to_d(x, sigma, denoiser(x, sigma))
        x_next = x + (sigma_next - sigma) * d
        # Trapezoidal corrector, skipped on the final step to zero.
        if sigma_next > 0:
            d_next = to_d(x_next, sigma_next, denoiser(x_next, sigma_next))
            x_next = x + (sigma_next - sigma) * 0.5 * (d + d_next)
        x = x_next
    return x
