"""Stochastic-interpolant sampling with a tunable diffusion coefficient eps(t) (Albergo, Boffi & Vanden-Eijnden 2023).

For the interpolant x_t = alpha(t) x0 + sigma(t) z of the model's own schedule (the linear one of flow models:
schedule rectified_flow), every SDE dX = (b + eps(t) s) dt' + sqrt(2 eps(t)) dW (t' = -t: from noise to data)
has the interpolant's marginals, whatever eps(t) >= 0 (the eps s drift cancels the eps Laplacian in the
Fokker-Planck equation). b and s come from the denoiser in closed form: with x0 = D(x / alpha, sigma / alpha) and
z = (x - alpha x0) / sigma, the velocity is d alpha/dt x0 + d sigma/dt z and the score -z / sigma. eps = 0 is the
probability-flow ODE (Euler in t).
"""
from __future__ import annotations

import math

from torch import Tensor

from diffbench.errors import check
from diffbench.models import Denoiser
from diffbench.models.base import schedule_derivatives
from diffbench.noise import NoiseSource
from diffbench.solvers.registry import register


@register("si_euler_maruyama", order=1, stochastic="eps", eps=1.0)
def si_euler_maruyama(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
                      eps: float = 1.0) -> Tensor:
    """Stochastic interpolants (Albergo, Boffi & Vanden-Eijnden 2023, "Stochastic Interpolants: A Unifying Framework
    for Flows and Diffusions", Sec. 2.2): Euler-Maruyama on the generative SDE with eps(t) = eps * sigma(t).

    eps(t) vanishes with the schedule's noise coefficient sigma(t), so the SDE turns deterministic at the data;
    the last step (to sigma 0) adds no noise. Steps are taken in the schedule's own time t and coordinates.
    """
    check(eps >= 0, f"solver.eps must be >= 0 (got {eps})")
    schedule = denoiser.schedule
    times = schedule.sigma_to_t(sigmas.double())
    for i in range(len(sigmas) - 1):
        t, t_next = times[i], times[i + 1]
        alpha, alpha_next = float(schedule.alpha(t)), float(schedule.alpha(t_next))
        sigma = alpha * float(sigmas[i])  # the schedule's own noise coefficient
        d_alpha, d_sigma = (float(v) for v in schedule_derivatives(schedule, t))
        x0 = denoiser(x, float(sigmas[i]))
        z = (x - x0) * (alpha / sigma)  # (x_t - alpha x0) / sigma with x_t = alpha x
        drift = -(d_alpha * x0 + d_sigma * z) - eps * z  # -velocity + eps(t) * score (= -eps sigma z / sigma)
        h = float(t - t_next)
        x_t = alpha * x + h * drift
        if eps > 0 and float(sigmas[i + 1]) > 0:
            assert noise is not None  # a stochastic solver is always given its noise source
            x_t = x_t + math.sqrt(2 * eps * sigma * h) * noise.randn_like(x)
        x = x_t / alpha_next
    return x

