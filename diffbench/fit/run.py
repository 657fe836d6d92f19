"""`diffbench fit`: fit the step grid of every (model, solver, NFE) a config asks for with steps=fitted.

Calibration noise is sample indices 0..calibration_n-1 of noise seed calibration_seed; a sweep using
the grid must run another seed (diffbench.fit.artefacts.fill_fitted checks it). Each fit is timed and
its denoiser evaluations counted (fit_nfe, summed over calibration samples). The RK45 reference solutions of
the calibration samples (what `search` and `ld3` fit to and `ays` takes as model samples; adaptive, shared by
every fit of one calibration set) are timed in the fit that first solves them but not counted in fit_nfe. The
grid's and Karras' RMSE against them are stored beside the grid.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from diffbench import assetstore
from diffbench.config import RunSettings, compose_points, config_hash, expand_grid, settings, to_dict
from diffbench.engine.points import ModelCache, model_identity
from diffbench.engine.progress import Reporter
from diffbench.engine.references import ReferenceSolutions
from diffbench.errors import check
from diffbench.fit import artefacts, ays, gits, ld3, oss, pas, search
from diffbench.models.base import CountingDenoiser, Denoiser
from diffbench.noise import NoiseSource
from diffbench.sampling import Plan, initial_noise, make_plan, sample_batch, sample_shape
from diffbench.solvers import SolverSpec, get_solver
from diffbench.steps import Span, karras, resolve_span


@dataclass(frozen=True)
class Calibration:
    """What a fit method may use: the counted denoiser, calibration noise at sigma_max (sample indices 0..n-1 of
    noise seed `seed`), span, step count, `error(sigmas)`: the run solver's RMSE against the RK45 reference on
    the calibration samples, `reference()`: those reference solutions, and `solve(x, sigmas)`: the run solver
    from x on a grid (counted, differentiable in x); `solve_with(denoiser, x, sigmas)` runs it on another denoiser
    (a wrapper of the counted one)."""

    denoiser: CountingDenoiser
    x: Tensor
    seed: int
    span: Span
    steps: int
    error: Callable[[Tensor], float]
    reference: Callable[[], Tensor]
    solve: Callable[[Tensor, Tensor], Tensor]
    solve_with: pas.Solve


def with_pas(c: Calibration) -> tuple[Tensor, dict[str, Any]]:
    """PAS on the Karras grid: the grid and, for the artefact, the coordinates of the corrected steps."""
    sigmas = karras(c.steps, c.denoiser.schedule, c.span)
    return sigmas, {"pas": pas.fit(c.denoiser, c.x, sigmas, c.solve_with)}


# A method gives the grid, or the grid and more fields for the artefact (PAS: its coordinates).
METHODS: dict[str, tuple[Callable[[Calibration], Tensor | tuple[Tensor, dict[str, Any]]], dict[str, Any]]] = {
    "gits": (lambda c: gits.fit(c.denoiser, c.x, c.span, c.steps), gits.OPTIONS),
    "search": (lambda c: search.fit(c.error, c.span, c.steps), search.OPTIONS),
    "ld3": (lambda c: ld3.fit(c.solve, c.x, c.reference(), c.span, c.steps), ld3.OPTIONS),
    "ays": (lambda c: ays.fit(c.denoiser, c.reference(), c.x.shape, c.seed, c.span, c.steps, c.error), ays.OPTIONS),
    "oss": (lambda c: oss.fit(c.denoiser, c.x, c.span, c.steps), oss.OPTIONS),
    "pas": (with_pas, pas.OPTIONS),
}


@dataclass(frozen=True)
class Fitted:
    """One fitted grid: its artefact, where it is stored, and whether it was already in the cache."""

    key: str
    path: Path
    artefact: dict[str, Any]
    reused: bool


def fit_all(overrides: Sequence[str], progress: bool = True, refit: bool = False) -> list[Fitted]:
    """Fit (or find in the cache) the grid of every grid point; steps=fitted unless overridden."""
    cfgs = compose_points(expand_grid(["steps=fitted", *overrides]))
    models = ModelCache()
    with Reporter(progress) as reporter:
        solutions = ReferenceSolutions(reporter)
        return [fit_point(cfg, models, solutions, refit) for cfg in cfgs]


def fit_point(cfg: DictConfig, models: ModelCache, solutions: ReferenceSolutions, refit: bool = False) -> Fitted:
    """Fit one point's grid on its calibration noise and store it (reuse a stored one unless refit)."""
    check(cfg.steps.name == "fitted", f"diffbench fit fits steps=fitted grids (got steps={cfg.steps.name})")
    method = str(cfg.steps.method)
    check(method in METHODS, f"steps.method '{method}' is unknown; choose one of: {', '.join(METHODS)}")
    run = settings(cfg)
    with assetstore.cache_root(cfg.cache_dir):
        model = models.get(cfg.model)
    request = artefacts.fit_request(cfg, model_identity(cfg.model)[2], run.nfe, model.schedule)
    key = config_hash(request)
    stored = None if refit else artefacts.load(cfg.cache_dir, key)
    if stored is not None:
        return Fitted(key, artefacts.artefact_path(cfg.cache_dir, key), stored, True)
    spec = get_solver(str(cfg.solver.name))
    options = spec.bind({k: v for k, v in to_dict(cfg.solver).items() if k != "name"})
    span = resolve_span(model.schedule, cfg.steps.sigma_min, cfg.steps.sigma_max, bool(cfg.steps.final_zero))
    calib = request["calibration"]
    calib_run = RunSettings(run.nfe, calib["seed"], calib["n"], calib["n"], run.device, run.dtype)
    calib_cfg = cast(DictConfig, OmegaConf.merge(cfg, {"seed": calib["seed"], "n_samples": calib["n"]}))
    with assetstore.cache_root(cfg.cache_dir):  # the field a sweep samples: its conditions and guidance bound
        sampled = models.for_point(calib_cfg, calib["n"])
    counter = CountingDenoiser(sampled.bind(range(calib["n"])))
    x = initial_noise(NoiseSource(calib["seed"], range(calib["n"]), run.device), sample_shape(sampled),
                      sampled.schedule, span.sigma_max, run.dtype)
    rmse = partial(calibration_rmse, calib_cfg, spec, options, calib_run, solutions, span, sampled)
    reference = partial(solutions.get, calib_cfg, sampled, karras_plan(spec, options, calib_run, span, sampled),
                        calib_run, calib_run.n_samples)  # solved once per calibration set, when a method asks
    fit, method_options = METHODS[method]
    start = time.perf_counter()

    def solve_with(denoiser: Denoiser, x0: Tensor, grid: Tensor) -> Tensor:
        return spec.fn(denoiser, x0, grid, noise=solver_noise(calib, run), **options)

    result = fit(Calibration(counter, x, calib["seed"], span, spec.steps_for_nfe(run.nfe, span.final_zero, options),
                             lambda grid: rmse(counter, grid), reference, partial(solve_with, counter), solve_with))
    seconds = time.perf_counter() - start
    sigmas, extra = result if isinstance(result, tuple) else (result, {})
    artefact = {"key": key, "request": request, "sigmas": sigmas.tolist(), artefacts.FIT_SECONDS: seconds,
                artefacts.FIT_NFE: counter.sample_evals, "method_options": method_options, **extra,
                "calibration_rmse": {"fitted": rmse(sampled, sigmas, extra), "karras": rmse(sampled, None)},
                "created": datetime.now(UTC).isoformat(timespec="seconds")}
    return Fitted(key, artefacts.save(cfg.cache_dir, key, artefact), artefact, False)


