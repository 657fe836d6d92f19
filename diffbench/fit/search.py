"""A grid fitted to the calibration error itself: LD3's objective (Tong et al. 2025, "Learning to Discretize
Denoising Diffusion ODEs", ICLR), the run solver's RMSE against the teacher (here the RK45 reference) on a
few dozen samples, minimised by coordinate search instead of LD3's gradient descent.

The grid's nonzero levels are Karras' rho = 7 warp of positions 0 = u_0 < ... < u_K = 1; the positions
start evenly spaced (the Karras grid, bit for bit) and each interior one moves by a shrinking fraction of
the gap to its neighbours while that lowers the error (deterministic, so a refit reproduces the grid).
Our solvers take the levels as Python floats, so the gradient LD3 backpropagates is not available.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffbench.steps import Span

RHO = 7.0
ROUNDS = 6  # halvings of the move size
OPTIONS = {"warp": "karras", "rho": RHO, "rounds": ROUNDS, "start": "karras", "teacher": "rk45 reference"}


def fit(error: Callable[[Tensor], float], span: Span, steps: int) -> Tensor:
    """The grid of `steps` steps over `span` whose calibration `error` coordinate search reaches."""
    u = torch.linspace(0.0, 1.0, span.points(steps), dtype=torch.float64)
    best = error(grid(u, span))
    size = 0.5
    for _ in range(ROUNDS):
        for k in range(1, len(u) - 1):
            for sign in (1.0, -1.0):
                trial = u.clone()
                gap = (u[k + 1] - u[k]) if sign > 0 else (u[k] - u[k - 1])
                trial[k] = u[k] + sign * size * gap
                value = error(grid(trial, span))
                if value < best:
                    u, best = trial, value
                    break
        size /= 2
    return grid(u, span)


def grid(u: Tensor, span: Span) -> Tensor:
    """The levels at Karras-warp positions u (evenly spaced u: the Karras grid, the same floating-point operations)."""
    lo, hi = span.sigma_min ** (1 / RHO), span.sigma_max ** (1 / RHO)
    levels = (hi + u * (lo - hi)) ** RHO
    return torch.cat([levels, levels.new_zeros(1)]) if span.final_zero else levels
