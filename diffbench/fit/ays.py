"""AYS-style KL-bound optimisation (Sabour et al. 2024, "Align Your Steps: Optimizing Sampling Schedules in
Diffusion Models", ICML): the grid minimising a Monte-Carlo estimate of the KL upper bound (KLUB) between the
reverse SDE and its discretisation, refined one level at a time.

In EDM coordinates (sigma = t) the KLUB of a grid s_0 > ... > s_K is
sum_i int_{s_(i+1)}^{s_i} t^-3 E ||D(x_t, t) - D(x_(s_i), s_i)||^2 dt, with x_t = x0 + t eps on one noise path.
Here x0 are the calibration samples' RK45 solutions (samples of the model itself) and eps independent noise
(the calibration seed's sample indices n..2n-1). The integral is the trapezoidal rule on FINE log-uniform levels
(dt / t^3 = d(log t) / t^2), to which the grid's levels are restricted. Refinement as AYS's: starting from the
Karras grid (snapped to the fine levels), every odd then every even interior level moves to the fine level
between its neighbours that minimises its two intervals' KLUB, until no level moves (at most ROUNDS rounds).
The bound is the first-order SDE one AYS optimises, the same for every solver, and it weighs low noise heavily
(t^-3), where an ODE solver on data with a floor of detail loses little: so the kept grid is the round's
(the Karras grid before the first included) with the lowest calibration error of the run solver (our stopping
rule; it costs one solve per round).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from diffbench.errors import check
from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource
from diffbench.steps import Span, karras

FINE = 120
ROUNDS = 50
OPTIONS = {"fine_levels": FINE, "fine_grid": "log-uniform", "rounds": ROUNDS, "start": "karras",
           "data": "rk45 reference of the calibration noise"}


def fit(denoiser: Denoiser, x0: Tensor, shape: Sequence[int], seed: int, span: Span, steps: int,
        error: Callable[[Tensor], float]) -> Tensor:
    """The KLUB-refined grid of `steps` steps over `span`, estimated from model samples x0, stopped by `error`."""
    levels = span.points(steps)
    check(levels <= FINE, f"steps.method=ays fits at most {FINE} levels (got {levels}); use a smaller nfe")
    fine = torch.exp(torch.linspace(torch.tensor(span.sigma_max).log().item(),
                                    torch.tensor(span.sigma_min).log().item(), FINE, dtype=torch.float64))
    fine[0], fine[-1] = span.sigma_max, span.sigma_min
    eps = NoiseSource(seed, range(len(x0), 2 * len(x0))).randn(list(shape)[1:], torch.float64)
    cost = klub_costs(denoiser, x0.to(torch.float64), eps, fine)
    start = karras(levels - 1, denoiser.schedule, Span(span.sigma_min, span.sigma_max, False))
    index = (start.log()[:, None] - fine.log()[None, :]).abs().argmin(dim=1)
    grids = [start, *(fine[rounds] for rounds in refine(cost, index))]
    if span.final_zero:
        grids = [torch.cat([grid, grid.new_zeros(1)]) for grid in grids]
    errors = [error(grid) for grid in grids]
    return grids[errors.index(min(errors))]


def klub_costs(denoiser: Denoiser, x0: Tensor, eps: Tensor, fine: Tensor) -> Tensor:
    """cost[a, b]: the KLUB estimate of one step from fine level a to level b > a (inf for b <= a)."""
    denoised = torch.stack([denoiser(x0 + float(t) * eps, float(t)).flatten(1) for t in fine])  # (levels, n, d)
    step = (fine[:-1].log() - fine[1:].log()).mean()
    m = len(fine)
    cost = torch.full((m, m), torch.inf, dtype=torch.float64)
    for a in range(m - 1):
        integrand = (denoised[a:] - denoised[a]).pow(2).sum(dim=2).mean(dim=1) / fine[a:] ** 2
        cost[a, a + 1:] = torch.cumsum(0.5 * (integrand[:-1] + integrand[1:]) * step, 0)
    return cost


def refine(cost: Tensor, index: Tensor) -> Iterator[Tensor]:
    """AYS's iterative refinement, each round's levels: odd then even interior levels, each to its best fine level
    between its neighbours (the first is the start snapped to the fine levels)."""
    index = index.clone()
    yield index.clone()
    for _ in range(ROUNDS):
        moved = False
        for parity in (1, 2):
            for i in range(parity, len(index) - 1, 2):
                lo, hi = int(index[i - 1]), int(index[i + 1])
                if hi - lo < 2:
                    continue
                candidates = torch.arange(lo + 1, hi)
                best = int(candidates[(cost[lo, candidates] + cost[candidates, hi]).argmin()])
                moved |= best != int(index[i])
                index[i] = best
        if not moved:
            return
        yield index.clone()
