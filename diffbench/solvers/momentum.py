"""Momentum samplers (Wizadwongsa et al. 2023, "Diffusion Sampling with Momentum for Mitigating
Divergence Artifacts"): heavy-ball (HB) and generalized heavy-ball (GHVB) averaging of the update
direction, which widens a multistep method's stability region at the cost of accuracy.

beta=1 switches momentum off (the plain method). For beta<1 the paper proves HB first-order
convergent; GHVB keeps the Adams-Bashforth order of its `order` on uniform steps.
"""
from __future__ import annotations

import math

from torch import Tensor

from diffbench.errors import check
from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource
from diffbench.solvers._common import to_d
from diffbench.solvers.registry import register

# GHVB's Adams-Bashforth-like weights on the velocity history, newest first (the paper's AdamBmixer):
# weight_j = (a_j + b_j * beta) / (den * beta); beta=1 gives the classical AB coefficients.
_GHVB: dict[int, tuple[int, tuple[tuple[int, int], ...]]] = {
    1: (1, ((0, 1),)),
    2: (2, ((2, 1), (-2, 1))),
    3: (12, ((18, 5), (-24, 8), (6, -1))),
    4: (24, ((46, 9), (-78, 19), (42, -5), (-10, 1))),
    5: (720, ((1650, 251), (-3420, 646), (2880, -264), (-1380, 106), (270, -19))),
}


def ghvb_combine(history: list[Tensor], order: int, beta: float) -> Tensor:
    """GHVB's combination of the last min(order, len) velocities (history oldest first)."""
    k = min(order, len(history))
    den, weights = _GHVB[k]
    terms = [(a + b * beta) / (den * beta) * v for (a, b), v in zip(weights, history[::-1])]
    return sum(terms[1:], terms[0])


def _check_beta(beta: float) -> None:
    check(0 < beta <= 1, f"solver.beta must lie in (0, 1] (got {beta}); beta=1 is the plain method")


@register("dpmpp_2m_hb", order=1, beta=0.8)
def dpmpp_2m_hb(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
                beta: float = 0.8) -> Tensor:
    """DPM-Solver++(2M) with heavy-ball momentum (Wizadwongsa et al. 2023, Sec. 4.1; beta=1: plain 2M).

    As in the paper's code, the first (first-order) step carries no momentum; from the second step
    the 2M data estimate D0 + (D0 - D1) h / (2 h_last) is averaged, v <- (1 - beta) v + beta D.
    A final step to sigma=0 returns the denoiser's estimate. Order 1 for beta < 1 (the paper's
    theorem; fitted slope 0.87 on the contract test's grid at beta=0.8, 0.75 at beta=0.5).
    """
    _check_beta(beta)
    old = vel = None
    h_last = 0.0
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            # Data-prediction limit of the last step.
            x = denoised
            break
        h = math.log(sigma / sigma_next)
        direction = denoised
        if old is not None:
            # Second-order multistep estimate, then heavy-ball averaging.
            direction = denoised + (denoised - old) * (h / (2 * h_last))
            vel = direction if vel is None else (1 - beta) * vel + beta * direction
            direction = vel
        # Exponential-integrator step (DDIM form).
        x = (sigma_next / sigma) * x - math.expm1(-h) * direction
        old, h_last = denoised, h
    return x


@register("plms_ghvb", order=2, beta=0.8)
def plms_ghvb(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
              order: int = 2, beta: float = 0.8) -> Tensor:
    """GHVB on PLMS (Wizadwongsa et al. 2023, Sec. 4.2): Adams-Bashforth on heavy-ball-averaged eps.

    eps = (x - D) / sigma; v <- (1 - beta) v + beta eps; x += dsigma * sum_j w_j(beta) v_j with
    lower orders while the history fills (PLMS without the pseudo-RK warm-up). beta=1 is PLMS.
    """
    _check_beta(beta)
    check(order in _GHVB, f"solver.order must be one of {sorted(_GHVB)} (got {order})")
    history: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        eps = to_d(x, sigma, denoiser(x, sigma))
        # Heavy-ball average of eps (the first velocity is eps itself).
        vel = eps if not history else (1 - beta) * history[-1] + beta * eps
        history = (history + [vel])[-order:]
        # Adams-Bashforth step on the velocity history with GHVB's weights.
        x = x + (sigma_next - sigma) * ghvb_combine(history, order, beta)
    return x
