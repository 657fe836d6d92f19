"""The sampling engine: NFE budget -> step grid -> batches of samples from common noise.

Solvers stay pure; this module owns the NFE accounting (declared vs measured), the per-index noise
and the batching (halved on out-of-memory, diffbench.batching), so results do not depend on batch
size or sharding.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diffbench.batching import BatchSizer
from diffbench.config import RunSettings
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
    step_grid: str
    step_options: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def describe(self) -> dict[str, Any]:
        """Fields for a results row."""
        return {"solver": self.solver.name, "solver_options": dict(self.options), "steps": self.steps,
                "step_grid": self.step_grid, "step_options": dict(self.step_options),
                "sigma_max": float(self.sigmas[0]), "sigma_min": float(self.sigmas[self.sigmas > 0][-1]),
                "final_zero": bool(self.sigmas[-1] == 0), "nfe_declared": self.nfe_declared}


def make_plan(solver: str | SolverSpec, nfe: int, schedule: NoiseSchedule, *, step_grid: str = "karras",
              step_options: Mapping[str, Any] | None = None, solver_options: Mapping[str, Any] | None = None,
              sigma_min: float | None = None, sigma_max: float | None = None, final_zero: bool = True,
              shape: Sequence[int] | None = None) -> Plan:
    """Resolve a solver (name or spec), NFE and step schedule into a Plan (UsageError on bad input).

    Given the sample `shape`, the solver's own option checks run now too (SolverSpec.dry_run).
    """
    spec = solver if isinstance(solver, SolverSpec) else get_solver(solver)
    options = spec.bind(solver_options or {})
    steps = spec.steps_for_nfe(nfe, final_zero, options)
    sigmas = make_sigmas(step_grid, steps, schedule, sigma_min=sigma_min, sigma_max=sigma_max,
                         final_zero=final_zero, **dict(step_options or {}))
    declared = spec.nfe_for(len(sigmas) - 1, final_zero, options)
    if shape is not None:
        spec.dry_run(options, schedule, sigmas, shape)
    return Plan(spec, options, sigmas, declared, step_grid, dict(step_options or {}))


@dataclass
class Batch:
    """Samples for a list of indices and what producing them cost."""

    indices: list[int]
    x: Tensor
    nfe_measured: float  # evaluations per sample (mean over the batch; adaptive solvers differ per sample)
    nfe_network: float  # network forward passes per sample (guidance makes two per guided call)


def initial_noise(noise: NoiseSource, shape: Sequence[int], schedule: NoiseSchedule, sigma_max: float,
                  dtype: torch.dtype) -> Tensor:
    """x_T of the samples at sigma_max: the schedule's prior (prior_std(sigma_max) * z_i, z_i the first draw of
    sample i's generator; PFGM++ draws its heavy-tailed prior)."""
    return schedule.prior(noise, shape, sigma_max, dtype)


def sample_batch(denoiser: Denoiser, plan: Plan, indices: Sequence[int], seed: int, shape: Sequence[int],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> Batch:
    """Run the plan's solver on the samples `indices`; the state is kept in `dtype` (float64 default)."""
    noise = NoiseSource(seed, indices, device)
    sigma_max = float(plan.sigmas[0])
    x = initial_noise(noise, shape, denoiser.schedule, sigma_max, dtype)
    # conditions bound by index; sigma > 0 checked once after the solver (no host sync per call)
    counter = CountingDenoiser(denoiser.bind(indices), budget=plan.nfe_declared, deferred=True)
    out = plan.solver.fn(counter, x, plan.sigmas, noise=noise, **plan.options)
    counter.check_sigmas()
    if plan.nfe_declared is not None and counter.calls != plan.nfe_declared:
        raise RuntimeError(f"solver '{plan.solver.name}' made {counter.calls} evaluations, "
                           f"its registry entry declares {plan.nfe_declared}")
    per_sample = counter.calls if plan.nfe_declared is not None else counter.sample_evals / len(indices)
    return Batch(list(indices), out, per_sample, counter.network_evals / len(indices))


def batches(indices: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Split sample indices into consecutive batches."""
    check(batch_size >= 1, f"batch_size must be >= 1 (got {batch_size})")
    for start in range(0, len(indices), batch_size):
        yield list(indices[start:start + batch_size])



def sample_points(model: Denoiser, plan: Plan, run: RunSettings, indices: Sequence[int],
                  advance: Callable[[int], None] = lambda n: None,
                  sizer: BatchSizer | None = None) -> Iterator[tuple[Batch, float]]:
    """Yield (batch, seconds spent sampling it) over `indices` in batches of run.batch_size.

    A batch that runs out of memory is sampled again at half the size (diffbench.batching); pass
    `sizer` to read how often that happened.
    """
    sizer = sizer or BatchSizer(run.batch_size, run.device)
    for idx, (batch, seconds) in sizer.map(lambda idx: _timed_batch(model, plan, run, idx), indices):
        yield batch, seconds
        advance(len(idx))


def _timed_batch(model: Denoiser, plan: Plan, run: RunSettings, idx: list[int]) -> tuple[Batch, float]:
    start = time.perf_counter()
    batch = sample_batch(model, plan, idx, run.seed, sample_shape(model), device=run.device, dtype=run.dtype)
    if run.device.type == "cuda":  # the sampling's stream only: the metric stream's work goes on meanwhile
        torch.cuda.current_stream(run.device).synchronize()
    return batch, time.perf_counter() - start


def decode_timed(model: Denoiser, x: Tensor, device: torch.device,
                 stream: torch.cuda.Stream | None = None) -> tuple[Tensor, float]:
    """(the images of samples x: model.decode, the VAE of latent models; seconds it took, CUDA synchronised).

    With a CUDA `stream` (decoding in a worker thread while the next batch samples) the decode runs on it, after
    x is ready on the current stream, and only that stream is waited for; the tensors are marked as used by both
    streams so the caching allocator does not hand their memory out early.
    """
    start = time.perf_counter()
    if stream is None:
        images = model.decode(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return images, time.perf_counter() - start
    current = torch.cuda.current_stream(device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        images = model.decode(x)
    x.record_stream(stream)
    images.record_stream(current)
    stream.synchronize()
    return images, time.perf_counter() - start


def set_tf32(enabled: bool) -> None:
    """TF32 tensor-core maths for float32 matmuls and convolutions (Ampere+ GPUs); off = true float32."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def sample_shape(model: Denoiser) -> tuple[int, ...]:
    """The shape of one sample, as the model declares it."""
    shape = getattr(model, "shape", None)
    check(shape is not None, "the model does not declare its sample shape (model.shape)")
    assert shape is not None  # check() raised otherwise
    return tuple(shape)


def first_nonfinite(x: Tensor) -> str | None:
    """A reason string when samples hold NaN or inf."""
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    if bool(bad.any()):
        return f"{int(bad.sum())} samples contain NaN or inf (solver diverged)"
    return None
