"""Analytical teleportation (Wang & Vastola 2024, "The unreasonable effectiveness of Gaussian score approximations").

At high noise the learned score is close to that of a Gaussian fitted to the data, whose
probability-flow ODE has a closed form. Teleportation follows it from sigma_max down to
`teleport_sigma` and hands over to a solver for the rest, so no evaluation is spent on the early,
nearly linear phase. Here the Gaussian is isotropic, N(data_mean, data_std^2 I) (options), and its
exact map is x -> m + (x - m) sqrt(s^2 + sigma'^2) / sqrt(s^2 + sigma^2).

The grid keeps its step count: its positive levels are mapped linearly in log sigma from
[sigma_last, sigma_max] onto [sigma_last, teleport_sigma] (exact for uniform-logSNR grids, the
same rho-shape closely for Karras ones), so the NFE rule and budget are the handed-over solver's.
A teleport_sigma at or above the grid's first level teleports nothing.
"""
from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor

from diffbench.errors import check
from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource
from diffbench.solvers import dpm_solver_pp, euler  # noqa: F401  (register the solvers handed over to)
from diffbench.solvers.registry import SOLVERS, SolverFn, register

# Where the handover happens by default: a choice for EDM-range models (sigma_max 80), not the paper's number.
TELEPORT_SIGMA = 10.0
HANDOVER = ("euler", "heun", "dpmpp_2m")  # deterministic by default: each gets a registered teleport_<name>


def gaussian_flow(x: Tensor, sigma: float, sigma_to: float, mean: float, std: float) -> Tensor:
    """The exact PF-ODE map of data N(mean, std^2 I) from noise level sigma to sigma_to."""
    return mean + (x - mean) * math.sqrt((std**2 + sigma_to**2) / (std**2 + sigma**2))


def compressed_grid(sigmas: Tensor, sigma_top: float) -> Tensor:
    """The grid's positive levels mapped linearly in log sigma onto [their last level, sigma_top]; zeros kept."""
    positive = sigmas[sigmas > 0]
    if len(positive) == 1:
        return torch.cat([positive.new_tensor([sigma_top]), sigmas[1:]])
    logs = positive.log()
    check(sigma_top > float(positive[-1]),
          f"solver.teleport_sigma ({sigma_top}) must be above the grid's last positive level ({float(positive[-1]):g})")
    scaled = logs[-1] + (logs - logs[-1]) * (math.log(sigma_top) - logs[-1]) / (logs[0] - logs[-1])
    return torch.cat([scaled.exp(), sigmas[len(positive):]])


def teleported(name: str) -> SolverFn:
    """The solver registered as `name` (with its defaults) preceded by analytical teleportation."""
    inner = SOLVERS[name]

    def solver(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
               teleport_sigma: float = TELEPORT_SIGMA, data_mean: float = 0.0, data_std: float = 0.5) -> Tensor:
        """Analytical teleportation (Wang & Vastola 2024): exact Gaussian-model ODE to teleport_sigma, then a solver."""
        check(teleport_sigma > 0 and data_std > 0,
              f"solver.teleport_sigma and solver.data_std must be > 0 (got {teleport_sigma}, {data_std})")
        sigma_max = float(sigmas[0])
        if teleport_sigma < sigma_max:
            # Teleport: the closed-form Gaussian flow, then the same number of steps below teleport_sigma.
            sigmas = compressed_grid(sigmas, teleport_sigma)
            x = gaussian_flow(x, sigma_max, teleport_sigma, data_mean, data_std)
        return inner.fn(denoiser, x, sigmas, noise=noise, **inner.options())

    return cast(SolverFn, solver)


for _name in HANDOVER:
    _spec = SOLVERS[_name]
    register(f"teleport_{_name}", order=_spec.order, nfe=_spec.nfe, min_steps=_spec.min_steps)(teleported(_name))
