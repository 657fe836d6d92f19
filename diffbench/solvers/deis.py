"""DEIS, the diffusion exponential integrator sampler (Zhang & Chen 2023): tAB, rhoAB (= LMS) and rhoRK.

In EDM coordinates the exponential integrator's linear part is exact and the ODE reads
dx = eps(x, sigma) dsigma. tAB fits a Lagrange polynomial through the last k noise estimates in the
model's own time t and integrates it exactly against dsigma:

    x_{i+1} = x_i + sum_j C_ij eps_{i-j},  C_ij = int_{sigma_i}^{sigma_{i+1}} l_j(t(s)) ds.

The time t is that of a VP-SDE with linear beta through (t = 1e-3, sigma = 0.002) and (t = 1,
sigma = 80), as the reference implementation for EDM-coordinate models (zju-pi/diff-sampler) maps
sigma to DEIS's time; the solver thus depends on the sigma grid alone, whatever the model's schedule.
The coefficients are computed numerically, by Gauss-Legendre quadrature in sigma (the substitution
dsigma = sigma'(t) dt removes the schedule derivative; the reference sums 10^4 rectangles in t).
"""
from __future__ import annotations

import math

import numpy as np
from numpy.polynomial import Polynomial
from torch import Tensor

from diffbench.errors import check
from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource
from diffbench.solvers._common import afs_nfe, analytic_eps, to_d
from diffbench.solvers.registry import last_step_single, register

QUADRATURE_POINTS = 16
# VP-linear time: sigma^2 + 1 = exp(beta_min t + beta_d t^2 / 2) through (T_EPS, SIGMA_LO) and (1, SIGMA_HI).
T_EPS, SIGMA_LO, SIGMA_HI = 1e-3, 0.002, 80.0
BETA_D = 2 * (math.log1p(SIGMA_LO**2) / T_EPS - math.log1p(SIGMA_HI**2)) / (T_EPS - 1)
BETA_MIN = math.log1p(SIGMA_HI**2) - BETA_D / 2


def deis_time(sigma: np.ndarray) -> np.ndarray:
    """DEIS's time t(sigma) (the inverse of the VP-linear sigma(t) above)."""
    return (np.sqrt(BETA_MIN**2 + 2 * BETA_D * np.log1p(sigma**2)) - BETA_MIN) / BETA_D


def tab_coefficients(sigma: float, sigma_next: float, nodes: list[float]) -> list[float]:
    """C_j = int_sigma^sigma_next l_j(t(s)) ds for the Lagrange basis l_j on the times of `nodes` (sigmas)."""
    times = deis_time(np.asarray(nodes, dtype=np.float64))
    xi, w = np.polynomial.legendre.leggauss(QUADRATURE_POINTS)
    half = (sigma_next - sigma) / 2
    t_q = deis_time(sigma + half * (xi + 1))
    coeffs = []
    for j, t_j in enumerate(times):
        basis = np.prod([(t_q - t_k) / (t_j - t_k) for k, t_k in enumerate(times) if k != j], axis=0)
        coeffs.append(float(half * np.sum(w * basis)))
    return coeffs


@register("deis_3_afs", order=1, nfe=afs_nfe, min_steps=2, afs=True)
@register("deis_3", order=3, nfe=afs_nfe)
@register("deis_2", order=2, nfe=afs_nfe, max_order=2)
@register("deis_1", order=1, nfe=afs_nfe, max_order=1)
def deis(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
         max_order: int = 3, afs: bool = False) -> Tensor:
    """DEIS tAB (Zhang & Chen 2023): exponential integrator with eps extrapolated in time t, k points.

    One evaluation per step; the order rises with the history (tAB-1 = DDIM first). deis_k uses k
    points (DEIS's tAB with a degree k-1 polynomial). The DDIM start's O(h^2) error bounds the
    asymptotic order at 2: deis_3's fitted slope is 2.7 on the 8..32-step convergence grid and falls
    to 2 beyond ~500 steps. afs=True (`deis_3_afs`) replaces the first evaluation by AMED's analytic
    estimate, whose O(h) error makes the global order 1 on an exact model.
    """
    check(max_order in (1, 2, 3, 4), f"solver.max_order must be 1, 2, 3 or 4 (got {max_order})")
    history: list[tuple[float, Tensor]] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # Noise estimate: analytic at the first step with AFS, else one model call.
        eps = analytic_eps(x, sigma) if afs and i == 0 else to_d(x, sigma, denoiser(x, sigma))
        history = ([(sigma, eps)] + history)[:max_order]
        # Integrate the Lagrange extrapolation of eps (newest first) over [sigma, sigma_next].
        coeffs = tab_coefficients(sigma, sigma_next, [s for s, _ in history])
        x = x + sum(c * e for c, (_, e) in zip(coeffs, history))
    return x