def calibration_rmse(cfg: DictConfig, spec: SolverSpec, options: dict[str, Any], run: RunSettings,
                     solutions: ReferenceSolutions, span: Span, sampled: Denoiser, model: Denoiser,
                     sigmas: Tensor | None, extra: dict[str, Any] | None = None) -> float:
    """RMSE vs the RK45 reference of `sampled` (the point's model) on the calibration samples of a grid (Karras
    when sigmas is None), solved by `model` (sampled, or the fit's counter of it) with the solver corrections an
    artefact's `extra` fields hold (PAS)."""
    plan = karras_plan(spec, options, run, span, sampled, sigmas)
    reference = solutions.get(cfg, sampled, plan, run, run.n_samples)
    x = sample_batch(model, pas.corrected_plan(plan, extra or {}), range(run.n_samples), run.seed,
                     sample_shape(sampled), run.device, run.dtype).x
    return float((x.cpu() - reference).pow(2).mean().sqrt())


def solver_noise(calib: dict[str, int], run: RunSettings) -> NoiseSource:
    """The calibration samples' solver noise as sample_batch draws it: after the draw of the initial noise."""
    noise = NoiseSource(calib["seed"], range(calib["n"]), run.device)
    noise.draws = 1
    return noise


def karras_plan(spec: SolverSpec, options: dict[str, Any], run: RunSettings, span: Span, model: Denoiser,
                sigmas: Tensor | None = None) -> Plan:
    """The run solver's plan on an explicit grid, or on the Karras grid when sigmas is None."""
    grid: dict[str, Any]
    grid = {"step_grid": "explicit", "step_options": {"sigmas": sigmas.tolist()}} if sigmas is not None else {}
    return make_plan(spec, run.nfe, model.schedule, solver_options=options, sigma_min=span.sigma_min,
                     sigma_max=span.sigma_max, final_zero=span.final_zero, **grid)
