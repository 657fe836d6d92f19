"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes").

An EDM Heun pass on the given grid; on reaching the grid level nearest to t_min of a restart
interval [t_min, t_max], the sample jumps back up to t_max with fresh forward-process noise
(x += sqrt(t_max^2 - sigma_r^2) z, sigma_r that level) and is re-integrated with Heun on an
N_restart-point Karras grid back down to sigma_r, K times. Intervals are given as in the paper's
code (``--restart_info``): ``[N_restart, K, t_min, t_max]`` each, N_restart counting noise levels
(N_restart - 1 Heun steps).
Inside the restart passes the paper's code adds EDM churn of size ``restart_gamma`` on levels in
[s_tmin, s_tmax]; its defaults (0.05 on [0.01, 1]) are kept (gamma is capped at sqrt(2) - 1 as in
EDM's churn).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from diffbench.errors import UsageError, check
from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource
from diffbench.solvers.euler import heun
from diffbench.solvers.registry import register
from diffbench.steps import Span, karras

# The paper's README example for CIFAR-10 (EDM): one interval, 3 levels, K=2, [0.06, 0.30].
DEFAULT_RESTARTS: tuple[tuple[int, int, float, float], ...] = ((3, 2, 0.06, 0.30),)


def parse_restarts(restarts: Sequence[Sequence[float]]) -> list[tuple[int, int, float, float]]:
    """Validate ``[[N_restart, K, t_min, t_max], ...]`` into typed tuples (UsageError on bad input)."""
    out = []
    for entry in restarts:
        check(len(entry) == 4, f"solver.restarts: each interval is [N_restart, K, t_min, t_max] (got {list(entry)})")
        n_points, k, t_min, t_max = int(entry[0]), int(entry[1]), float(entry[2]), float(entry[3])
        check(n_points >= 2 and n_points == entry[0],
              f"solver.restarts: N_restart must be an integer >= 2 (got {entry[0]})")
        check(k >= 0 and k == entry[1], f"solver.restarts: K must be an integer >= 0 (got {entry[1]})")
        check(0 < t_min < t_max, f"solver.restarts: need 0 < t_min < t_max (got [{t_min}, {t_max}])")
        out.append((n_points, k, t_min, t_max))
    return out


def restart_nfe(steps: int, final_zero: bool, restarts: Sequence[Sequence[float]] = DEFAULT_RESTARTS) -> int:
    """The paper's count: Heun main pass (2n - 1 with a final step to 0) + sum_i K_i 2 (N_restart,i - 1).

    A restart from a final 0 (only on a one-step grid to zero) skips its last corrector: one less per pass.
    """
    from_zero = int(steps == 1 and final_zero)
    extra = sum(k * (2 * (n_points - 1) - from_zero) for n_points, k, _, _ in parse_restarts(restarts))
    return 2 * steps - int(final_zero) + extra


def restart_index(sigmas: Tensor, t_min: float, t_max: float) -> int:
    """The level nearest to t_min (as the paper's argmin) among those after the first, nonzero and below t_max.

    A one-step grid to zero has no such level: it restarts from the final 0, as the paper's code can.
    """
    levels = [(abs(float(s) - t_min), i) for i, s in enumerate(sigmas) if i > 0 and 0 < float(s) < t_max]
    if levels:
        return min(levels)[1]
    if len(sigmas) == 2 and float(sigmas[1]) == 0:
        return 1
    raise UsageError(f"solver.restarts: no grid level below t_max={t_max} to restart from; "
                     "raise t_max or lower the grid's sigma_min")


@register("restart", order=2, nfe=restart_nfe, stochastic=True)
def restart(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
            restarts: Sequence[tuple[int, int, float, float]] = DEFAULT_RESTARTS, restart_gamma: float = 0.05,
            s_tmin: float = 0.01, s_tmax: float = 1.0, s_noise: float = 1.0, rho: float = 7.0) -> Tensor:
    """Restart sampler (Xu et al. 2023; the authors' EDM code): Heun main pass + K noisy restarts per interval.

    Order 2 is the Heun main pass's; the restarts make it stochastic, so no ODE order applies.
    """
    if noise is None:
        raise ValueError("restart sampling needs a NoiseSource")
    check(restart_gamma >= 0, f"solver.restart_gamma must be >= 0 (got {restart_gamma})")
    plan = sorted((restart_index(sigmas, t_min, t_max), i, n_points, k, t_max)
                  for i, (n_points, k, t_min, t_max) in enumerate(parse_restarts(restarts)))
    start = 0
    for idx, _, n_points, k, t_max in plan:
        # Main Heun pass down to the interval's lower level.
        x = heun(denoiser, x, sigmas[start:idx + 1])
        start = idx
        inner = karras(n_points - 1, denoiser.schedule, Span(float(sigmas[idx]), t_max, False), rho=rho)
        hi, lo = float(inner[0]), float(inner[-1])
        for _ in range(k):
            # Restart forward process: jump from lo up to t_max with fresh noise.
            x = x + noise.randn_like(x) * math.sqrt(hi**2 - lo**2) * s_noise
            # Restart backward process: Heun back down, churn gamma = restart_gamma on [s_tmin, s_tmax].
            x = heun(denoiser, x, inner, noise=noise, s_churn=restart_gamma * (n_points - 1),
                     s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    # Rest of the main pass.
    return heun(denoiser, x, sigmas[start:])