def rhoab_coefficients(sigma: float, sigma_next: float, nodes: list[float]) -> list[float]:
    """C_j = int_sigma^sigma_next l_j(s) ds for the Lagrange basis l_j on `nodes` (sigmas), integrated exactly."""
    coeffs = []
    for j, s_j in enumerate(nodes):
        others = [s for k, s in enumerate(nodes) if k != j]
        basis = math.prod((Polynomial([-s, 1.0]) / (s_j - s) for s in others), start=Polynomial([1.0]))
        antiderivative = basis.integ()
        coeffs.append(float(antiderivative(sigma_next) - antiderivative(sigma)))
    return coeffs


@register("lms", order=3, max_order=4)
@register("deis_rhoab_3", order=2)
def deis_rhoab(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
               max_order: int = 3) -> Tensor:
    """DEIS rhoAB (Zhang & Chen 2023): Adams-Bashforth on eps in rho = sigma, Lagrange-integrated exactly.

    The Lagrange polynomial through the last k noise estimates, in sigma itself, is integrated over
    each step: this is k-diffusion's `sample_lms` (linear multistep, registered as `lms` with its
    default of 4 points). One evaluation per step, the order rising with the history (Euler first),
    whose O(h^2) first step bounds the asymptotic order at 2 (beyond these windows); fitted slopes on the Gaussian
    convergence grid over 8..32 / 16..64 / 64..256 steps: deis_rhoab_3 2.28 / 2.59 / 2.79 (registered
    2), lms 2.72 / 3.18 / 2.94 (registered 3, as deis_3).
    """
    check(max_order in (1, 2, 3, 4), f"solver.max_order must be 1, 2, 3 or 4 (got {max_order})")
    history: list[tuple[float, Tensor]] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # Noise estimate (the ODE's slope dx/dsigma) from one model call.
        history = ([(sigma, to_d(x, sigma, denoiser(x, sigma)))] + history)[:max_order]
        # Integrate the Lagrange extrapolation of eps in sigma (newest first) over [sigma, sigma_next].
        coeffs = rhoab_coefficients(sigma, sigma_next, [s for s, _ in history])
        x = x + sum(c * e for c, (_, e) in zip(coeffs, history))
    return x


# The classic fourth-order Runge-Kutta tableau: stage coefficients (nodes c = row sums) and weights.
RK4_A: list[list[float]] = [[], [1 / 2], [0.0, 1 / 2], [0.0, 0.0, 1.0]]
RK4_B: list[float] = [1 / 6, 1 / 3, 1 / 3, 1 / 6]


@register("deis_rhork_4", order=4, nfe=last_step_single(4))
def deis_rhork(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None) -> Tensor:
    """DEIS rhoRK (Zhang & Chen 2023): the classic RK4 on dx/drho = eps with rho = sigma, four evaluations per step.

    rhoRK-2 is EDM's Heun (`heun`). A step to sigma = 0 is the Euler step, x' = D (one evaluation):
    the later stages would need the model at sigma = 0. (Kutta's third order, rhoRK-3, is not registered:
    its fitted slope on the 8..32-step convergence grid is 2.17, reaching 3 only past ~64 steps.)
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        if sigma_next == 0:
            # Euler step to zero: the denoised estimate.
            x = denoiser(x, sigma)
            continue
        h = sigma_next - sigma
        slopes: list[Tensor] = []
        for row in RK4_A:
            # Stage: eps at sigma + c h from the weighted earlier slopes.
            x_stage = x + h * sum(w * k for w, k in zip(row, slopes)) if row else x
            level = sigma + h * sum(row)
            slopes.append(to_d(x_stage, level, denoiser(x_stage, level)))
        x = x + h * sum(w * k for w, k in zip(RK4_B, slopes))
    return x
