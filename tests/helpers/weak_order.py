"""Exact weak error of a stochastic solver on 1-D Gaussian data, for weak-order fits without Monte Carlo.

On Gaussian data the denoiser is affine, so a solver's output is affine in x_T and in each noise
draw: out = c + a x_T + sum_k b_k z_k. Running it on a batch whose rows switch on one input at a
time (x_T = 1, or draw k = 1) reads off a, b and c, hence the output's exact mean and variance.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffbench.models.analytic import gaussian
from diffbench.sampling import make_plan
from diffbench.solvers import SOLVERS
from tests.helpers.convergence import SPAN

MEAN, STD = 0.7, 0.5


class UnitNoise:
    """A noise source whose draw k is 1 on batch row 2 + k and 0 elsewhere (all zero when `rows` is False)."""

    def __init__(self, rows: bool):
        self.draws, self.rows = 0, rows

    def randn_like(self, x: Tensor) -> Tensor:
        z = torch.zeros_like(x)
        if self.rows:
            z[2 + self.draws] = 1.0
        self.draws += 1
        return z


def weak_error(name: str, steps: int, options: dict[str, Any] | None = None) -> float:
    """|mean error| + |variance error| of `name` at `steps` steps over SPAN against the exact marginal at its end."""
    model = gaussian(shape=(1,), mean=[MEAN], std=[STD])
    spec, sigma_max, sigma_min = SOLVERS[name], SPAN["sigma_max"], SPAN["sigma_min"]
    plan = make_plan(name, spec.nfe_for(steps, False, options), model.schedule, solver_options=options, **SPAN)
    counter = UnitNoise(rows=False)
    plan.solver.fn(model, torch.zeros(1, 1, dtype=torch.float64), plan.sigmas, noise=counter, **plan.options)
    x = torch.zeros(2 + counter.draws, 1, dtype=torch.float64)
    x[1] = 1.0
    out = plan.solver.fn(model, x, plan.sigmas, noise=UnitNoise(rows=True), **plan.options)[:, 0]
    c, a, b = out[0], out[1] - out[0], out[2:] - out[0]
    mean = float(c + a * MEAN)
    var = float(a**2 * (STD**2 + sigma_max**2) + (b**2).sum())
    return abs(mean - MEAN) + abs(var - (STD**2 + sigma_min**2))


def weak_order(name: str, steps: tuple[int, ...], options: dict[str, Any] | None = None) -> tuple[float, list[float]]:
    """Fitted slope of -log(weak error) against log(steps), with the errors."""
    errs = [weak_error(name, n, options) for n in steps]
    return -float(np.polyfit([math.log(n) for n in steps], [math.log(e) for e in errs], 1)[0]), errs
