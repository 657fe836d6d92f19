"""OSS-style DP distillation (Pei et al. 2025, "Optimal Stepsize for Diffusion Sampling"): dynamic programming
over a fine grid that follows the student's own states towards the teacher trajectory.

It differs from GITS (diffbench.fit.gits), which costs a jump by the local error of one Euler step taken from
the *teacher's* state and adds those local errors along the path. OSS carries the *student's* state: the state
reached at fine level j in k steps is one student step from the best state reached at some level i < j in k - 1
steps, the best being the one closest to the teacher at j (RMS over calibration samples, the global error so
far); the grid is read back from the last level after `steps` steps. The student step is DDIM (the first-order
data-prediction step every multistep solver starts with); the teacher is GITS's (Heun on a fine Karras grid).
"""
from __future__ import annotations

import torch
from torch import Tensor

from diffbench.errors import check
from diffbench.fit import gits
from diffbench.models.base import Denoiser
from diffbench.steps import Span, karras

OPTIONS = {"fine_steps": gits.FINE_STEPS, "teacher_substeps": gits.TEACHER_SUBSTEPS, "fine_grid": "karras",
           "teacher": "heun", "student": "ddim"}


def fit(denoiser: Denoiser, x: Tensor, span: Span, steps: int) -> Tensor:
    """The OSS grid of `steps` steps for calibration noise x (at sigma_max) over `span` (ends kept, like GITS)."""
    jumps = steps - int(span.final_zero)  # the final step to 0 is fixed
    check(jumps >= 1, "steps=fitted method=oss needs at least 2 steps with final_zero (a larger nfe)")
    fine = karras(max(gits.FINE_STEPS, jumps), denoiser.schedule, Span(span.sigma_min, span.sigma_max, False))
    teacher, _ = gits.teacher_trajectory(denoiser, x, fine)
    grid = fine[student_path(denoiser, x, fine, teacher, jumps)]
    return torch.cat([grid, grid.new_zeros(1)]) if span.final_zero else grid


def student_path(denoiser: Denoiser, x: Tensor, fine: Tensor, teacher: list[Tensor], jumps: int) -> Tensor:
    """Fine-level indices of the student's path in exactly `jumps` DDIM steps (dynamic programming on its states)."""
    m = len(fine)
    states: dict[int, Tensor] = {0: x}
    parents: list[dict[int, int]] = []
    for k in range(1, jumps + 1):
        last = m - 1 - (jumps - k)  # leave a level for each remaining jump
        best: dict[int, tuple[float, int, Tensor]] = {}
        for i, state in states.items():
            denoised = denoiser(state, float(fine[i]))
            for j in range(i + 1, last + 1) if k < jumps else [m - 1]:
                ratio = float(fine[j] / fine[i])
                moved = ratio * state + (1 - ratio) * denoised  # DDIM step from sigma_i to sigma_j
                error = float((moved - teacher[j]).flatten(1).pow(2).mean(dim=1).sqrt().mean())
                if j not in best or error < best[j][0]:
                    best[j] = (error, i, moved)
        states = {j: moved for j, (_, _, moved) in best.items()}
        parents.append({j: i for j, (_, i, _) in best.items()})
    path = [m - 1]
    for parent in reversed(parents):
        path.append(parent[path[-1]])
    return torch.tensor(path[::-1])
