"""The sampling engine: NFE budget -> step grid -> batches of samples from common noise.

Solvers stay pure; this module owns the NFE accounting (declared vs measured), the per-index noise
and the batching, so results do not depend on batch size or sharding.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diffbench.errors import check
from diffbench.models.base import CountingDenoiser, Denoiser
from diffbench.noise import NoiseSource
from diffbench.schedules import NoiseSchedule
from diffbench.solvers import SolverSpec, get_solver
from diffbench.steps import make_sigmas


@dataclass(frozen=True)
class Plan:
    """One solver configuration on one sigma grid: everything a batch needs except noise."""

    solver: SolverSpec
    options: dict[str, Any]
    sigmas: Tensor
    nfe_declared: int | None
    step_schedule: str
    step_options: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def describe(self) -> dict[str, Any]:
        """Fields for a results row."""
        return {"solver": self.solver.name, "solver_options": dict(self.options), "steps": self.steps,
                "step_schedule": self.step_schedule, "step_options": dict(self.step_options),
                "sigma_max": float(self.sigmas[0]), "sigma_min": float(self.sigmas[self.sigmas > 0][-1]),
                "final_zero": bool(self.sigmas[-1] == 0), "nfe_declared": self.nfe_declared}


def make_plan(solver: str, nfe: int, schedule: NoiseSchedule, *, step_schedule: str = "karras",
              step_options: Mapping[str, Any] | None = None, solver_options: Mapping[str, Any] | None = None,
              sigma_min: float | None = None, sigma_max: float | None = None, final_zero: bool = True,
              shape: Sequence[int] | None = None) -> Plan:
    """Resolve a solver name, NFE budget and step schedule into a Plan (UsageError on bad input).

    Given the sample `shape`, the solver's own option checks run now too (SolverSpec.dry_run).
    """
    spec = get_solver(solver)
    options = spec.bind(solver_options or {})
    steps = spec.steps_for_nfe(nfe, final_zero, options)
    sigmas = make_sigmas(step_schedule, steps, schedule, sigma_min=sigma_min, sigma_max=sigma_max,
                         final_zero=final_zero, **dict(step_options or {}))
    declared = spec.nfe_for(len(sigmas) - 1, final_zero, options)
    if shape is not None:
        spec.dry_run(options, schedule, sigmas, shape)
    return Plan(spec, options, sigmas, declared, step_schedule, dict(step_options or {}))


@dataclass
class Batch:
    """Samples for a list of indices and what producing them cost."""

    indices: list[int]
    x: Tensor
    nfe_measured: int


def initial_noise(noise: NoiseSource, shape: Sequence[int], scale: float, dtype: torch.dtype) -> Tensor:
    """x_T = scale * z_i, z_i the first draw of sample i's generator."""
    return noise.randn(shape, dtype) * scale


def sample_batch(denoiser: Denoiser, plan: Plan, indices: Sequence[int], seed: int, shape: Sequence[int],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> Batch:
    """Run the plan's solver on the samples `indices`; the state is kept in `dtype` (float64 default)."""
    noise = NoiseSource(seed, indices, device)
    sigma_max = float(plan.sigmas[0])
    x = initial_noise(noise, shape, denoiser.schedule.prior_std(sigma_max), dtype)
    counter = CountingDenoiser(denoiser, budget=plan.nfe_declared)
    out = plan.solver.fn(counter, x, plan.sigmas, noise=noise, **plan.options)
    if plan.nfe_declared is not None and counter.calls != plan.nfe_declared:
        raise RuntimeError(f"solver '{plan.solver.name}' made {counter.calls} evaluations, "
                           f"its registry entry declares {plan.nfe_declared}")
    return Batch(list(indices), out, counter.calls)


def batches(indices: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Split sample indices into consecutive batches."""
    check(batch_size >= 1, f"batch_size must be >= 1 (got {batch_size})")
    for start in range(0, len(indices), batch_size):
        yield list(indices[start:start + batch_size])

