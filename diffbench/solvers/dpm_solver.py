"""DPM-Solver with noise prediction (Lu et al. 2022a), in EDM coordinates.

With lambda = -log sigma, h = lambda' - lambda and eps = (x - D(x, sigma)) / sigma, the exact
solution of the probability-flow ODE is x' = x - sigma' * int_0^h e^(h-u) eps(lambda + u) du; a
Taylor expansion of eps in lambda gives x' = x - sigma' sum_k h^(k+1) phi_{k+1}(h) eps^(k).
k = 0 is DDIM. A step to sigma' = 0 is the data-prediction limit x' = x - sigma eps = D: one
evaluation and no intermediate stage (the model is never called at 0).

Variants: singlestep DPM-Solver-1/2/3 (one grid step = one outer step), DPM-Solver-fast (grid steps
are evaluations, grouped into outer steps of order 3, 2, 1), multistep 2M/3M, and the adaptive solver.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from itertools import accumulate
from typing import Any

import torch
from torch import Tensor

from diffbench.errors import check
from diffbench.models.base import Denoiser, expand_as
from diffbench.noise import NoiseSource
from diffbench.solvers._common import d2_scale, multistep, phi, phi_tensor, taylor_terms, to_d
from diffbench.solvers._control import State, integrate, rms
from diffbench.solvers.registry import last_step_single, per_step, register

EpsFn = Callable[[Tensor, float], Tensor]


def noise_prediction_step(x: Tensor, sigma: float | Tensor, sigma_next: float | Tensor, terms: Sequence[Tensor],
                          midpoint: bool = False) -> Tensor:
    """DPM-Solver's step x' = x - sigma' sum_k h^(k+1) phi_{k+1}(h) eps^(k) (Lu et al. 2022a, Sec. 3).

    terms are the Taylor terms [eps, eps', ...] in lambda at sigma; sigma and sigma_next are floats, or per-sample
    tensors that broadcast against x (adaptive solvers' steps, never to sigma = 0).
    midpoint: the paper's second-order form, weight h * w_0 / 2 on eps' (DPM-Solver-2, Alg. 1).
    """
    if not isinstance(sigma_next, Tensor) and sigma_next == 0:
        return x - sigma * terms[0]
    per_sample = isinstance(sigma, Tensor) or isinstance(sigma_next, Tensor)
    h: Any = torch.log(torch.as_tensor(sigma / sigma_next)) if per_sample else math.log(sigma / sigma_next)
    phi_k: Callable[[int, Any], Any] = phi_tensor if per_sample else phi
    weights = [sigma_next * h ** (k + 1) * phi_k(k + 1, h) for k in range(len(terms))]
    if midpoint and len(terms) == 2:
        weights[1] = 0.5 * h * weights[0]
    return x - sum(w * t for w, t in zip(weights, terms))


def eps_model(denoiser: Denoiser) -> EpsFn:
    """The noise prediction eps(x, sigma) = (x - D(x, sigma)) / sigma."""
    return lambda x, sigma: to_d(x, sigma, denoiser(x, sigma))


def dpm_solver_step(eps_fn: EpsFn, x: Tensor, sigma: float, sigma_next: float, stages: Sequence[float],
                    eps: Tensor, taylor: bool = False) -> tuple[Tensor, Tensor]:
    """DPM-Solver-k from sigma to sigma' (k = len(stages) + 1; Lu et al. 2022a, Alg. 1-2) and its embedded
    DPM-Solver-(k-1) estimate, sharing evaluations (the adaptive solver's embedded pair).

    `eps` is eps(x, sigma); `stages` are the intermediate noise levels s1 (, s2). The paper's
    third-order update uses only s2's slope, exactly third order when lambda(s2) = lambda + 2h/3;
    taylor=True uses eps' and eps'' of the quadratic through all three (the reference code's
    solver_type='taylor'), third order for any stage levels.
    """
    if sigma_next == 0 or not stages:
        first = noise_prediction_step(x, sigma, sigma_next, [eps])
        return first, first
    lams = [-math.log(s) for s in (sigma, *stages)]
    # Stage 1: DPM-Solver-1 to s1, then the slope of eps between sigma and s1.
    eps1 = eps_fn(noise_prediction_step(x, sigma, stages[0], [eps]), stages[0])
    terms1 = taylor_terms(lams[:2], [eps, eps1])
    second = noise_prediction_step(x, sigma, sigma_next, terms1, midpoint=True)
    if len(stages) == 1:
        return noise_prediction_step(x, sigma, sigma_next, [eps]), second
    # Stage 2: second-order Taylor step to s2 with the stage-1 slope.
    eps2 = eps_fn(noise_prediction_step(x, sigma, stages[1], terms1), stages[1])
    # Third-order update: the paper's slope between sigma and s2, or the quadratic's Taylor terms.
    terms = taylor_terms(lams, [eps, eps1, eps2]) if taylor else taylor_terms(lams[::2], [eps, eps2])
    return second, noise_prediction_step(x, sigma, sigma_next, terms)


def singlestep(denoiser: Denoiser, x: Tensor, outer: Sequence[float], stages: Sequence[Sequence[float]],
               taylor: bool = False) -> Tensor:
    """Singlestep DPM-Solver over outer steps outer[i] -> outer[i+1] with intermediate levels stages[i]."""
    eps_fn = eps_model(denoiser)
    for sigma, sigma_next, inner in zip(outer[:-1], outer[1:], stages):
        x = dpm_solver_step(eps_fn, x, sigma, sigma_next, inner, eps_fn(x, sigma), taylor)[1]
    return x


def stage_levels(sigma: float, sigma_next: float, fractions: Sequence[float]) -> list[float]:
    """Intermediate noise levels at lambda + r h for r in `fractions` (none on a step to 0)."""
    return [sigma * (sigma_next / sigma) ** r for r in fractions] if sigma_next > 0 else []


def fixed_stages(sigmas: Tensor, fractions: Sequence[float]) -> tuple[list[float], list[list[float]]]:
    """The grid as outer steps, each with stages at the fixed fractions r of its lambda step."""
    outer = [float(s) for s in sigmas]
    return outer, [stage_levels(a, b, fractions) for a, b in zip(outer, outer[1:])]


@register("dpm_solver_3", order=3, nfe=last_step_single(3))
def dpm_solver_3(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None) -> Tensor:
    """DPM-Solver-3 (Lu et al. 2022a, Alg. 2; r1 = 1/3, r2 = 2/3): three evaluations per grid step."""
    return singlestep(denoiser, x, *fixed_stages(sigmas, (1 / 3, 2 / 3)))


@register("dpm_solver_2", order=2, nfe=last_step_single(2))
def dpm_solver_2(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None) -> Tensor:
    """DPM-Solver-2 (Lu et al. 2022a, Alg. 1; r1 = 1/2): two evaluations per grid step."""
    return singlestep(denoiser, x, *fixed_stages(sigmas, (0.5,)))


@register("dpm_solver_1", order=1, nfe=per_step(1))
def dpm_solver_1(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None) -> Tensor:
    """DPM-Solver-1 (Lu et al. 2022a, Sec. 3.2): the first-order exponential integrator, identical to DDIM."""
    return singlestep(denoiser, x, *fixed_stages(sigmas, ()))


def fast_orders(evaluations: int) -> list[int]:
    """DPM-Solver-fast's outer-step orders for a budget (Lu et al. 2022a, Sec. 3.4): 3s, then a tail
    [2, 1], [1] or [2] for budget mod 3 = 0, 1, 2; the orders sum to the budget."""
    if evaluations == 0:
        return []
    tail = {0: [2, 1], 1: [1], 2: [2]}[evaluations % 3]
    return [3] * ((evaluations - sum(tail)) // 3) + tail


@register("dpm_solver_fast", order=3, nfe=per_step(1))
def dpm_solver_fast(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None) -> Tensor:
    """DPM-Solver-fast (Lu et al. 2022a, Sec. 3.4): DPM-Solver-3 steps, then 2/1, spending exactly the NFE.

    NFE = grid steps: the n positive grid steps are cut into consecutive outer steps of 3, 2 or 1
    intervals (fast_orders(n)) whose inner grid points are the stages, as the reference code does
    for time-uniform grids (on uniform-logSNR grids r1, r2 = 1/3, 2/3 exactly); the third-order
    update takes the Taylor form, third order for any stages. A final interval to sigma=0 is one
    denoising evaluation. The first-order tail step (budget mod 3 = 0, 1) makes the asymptotic order
    2; over 8-32 evaluations the fitted order is ~2.9, hence the registered 3.
    """
    grid = [float(s) for s in sigmas]
    ode = len(grid) - 1 - int(grid[-1] == 0)
    cuts = list(accumulate(fast_orders(ode), initial=0)) + ([ode + 1] if grid[-1] == 0 else [])
    outer, stages = [grid[c] for c in cuts], [grid[a + 1:b] for a, b in zip(cuts, cuts[1:])]
    return singlestep(denoiser, x, outer, stages, taylor=True)


@register("dpm_solver_2m", order=2, nfe=per_step(1))
def dpm_solver_2m(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
                  lower_order_final: bool = True, final_step: str = "separate", lower_order_below: int = 10) -> Tensor:
    """Multistep DPM-Solver-2 with noise prediction (Lu et al. 2022b, Alg. 2 with eps in place of x0).

    final_step / lower_order_below: the lower_order_final convention (solvers/_common.py FINAL_STEPS);
    the defaults are the authors' dpm-solver code: a jump to sigma = 0 is its separate denoise_to_zero,
    and below 10 steps the step into sigma_min is first order. diffusers counts the jump as the last
    step and lowers below 15 (final_step="counted", lower_order_below=15). Lowering costs this
    noise-prediction solver accuracy on Karras grids (see dpm_solver_3m).
    """
    step = partial(noise_prediction_step, midpoint=True)
    return multistep(x, sigmas, eps_model(denoiser), step, 2, lower_order_final, final_step, lower_order_below)


@register("dpm_solver_3m_taylor", order=3, nfe=per_step(1), coefficients="taylor")
@register("dpm_solver_3m", order=2, nfe=per_step(1))
def dpm_solver_3m(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
                  lower_order_final: bool = True, final_step: str = "separate", lower_order_below: int = 10,
                  coefficients: str = "reference") -> Tensor:
    """Multistep DPM-Solver-3 with noise prediction (Lu et al. 2022b, App.; the authors' dpm-solver code).

    eps'' comes from the quadratic through the last three outputs. Defaults follow the authors' code
    (diffusers' DPMSolverMultistepScheduler('dpmsolver', 3) agrees on the step): coefficients=
    "reference" gives eps'' half its exact weight h^3 phi_3(h), order 2 in the limit (registered 2);
    "taylor" (dpm_solver_3m_taylor, order 3) the exact weight. final_step="separate" (the authors'
    denoise_to_zero, see dpmpp_3m): below 10 steps the last two steps into sigma_min take orders 1, 2.
    This costs accuracy here, unlike in dpmpp_3m: a noise-prediction step weights its extrapolation
    of eps towards the near end of the step (e^(h-u)), where it is accurate, so the third-order step
    into sigma_min that "counted" keeps is good, and the first-order one that replaces it is worse.
    """
    step = partial(noise_prediction_step, midpoint=True)
    return multistep(x, sigmas, eps_model(denoiser), step, 3, lower_order_final, final_step, lower_order_below,
                     d2_scale(coefficients))


@register("dpm_solver_adaptive", order=3, nfe=None)
def dpm_solver_adaptive(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
                        order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                        theta: float = 0.9) -> Tensor:
    """Adaptive-step DPM-Solver-12 / -23 (Lu et al. 2022a, adaptive step size schedule), per sample.

    Each trial step takes DPM-Solver-`order` and its embedded lower-order estimate; a sample accepts
    its step in lambda when the RMS of (higher - lower) / max(atol, rtol max(|x_lower|, |x_prev|)) over
    its own elements is <= 1, and h <- theta h E^(-1/order). The reference code takes the batch's
    largest error, which makes a sample's steps depend on its batch; here each sample controls its own
    steps (solvers/_control.py). Rejected trials are evaluations (the counter sees them); eps at the
    current point is kept across rejections (the reference re-evaluates it). Integrates from the grid's
    first to its last nonzero sigma; a grid ending at 0 then denoises once.
    """
    check(order in (2, 3), f"solver.order must be 2 or 3 for dpm_solver_adaptive (got {order})")
    check(atol > 0 and rtol >= 0 and h_init > 0 and 0 < theta <= 1,
          "dpm_solver_adaptive needs atol > 0, rtol >= 0, h_init > 0 and 0 < theta <= 1")
    levels = [float(s) for s in sigmas if s > 0]
    pair = partial(adaptive_pair, denoiser, order)

    def trial(state: State, lam: Tensor, lam_next: Tensor) -> tuple[State, State, Tensor]:
        x, eps = state["x"], fresh_eps(denoiser, state, lam)
        lower, higher = pair(x, lam, lam_next, eps)
        # Error estimate relative to the mixed tolerance.
        delta = (rtol * torch.maximum(lower.abs(), state["x_prev"].abs())).clamp(min=atol)
        current = {**state, "eps": eps, "has_eps": torch.ones_like(state["has_eps"])}
        accepted = {"x": higher, "x_prev": lower, "eps": eps, "has_eps": torch.zeros_like(state["has_eps"])}
        return accepted, current, rms((higher - lower) / delta)

    state = {"x": x, "x_prev": x, "eps": torch.zeros_like(x),
             "has_eps": torch.zeros(len(x), dtype=torch.bool, device=x.device)}
    h = torch.full((len(x),), h_init, dtype=x.dtype, device=x.device)
    x = integrate(state, -math.log(levels[0]), -math.log(levels[-1]), h, trial,
                  lambda h, err: theta * h * err.clamp(min=1e-12) ** (-1 / order), "dpm_solver_adaptive", denoiser)["x"]
    # Optional final denoise to sigma = 0.
    return denoiser(x, levels[-1]) if float(sigmas[-1]) == 0 else x


def fresh_eps(denoiser: Denoiser, state: State, lam: Tensor) -> Tensor:
    """eps at each sample's current point, evaluated only for samples whose cached value is stale."""
    stale = (~state["has_eps"]).nonzero().squeeze(1)
    eps = state["eps"].clone()
    if stale.numel():
        x = state["x"][stale]
        with denoiser.on_rows(stale):
            eps[stale] = sample_eps(denoiser, x, torch.exp(-expand_as(lam[stale], x)))
    return eps


def sample_eps(denoiser: Denoiser, x: Tensor, level: Tensor) -> Tensor:
    """eps = (x - D(x, sigma)) / sigma with a noise level per sample, `level` shaped [B, 1, ...]."""
    return (x - denoiser(x, level.reshape(-1))) / level


def adaptive_pair(denoiser: Denoiser, order: int, x: Tensor, lam: Tensor,
                  lam_next: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """dpm_solver_step's (DPM-Solver-(k-1), DPM-Solver-k) pair with a step size per sample (k = order)."""
    h = expand_as(lam_next - lam, x)
    sigma, sigma_next = torch.exp(-expand_as(lam, x)), torch.exp(-expand_as(lam_next, x))
    first = noise_prediction_step(x, sigma, sigma_next, [eps])
    r1 = 0.5 if order == 2 else 1 / 3
    s1 = sigma * (sigma_next / sigma) ** r1
    slope1 = (sample_eps(denoiser, noise_prediction_step(x, sigma, s1, [eps]), s1) - eps) / (r1 * h)
    second = noise_prediction_step(x, sigma, sigma_next, [eps, slope1], midpoint=True)
    if order == 2:
        return first, second
    s2 = sigma * (sigma_next / sigma) ** (2 / 3)
    slope2 = (sample_eps(denoiser, noise_prediction_step(x, sigma, s2, [eps, slope1]), s2) - eps) / (2 / 3 * h)
    return second, noise_prediction_step(x, sigma, sigma_next, [eps, slope2])
