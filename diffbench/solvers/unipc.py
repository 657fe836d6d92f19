"""UniPC, the unified predictor-corrector framework (Zhao et al. 2023), data-prediction form.

In EDM coordinates (alpha = 1, lambda = -log sigma, h = lambda' - lambda) one step from sigma to sigma'
with the history of data estimates D_0 (newest, at lambda) and D_k (at lambda_k = lambda + r_k h) is

    x' = (sigma'/sigma) x + (1 - sigma'/sigma) D_0 - B(h) sum_k a_k (D_k - D_0) / r_k,

UniP-p uses p - 1 past estimates; UniC-p adds the estimate at the predicted point (r = 1), which the
next step reuses, so the corrector costs no evaluation. B(h) = -h (bh1) or e^{-h} - 1 (bh2); the
weights a solve R a = g(h) / B(h) with R_ik = r_k^i, as in the reference code (which replaces the
1x1 systems by their h -> 0 limit 1/2, so B(h) matters only there).
"""
from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from diffbench.errors import check
from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource
from diffbench.solvers._common import afs_nfe, analytic_eps, lambdas
from diffbench.solvers.registry import register

B_FUNCTIONS = {"bh1": lambda hh: hh, "bh2": math.expm1}


def unipc_weights(rks: list[float], h: float, variant: str) -> tuple[float, list[float], list[float]]:
    """B(h) and the weights of the predictor (on the past r_k) and corrector (past r_k, then r = 1)."""
    hh, order = -h, len(rks) + 1
    b_h = B_FUNCTIONS[variant](hh)
    # g_i = i! (-h) phi_{i+1}(-h) / B(h): exponential integrals of the polynomial terms (phi recursion).
    g, h_phi, factorial = [], math.expm1(hh) / hh - 1, 1
    for i in range(1, order + 1):
        g.append(h_phi * factorial / b_h)
        factorial *= i + 1
        h_phi = h_phi / hh - 1 / factorial
    vander = np.array([[r ** i for r in [*rks, 1.0]] for i in range(order)])
    rhs = np.array(g)
    # The reference replaces the 1x1 systems (predictor p = 2, corrector p = 1) by their h -> 0 limit.
    predictor = np.linalg.solve(vander[:-1, :-1], rhs[:-1]).tolist() if order > 2 else [0.5] * (order - 1)
    corrector = np.linalg.solve(vander, rhs).tolist() if order > 1 else [0.5]
    return b_h, predictor, corrector


def _combine(weights: list[float], terms: list[Tensor], start: Tensor) -> Tensor:
    """start + sum_k weights[k] * terms[k]."""
    return sum((w * t for w, t in zip(weights, terms)), start=start)


def unipc_update(x: Tensor, sigma: float, sigma_next: float, history: list[tuple[float, Tensor]], variant: str,
                 d_next: Tensor | None = None) -> Tensor:
    """UniP-p step (d_next None) or UniC-p step (d_next: D at the predicted point) with p = len(history).

    history holds (lambda, D) pairs, newest last; the newest is at sigma.
    """
    lam, d_0 = history[-1]
    h = -math.log(sigma_next) - lam
    past = history[-2::-1]  # older estimates, newest first
    rks = [(lam_k - lam) / h for lam_k, _ in past]
    d1s = [(d_k - d_0) / r for r, (_, d_k) in zip(rks, past)]
    b_h, rho_p, rho_c = unipc_weights(rks, h, variant)
    # DDIM step (the first-order exponential integrator), then the B(h)-weighted differences.
    x_ddim = (sigma_next / sigma) * x + (1 - sigma_next / sigma) * d_0
    if d_next is None:
        return x_ddim - b_h * _combine(rho_p, d1s, 0 * x)
    return x_ddim - b_h * _combine(rho_c[:-1], d1s, rho_c[-1] * (d_next - d_0))


@register("unipc_bh2_afs", order=1, nfe=afs_nfe, min_steps=2, afs=True)
@register("unipc_bh1_afs", order=1, nfe=afs_nfe, min_steps=2, variant="bh1", afs=True)
@register("unipc_bh2", order=3, nfe=afs_nfe)
@register("unipc_bh1", order=3, nfe=afs_nfe, variant="bh1")
@register("unipc_bh2_o2", order=3, nfe=afs_nfe, max_order=2)
@register("unipc_bh1_o2", order=3, nfe=afs_nfe, max_order=2, variant="bh1")
@register("unipc_bh2_o1", order=2, nfe=afs_nfe, max_order=1)
@register("unipc_bh1_o1", order=2, nfe=afs_nfe, max_order=1, variant="bh1")
def unipc(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
          max_order: int = 3, variant: str = "bh2", corrector: bool = True, lower_order_final: bool = True,
          afs: bool = False) -> Tensor:
    """UniPC-p (Zhao et al. 2023), multistep: UniP-p predictor + UniC-p corrector on the data prediction.

    The corrector raises UniP-p's order by one and is skipped on the last step (no evaluation there).
    A step to sigma = 0 is the first-order limit x = D. lower_order_final=True (the reference's default)
    lowers the order near the end (min(p, steps left)). Registered orders: p + 1 for p = 1, 2; for
    p = 3 the warm-up step (UniP-1 + UniC-1, local error O(h^3)) bounds the global order at 3 without
    lower_order_final (slopes 3.3-4.4); with it, the slope is erratic below ~48 steps and tends to 2
    (2.06 bh1, 2.12 bh2 over 64..256 steps on the contract Gaussian). afs=True (`*_afs`) starts from
    AMED's analytic estimate instead of an evaluation;
    its O(h) error makes the global order 1 on an exact model.
    """
    check(max_order in (1, 2, 3), f"solver.max_order must be 1, 2 or 3 (got {max_order})")
    check(variant in B_FUNCTIONS, f"solver.variant must be one of {sorted(B_FUNCTIONS)} (got {variant!r})")
    lams, n = lambdas(sigmas), len(sigmas) - 1
    sigma = float(sigmas[0])
    # Data estimate at sigma_max: analytic with AFS, else one model call.
    denoised = x - sigma * analytic_eps(x, sigma) if afs else denoiser(x, sigma)
    history = [(lams[0], denoised)]  # (lambda, D), newest last, at most max_order
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        if sigma_next == 0:
            # First-order limit on a step to sigma = 0 (always the last): the data estimate itself.
            x = history[-1][1]
            break
        order = min(len(history), n - i) if lower_order_final else len(history)
        # UniP predictor.
        x_pred = unipc_update(x, sigma, sigma_next, history[-order:], variant)
        if i == n - 1:
            x = x_pred  # the last step makes no evaluation, so it has no corrector
            break
        # One evaluation at the predicted point: the corrector's input and the next step's history.
        d_next = denoiser(x_pred, sigma_next)
        # UniC corrector.
        x = unipc_update(x, sigma, sigma_next, history[-order:], variant, d_next) if corrector else x_pred
        history = (history + [(lams[i + 1], d_next)])[-max_order:]
    return x
