"""GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling", ICML): a step grid
chosen by dynamic programming over a fine grid, costed by the teacher trajectory's local errors.

A teacher (Heun with TEACHER_SUBSTEPS geometric sub-steps per fine interval) solves the calibration noise
along a fine Karras grid of FINE_STEPS steps (sigma_max to sigma_min). The cost of jumping from fine level i
to level j is the RMS distance, over calibration samples, between one Euler (= DDIM) step from the teacher's x_i and the
teacher's x_j; dynamic programming then picks the cheapest path of exactly `steps` jumps.
"""
from __future__ import annotations

import torch
from torch import Tensor

from diffbench.errors import check
from diffbench.models.base import Denoiser
from diffbench.solvers import get_solver
from diffbench.steps import Span, karras

FINE_STEPS = 50
TEACHER_SUBSTEPS = 2
OPTIONS = {"fine_steps": FINE_STEPS, "teacher_substeps": TEACHER_SUBSTEPS, "fine_grid": "karras", "teacher": "heun"}


def fit(denoiser: Denoiser, x: Tensor, span: Span, steps: int) -> Tensor:
    """The GITS grid of `steps` steps for calibration noise x (at sigma_max) over `span`.

    The grid keeps the span's ends (and a final step sigma_min -> 0 under final_zero), like every
    hand-made grid, so fitted and hand-made grids share one reference solution.
    """
    jumps = steps - int(span.final_zero)  # the final step to 0 is fixed
    check(jumps >= 1, "steps=fitted method=gits needs at least 2 steps with final_zero (a larger nfe)")
    fine = karras(max(FINE_STEPS, jumps), denoiser.schedule, Span(span.sigma_min, span.sigma_max, False))
    states, denoised = teacher_trajectory(denoiser, x, fine)
    grid = fine[cheapest_path(jump_costs(states, denoised, fine), jumps)]
    return torch.cat([grid, grid.new_zeros(1)]) if span.final_zero else grid


def teacher_trajectory(denoiser: Denoiser, x: Tensor, fine: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """The teacher's states at every fine level and the denoiser's output there (but at the last)."""
    heun = get_solver("heun").fn
    states, denoised = [x], []
    for a, b in zip(fine[:-1].tolist(), fine[1:].tolist()):
        denoised.append(denoiser(x, a))
        x = heun(denoiser, x, a * (b / a) ** torch.linspace(0, 1, TEACHER_SUBSTEPS + 1, dtype=torch.float64))
        states.append(x)
    return states, denoised


def jump_costs(states: list[Tensor], denoised: list[Tensor], fine: Tensor) -> Tensor:
    """cost[i, j]: RMS error of one Euler step from the teacher's state at level i to level j (inf for j <= i)."""
    m = len(fine)
    cost = torch.full((m, m), torch.inf, dtype=torch.float64)
    target = torch.stack(states).flatten(2)  # (levels, samples, dims)
    for i in range(m - 1):
        slope = ((states[i] - denoised[i]) / fine[i]).flatten(1)
        jump = (fine[i + 1:] - fine[i]).to(slope)[:, None, None]
        error = target[i + 1:] - (states[i].flatten(1) + jump * slope)
        cost[i, i + 1:] = error.pow(2).mean(dim=2).sqrt().mean(dim=1).double()
    return cost


def cheapest_path(cost: Tensor, steps: int) -> Tensor:
    """Indices of the cheapest path from the first to the last level in exactly `steps` jumps (dynamic programming)."""
    m = len(cost)
    best = torch.full((steps + 1, m), torch.inf, dtype=torch.float64)
    best[0, 0] = 0.0
    parent = torch.zeros((steps + 1, m), dtype=torch.long)
    for k in range(1, steps + 1):
        total = best[k - 1][:, None] + cost  # total[i, j]: reach i in k-1 jumps, then jump to j
        best[k], parent[k] = total.min(dim=0)
    path = [m - 1]
    for k in range(steps, 0, -1):
        path.append(int(parent[k, path[-1]]))
    return torch.tensor(path[::-1])
