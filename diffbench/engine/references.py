"""Reference solutions: same-noise RK45 solutions of the sampling ODE that solver error is measured against.

A point's reference solutions depend on the model, seed, sample range, noise span, tolerances and
dtype only, so points of one sweep share them; they are cached on disk under
``<cache_dir>/reference/`` with a SHA-256 of their tensors (a damaged file is solved again, with a
warning).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from torch import Tensor

from diffbench import distributed, tensorcache
from diffbench.config import RunSettings, config_hash, inputs_of, to_dict
from diffbench.engine.points import POINT_ERRORS
from diffbench.metrics.suite import Tasks
from diffbench.models import Denoiser
from diffbench.sampling import Plan, make_plan, sample_points

REFERENCE_CHUNK = 128  # reference solutions run in fixed chunks so they never depend on batch_size


# Bumped when the reference solver's algorithm changes, so cached solutions of the old one are not reused
# (2: rk45 is diffbench's own Dormand-Prince with per-sample step control, no longer torchdiffeq's batch-wide).
REFERENCE_ALGORITHM = 2


# Significant digits of the noise span in the key: step grids reach the span's ends only to rounding (Karras 80 ->
# 79.99999999999993, uniform-logSNR 79.99999999999997), and grids of one span must share one reference solution.
SPAN_DIGITS = 12


def reference_key(cfg: DictConfig, plan: Plan, n: int) -> str:
    """What reference solutions depend on: model, seed, sample range, noise span, tolerances, dtype, algorithm."""
    levels = plan.sigmas[plan.sigmas > 0]
    span = [float(f"{float(v):.{SPAN_DIGITS}g}") for v in (levels[0], levels[-1])]
    data = {"model": to_dict(cfg.model), "seed": int(cfg.seed), "n": n, "dtype": str(cfg.dtype),
            "sigma_max": span[0], "sigma_min": span[1], "final_zero": bool(plan.sigmas[-1] == 0),
            "reference": to_dict(cfg.metrics.get("reference", {})), "algorithm": REFERENCE_ALGORITHM,
            **dict(zip(("conditions", "guidance"), inputs_of(cfg)))}  # left out of the hash while off
    return config_hash(data)


class ReferenceSolutions:
    """Reference solutions by key: from this process, else the disk cache, else solved (and cached) now."""

    def __init__(self, reporter: Tasks):
        self.reporter = reporter
        self._solutions: dict[str, Tensor] = {}

    def get(self, cfg: DictConfig, model: Denoiser, plan: Plan, run: RunSettings, n: int) -> Tensor:
        """Same-noise RK45 solutions for sample indices 0..n-1 over the plan's noise span.

        They run in fixed chunks of REFERENCE_CHUNK samples, so they never depend on batch_size (a chunk
        halved on out-of-memory changes them within the tolerance: RK45 steps a chunk as a whole).
        """
        key = reference_key(cfg, plan, n)
        if key not in self._solutions:
            path = Path(cfg.cache_dir) / "reference" / f"{key}.pt"
            self._solutions[key] = tensorcache.load_or_build(
                path, lambda: {"x": self._solve(cfg, model, plan, run, n)}, "reference solution",
                store=distributed.is_main())["x"]
        return self._solutions[key]

    def _solve(self, cfg: DictConfig, model: Denoiser, plan: Plan, run: RunSettings, n: int) -> Tensor:
        levels = plan.sigmas[plan.sigmas > 0]
        # A one-step plan (sigma_max -> 0) has no span of its own: its reference runs the ODE down to the
        # schedule's sigma_min, so its error is that of the whole jump.
        low = float(levels[-1]) if len(levels) > 1 else float(model.schedule.sigma_min)
        options = to_dict(cfg.metrics.reference)
        ref_plan = make_plan(str(options.pop("solver")), 1, model.schedule, step_grid="uniform_logsnr",
                             solver_options=options, sigma_min=low, sigma_max=float(levels[0]),
                             final_zero=bool(plan.sigmas[-1] == 0))
        chunked = RunSettings(1, run.seed, n, REFERENCE_CHUNK, run.device, run.dtype)
        indices = distributed.shard_indices(n, REFERENCE_CHUNK)  # each rank solves its chunks
        with self.reporter.task("reference solution (RK45)", len(indices)) as advance:
            pieces = distributed.guarded(lambda: [(b.indices, b.x.cpu()) for b, _ in
                                                  sample_points(model, ref_plan, chunked, indices, advance)],
                                         POINT_ERRORS)
        return distributed.rows_by_index(p for ps in distributed.unwrap(distributed.all_gather(pieces)) for p in ps)

