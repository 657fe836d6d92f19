"""LD3 (Tong et al. 2025, "Learning to Discretize Denoising Diffusion ODEs", ICLR): the step grid learned by
gradient descent on the run solver's distance to the teacher on a few dozen calibration samples.

The teacher is the RK45 reference; the distance is L2 (LD3 uses LPIPS on images; analytic models have no
perceptual metric). LD3's slack: each calibration sample's start may move within a ball of radius
SLACK * sigma_max * sqrt(dim) around its noise, so the grid is not bent to fit hard samples exactly.
The grid's nonzero levels are Karras' rho = 7 warp (search.grid) of positions u = cumsum(softmax(xi)) with one
logit per interval (zeros: the Karras grid up to rounding). Gradients: in the starts by autograd through the solver;
in xi by forward differences through it (our solvers take the levels as Python floats, so LD3's backpropagation
into the time steps is not available). Adam steps for both; the iterate with the lowest calibration error without
slack, the Karras grid included, is kept. Everything is deterministic, so a refit reproduces the grid.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffbench.fit import search
from diffbench.steps import Span

ITERATIONS = 24
LR_GRID = 0.1  # Adam step on the logits xi
LR_SLACK = 0.02  # Adam step on the starts' offsets, in units of sigma_max
SLACK = 0.003  # ball radius / (sigma_max * sqrt(dim))
DIFF_STEP = 1e-3  # forward-difference step in xi
OPTIONS = {"warp": "karras", "rho": search.RHO, "iterations": ITERATIONS, "lr_grid": LR_GRID, "lr_slack": LR_SLACK,
           "slack": SLACK, "diff_step": DIFF_STEP, "loss": "l2", "optimizer": "adam", "teacher": "rk45 reference"}

Solve = Callable[[Tensor, Tensor], Tensor]


def fit(solve: Solve, x: Tensor, reference: Tensor, span: Span, steps: int) -> Tensor:
    """The grid of `steps` steps over `span` learned for `solve` from calibration noise x towards `reference`."""
    intervals = span.points(steps) - 1
    xi = torch.zeros(intervals, dtype=torch.float64, requires_grad=True)
    offset = torch.zeros_like(x, requires_grad=True)
    best_grid = search.grid(torch.linspace(0.0, 1.0, intervals + 1, dtype=torch.float64), span)
    if intervals < 2:  # one interval between the span's ends: nothing to learn
        return best_grid
    best = float(loss(solve, x, reference, best_grid))
    optimiser = torch.optim.Adam([{"params": [xi], "lr": LR_GRID}, {"params": [offset], "lr": LR_SLACK}])
    radius = SLACK * x[0].numel() ** 0.5
    for _ in range(ITERATIONS):
        optimiser.zero_grad()
        grid = search.grid(positions(xi.detach()), span)
        start = x + offset * span.sigma_max
        value = loss(solve, start, reference, grid)
        value.backward()  # the offsets' gradient
        xi.grad = grid_gradient(solve, start.detach(), reference, xi.detach(), span, float(value.detach()))
        optimiser.step()
        with torch.no_grad():
            offset.mul_(project(offset, radius))
            grid = search.grid(positions(xi.detach()), span)
            error = float(loss(solve, x, reference, grid))
        if error < best:
            best, best_grid = error, grid
    return best_grid


def positions(xi: Tensor) -> Tensor:
    """Karras-warp positions 0 = u_0 < ... < u_K = 1 from K interval logits."""
    u = torch.cat([xi.new_zeros(1), torch.cumsum(torch.softmax(xi, 0), 0)])
    u[-1] = 1.0
    return u


def loss(solve: Solve, start: Tensor, reference: Tensor, grid: Tensor) -> Tensor:
    """Mean squared distance between the solver's samples from `start` on `grid` and the teacher's."""
    return (solve(start, grid) - reference.to(start)).pow(2).mean()


def grid_gradient(solve: Solve, start: Tensor, reference: Tensor, xi: Tensor, span: Span, value: float) -> Tensor:
    """d loss / d xi by forward differences, one solve per logit."""
    gradient = torch.zeros_like(xi)
    with torch.no_grad():
        for k in range(len(xi)):
            moved = xi.clone()
            moved[k] += DIFF_STEP
            moved_value = float(loss(solve, start, reference, search.grid(positions(moved), span)))
            gradient[k] = (moved_value - value) / DIFF_STEP
    return gradient


def project(offset: Tensor, radius: float) -> Tensor:
    """Per-sample factors that bring each offset back inside the ball of `radius` (1 inside it)."""
    norms = offset.flatten(1).norm(dim=1)
    return (radius / norms.clamp(min=radius)).view(-1, *[1] * (offset.dim() - 1))
