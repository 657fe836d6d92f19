"""High-accuracy reference solutions of the probability-flow ODE through torchdiffeq."""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchdiffeq import odeint

from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource
from diffbench.solvers.registry import register


@register("rk45", order=5, nfe=None)
def rk45(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
         rtol: float = 1e-5, atol: float = 1e-5) -> Tensor:
    """Adaptive Dormand-Prince RK45 (torchdiffeq 'dopri5') on dx/dlog(sigma) = x - D(x, sigma).

    Integrates from the grid's first to its last nonzero sigma; a grid ending at 0 then takes
    x0_hat = D(x, sigma_min). Rejected steps are evaluations too: the counting wrapper sees them all.
    """
    levels = sigmas[sigmas > 0]
    lo, hi = math.log(float(levels[-1])), math.log(float(levels[0]))

    def rhs(log_sigma: Tensor, y: Tensor) -> Tensor:
        return y - denoiser(y, float(log_sigma.exp()))

    span = torch.tensor([hi, lo], dtype=torch.float64, device=x.device)
    x = odeint(rhs, x, span.to(x.dtype), method="dopri5", rtol=rtol, atol=atol)[-1]
    return denoiser(x, float(levels[-1])) if float(sigmas[-1]) == 0 else x
