"""Sweeps: expand the grid, validate every point up front, then run the points the table lacks.

A point samples with common noise (sample i's noise is a function of (seed, i) only), streams its
batches into the metrics, compares the first samples with a cached same-noise RK45 reference
(computed once per model, seed, sample range and noise span), and appends one row to the results
table under its lock. A killed sweep therefore loses at most the point in flight, and a rerun of
the same sweep skips every point whose config hash is already stored.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from diffbench import distributed, results, tensorcache
from diffbench.atomicio import check_writable, remove_orphans
from diffbench.batching import FEATURE_BATCH, BatchSizer
from diffbench.config import (RunSettings, compose_points, config_hash, expand_grid, flatten, parse_overrides,
                              point_hash, settings, to_dict)
from diffbench.errors import UsageError, check
from diffbench.data import make_dataset, to_uint8
from diffbench.metrics import (LPIPS, ErrorStats, FeatureExtractor, FrechetTarget, MetricOptions, RefStats,
                               StreamingStats, bootstrap, compute_metrics, load_or_build_reference,
                               make_extractor, parse_metrics)
from diffbench.models import Denoiser, make_model
from diffbench.sampling import Batch, Plan, make_plan, sample_batch
from diffbench.shares import Share, merge_shares
from diffbench.solvers import SolverSpec, get_solver

NFE_POLICIES = ("exact", "nearest_below")
REFERENCE_CHUNK = 128  # the RK45 reference runs in fixed chunks so it never depends on batch_size
GRID_SAMPLES = 16  # samples kept per point for the sample-grid figures
POINT_ERRORS = (UsageError, RuntimeError, ValueError, FloatingPointError)  # a point that raises one is a failed row


# Progress -----------------------------------------------------------------------------------------

class Reporter:
    """Rich progress bars (stderr) for the sweep, each point and the reference; silent when off."""

    def __init__(self, enabled: bool):
        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 console=self.console, disable=not (enabled and self.console.is_terminal),
                                 transient=False)

    def __enter__(self) -> Reporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A bar for `total` units; yields advance(n)."""
        task = self.progress.add_task(description, total=total)
        try:
            yield lambda n: self.progress.advance(task, n)
        finally:
            self.progress.remove_task(task)


def progress_callback(advance: Callable[[int], None]) -> Callable[[int, int | None], None]:
    """Adapt a bar's advance(n) to diffbench.metrics' progress(done, total) callbacks."""
    done = [0]

    def progress(count: int, total: int | None) -> None:
        advance(count - done[0])
        done[0] = count

    return progress


# Points -------------------------------------------------------------------------------------------

@dataclass
class Point:
    """One validated grid point: its effective config, run settings and plan (or why it cannot run)."""

    cfg: DictConfig
    run: RunSettings
    nfe_budget: int
    plan: Plan | None
    reason: str | None = None
    overrides: tuple[str, ...] = ()  # the override list that composes this point alone
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = config_hash(self.cfg)

    @property
    def label(self) -> str:
        return f"{self.cfg.solver.name} / {self.cfg.schedule.name} / nfe {self.cfg.nfe}"


class ModelCache:
    """Builds each distinct model config once per process."""

    def __init__(self) -> None:
        self._models: dict[str, Denoiser] = {}

    def get(self, model_cfg: DictConfig) -> Denoiser:
        options = to_dict(model_cfg)
        kind = options.pop("kind", None)
        check(isinstance(kind, str), "model.kind is missing; pick a model with model=<name>")
        key = json.dumps([kind, options], sort_keys=True)
        if key not in self._models:
            self._models[key] = make_model(kind, options)
        return self._models[key]


def feasible_nfe(spec: SolverSpec, budget: int, final_zero: bool, policy: str) -> int | None:
    """The NFE a solver runs under a budget: the budget itself (exact), or the largest valid one below."""
    check(policy in NFE_POLICIES, f"sweep.nfe_policy={policy} is unknown; use one of: {', '.join(NFE_POLICIES)}")
    if policy == "exact" or spec.adaptive:
        return budget
    for nfe in range(budget, 0, -1):
        try:
            spec.steps_for_nfe(nfe, final_zero)
            return nfe
        except UsageError:
            continue
    return None


def step_options(cfg: DictConfig) -> dict[str, Any]:
    """A step-schedule config's own options (everything but its name and span)."""
    return {k: v for k, v in to_dict(cfg.schedule).items() if k not in ("name", "sigma_min", "sigma_max", "final_zero")}


def make_point_plan(cfg: DictConfig, model: Denoiser, nfe: int) -> Plan:
    """The solver plan of a composed config at a given NFE (UsageError on bad input)."""
    solver_options = {k: v for k, v in to_dict(cfg.solver).items() if k != "name"}
    return make_plan(str(cfg.solver.name), nfe, model.schedule, step_schedule=str(cfg.schedule.name),
                     step_options=step_options(cfg), solver_options=solver_options,
                     sigma_min=cfg.schedule.sigma_min, sigma_max=cfg.schedule.sigma_max,
                     final_zero=bool(cfg.schedule.final_zero))


def resolve_point(cfg: DictConfig, models: ModelCache, policy: str = "exact") -> Point:
    """Validate one composed config into a Point; raises UsageError on bad input."""
    run = settings(cfg)
    model = models.get(cfg.model)
    check_metrics(cfg, model, run)
    spec = get_solver(str(cfg.solver.name))
    nfe = feasible_nfe(spec, run.nfe, bool(cfg.schedule.final_zero), policy)
    if nfe is None:
        minimum = spec.min_nfe(bool(cfg.schedule.final_zero))
        make_point_plan(cfg, model, minimum)  # validates the rest of the point
        return Point(cfg, run, run.nfe, None, f"nfe budget {run.nfe} is below solver '{spec.name}''s minimum of {minimum}")
    plan = make_point_plan(cfg, model, nfe)
    effective = cfg.copy()
    effective.nfe = nfe
    return Point(effective, run, run.nfe, plan)


def prepare(overrides: Sequence[str]) -> list[Point]:
    """Compose and validate every grid point (nothing runs or is written before all are valid)."""
    for o in parse_overrides(overrides):
        check(not o.key_or_group.startswith("hydra"),
              f"{o.input_line}: a Hydra launcher option; `diffbench sweep` (diffbench.launch) takes it and runs the "
              "points as jobs")
    grid = expand_grid(overrides)
    cfgs = compose_points(grid)
    outs = {str(c.out) for c in cfgs}
    check(len(outs) == 1, f"out takes one value per sweep (got {', '.join(sorted(outs))}); run one sweep per out")
    models = ModelCache()
    points: dict[str, Point] = {}
    for point_overrides, cfg in zip(grid, cfgs):
        policy = str(cfg.sweep.get("nfe_policy", "exact"))
        point = resolve_point(cfg, models, policy)
        point.overrides = tuple(point_overrides)
        points.setdefault(point.key, point)  # budgets that resolve to one NFE run once
    return list(points.values())


# Sampling -------------------------------------------------------------------------------------------

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
    batch = sample_batch(model, plan, idx, run.seed, _shape(model), device=run.device, dtype=run.dtype)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    return batch, time.perf_counter() - start


def set_tf32(enabled: bool) -> None:
    """TF32 tensor-core maths for float32 matmuls and convolutions (Ampere+ GPUs); off = true float32."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def _shape(model: Denoiser) -> tuple[int, ...]:
    shape = getattr(model, "shape", None)
    check(shape is not None, "the model does not declare its sample shape (model.shape)")
    return tuple(shape)


def first_nonfinite(x: Tensor) -> str | None:
    """A reason string when samples hold NaN or inf."""
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    if bool(bad.any()):
        return f"{int(bad.sum())} samples contain NaN or inf (solver diverged)"
    return None


def reference_key(cfg: DictConfig, plan: Plan, n: int) -> str:
    """What a reference solution depends on: model, seed, sample range, noise span, tolerances, dtype."""
    levels = plan.sigmas[plan.sigmas > 0]
    data = {"model": to_dict(cfg.model), "seed": int(cfg.seed), "n": n, "dtype": str(cfg.dtype),
            "sigma_max": float(levels[0]), "sigma_min": float(levels[-1]), "final_zero": bool(plan.sigmas[-1] == 0),
            "reference": to_dict(cfg.metrics.get("reference", {}))}
    return config_hash(data)


# Running ------------------------------------------------------------------------------------------

@dataclass
class SweepSummary:
    """What one `diffbench sweep` did."""

    table: Path
    keys: list[str]
    ran: int
    skipped: int
    failed: int

    def frame(self) -> pd.DataFrame:
        df = results.load(self.table)
        return df[df[results.KEY].isin(self.keys)] if not df.empty else df


def run_sweep(overrides: Sequence[str] = (), *, progress: bool = True, shard: tuple[int, int] = (0, 1),
              retry_failed: bool = False, command: Sequence[str] | None = None,
              on_row: Callable[[dict[str, Any]], None] = lambda row: None) -> SweepSummary:
    """Run every grid point not yet in the table (this shard's share, `shard` = (index, count)).

    Under torchrun every rank runs the same points, sampling its share of each; rank 0 writes the
    rows (diffbench.distributed). `shard` splits the points across jobs and composes with it.
    """
    index, count = shard
    check(count >= 1 and 0 <= index < count, f"--shard {index}/{count}: need 0 <= index < count")
    points = prepare(overrides)
    table = results.table_paths(points[0].cfg.out).parquet
    failed = 0
    with distributed.session(p.run.device for p in points):
        done = distributed.broadcast(results.done_keys(table, ok_only=retry_failed) if distributed.is_main() else None)
        todo = [p for p in points[index::count] if p.key not in done]
        with Reporter(progress and distributed.is_main()) as reporter:
            runner = Runner(reporter, command)
            with distributed.main_first():  # rank 0 readies folders and builds caches, the others then read them
                if todo:
                    ready_folders(table.parent, Path(points[0].cfg.cache_dir))
                runner.warm_up(todo)  # missing weights or bad data stop the sweep here, before any row is written
            with reporter.task("sweep", len(todo)) as advance:
                for point in todo:
                    row = runner.run(point)
                    if distributed.is_main():
                        results.append(table, [row], replace=retry_failed)
                        failed += row["status"] != "ok"
                        on_row(row)
                    advance(1)
    return SweepSummary(table, [p.key for p in points], len(todo), len(points) - len(todo), failed)


def ready_folders(out: Path, cache: Path) -> None:
    """Before any point runs: out and cache_dir must be writable (UsageError); temporaries of killed runs go."""
    check_writable(out, "out")
    check_writable(cache, "cache_dir")
    for folder in (out, out / "samples", cache / "reference", cache / "refs"):
        remove_orphans(folder)


class Runner:
    """Runs points, holding what they share: built models, extractors, reference statistics and solutions."""

    def __init__(self, reporter: Reporter, command: Sequence[str] | None = None):
        self.reporter, self.command = reporter, command
        self.models = ModelCache()
        self.metrics = MetricContext(reporter)
        self._solutions: dict[str, Tensor] = {}

    def warm_up(self, points: Sequence[Point]) -> None:
        """Build every extractor and reference statistic the points need (UsageError if impossible)."""
        seen = set()
        for point in points:
            cfg = point.cfg
            key = json.dumps([to_dict(cfg.metrics), to_dict(cfg.dataset), to_dict(cfg.model), str(point.run.device)],
                             sort_keys=True)
            if point.plan is not None and key not in seen:
                seen.add(key)
                MetricSuite(cfg, self.models.get(cfg.model), point.run, self.metrics)

    def run(self, point: Point) -> dict[str, Any]:
        """Sample one point, compute its metrics and return its row (a failure is a row with its reason)."""
        row = base_row(point, self.command)
        if point.plan is None:
            return {**row, "status": "failed", "reason": point.reason}
        results.reset_peak_memory(point.run.device)
        set_tf32(bool(point.cfg.get("tf32", False)))
        start = time.perf_counter()
        try:
            measured = self._measure(point)
        except POINT_ERRORS as e:
            measured = {"status": "failed", "reason": f"{type(e).__name__}: {e}".splitlines()[0]}
        return {**row, **measured, "time_total_s": time.perf_counter() - start, **results.peak_memory(point.run.device)}

    def _measure(self, point: Point) -> dict[str, Any]:
        """Sampling + metrics of one point; returns the row's measured columns."""
        cfg, run, plan = point.cfg, point.run, point.plan
        assert plan is not None
        model = self.models.get(cfg.model)
        suite = MetricSuite(cfg, model, run, self.metrics)
        n_err = min(run.n_samples, int(cfg.metrics.get("error_samples") or run.n_samples))
        reference = self.reference_solution(cfg, model, plan, run, n_err) if suite.wants_reference else None
        sizer = BatchSizer(run.batch_size, run.device)  # its columns: rank 0's batches under torchrun
        gathered = distributed.gather(distributed.guarded(
            lambda: self._sample_share(point, model, suite, reference, sizer), POINT_ERRORS))
        if gathered is None:
            return {}  # rank 0 writes the row
        share = merge_shares(distributed.unwrap(gathered), suite, GRID_SAMPLES)
        t_sample, nfe_measured = share.time_sampling_s, share.nfe_measured
        if share.reason:
            return {"status": "failed", "reason": share.reason, "nfe_measured": nfe_measured, "time_sampling_s": t_sample,
                    **sizer.columns()}
        start = time.perf_counter()
        values, extra = suite.compute()
        t_metrics = share.time_metrics_s + time.perf_counter() - start
        return {"status": "ok", "reason": None, "nfe_measured": nfe_measured, "time_sampling_s": t_sample,
                "time_metrics_s": t_metrics, "time_per_nfe_s": t_sample / nfe_measured if nfe_measured else math.nan,
                "samples_path": save_grid_samples(cfg, point.key, share.grid), **extra, **sizer.columns(),
                **results.metric_row(values)}

    def _sample_share(self, point: Point, model: Denoiser, suite: MetricSuite, reference: Tensor | None,
                      sizer: BatchSizer) -> Share:
        """Sample this rank's batches of a point (all of them on one process) into its metric suite."""
        run, share = point.run, Share()
        indices = distributed.shard_indices(run.n_samples, run.batch_size)
        with self.reporter.task(point.label, len(indices)) as advance, \
                MetricFeed(suite, reference, background=run.device.type == "cuda") as feed:
            for batch, seconds in sample_points(model, point.plan, run, indices, advance, sizer):
                share.add(batch.indices, batch.x, seconds, batch.nfe_measured, GRID_SAMPLES)
                reason = first_nonfinite(batch.x)
                if reason:
                    share.fail(batch.indices, reason)
                    return share
                feed.submit(batch.x, batch.indices)
        share.time_metrics_s = feed.seconds
        return share.capture(suite)

    def reference_solution(self, cfg: DictConfig, model: Denoiser, plan: Plan, run: RunSettings, n: int) -> Tensor:
        """Same-noise RK45 solutions for sample indices 0..n-1 over the plan's noise span, cached on disk.

        They run in fixed chunks of REFERENCE_CHUNK samples, so they never depend on batch_size (a chunk
        halved on out-of-memory changes them within the tolerance: RK45 steps a chunk as a whole). The
        cache file carries a SHA-256: a damaged one is solved again, with a warning.
        """
        key = reference_key(cfg, plan, n)
        if key not in self._solutions:
            path = Path(cfg.cache_dir) / "reference" / f"{key}.pt"
            self._solutions[key] = tensorcache.load_or_build(
                path, lambda: {"x": self._solve_reference(cfg, model, plan, run, n)}, "reference solution",
                store=distributed.is_main())["x"]
        return self._solutions[key]

    def _solve_reference(self, cfg: DictConfig, model: Denoiser, plan: Plan, run: RunSettings, n: int) -> Tensor:
        levels = plan.sigmas[plan.sigmas > 0]
        # A one-step plan (sigma_max -> 0) has no span of its own: its reference runs the ODE down to the
        # schedule's sigma_min, so its error is that of the whole jump.
        low = float(levels[-1]) if len(levels) > 1 else float(model.schedule.sigma_min)
        options = to_dict(cfg.metrics.reference)
        ref_plan = make_plan(str(options.pop("solver")), 1, model.schedule, step_schedule="uniform_logsnr",
                             solver_options=options, sigma_min=low, sigma_max=float(levels[0]),
                             final_zero=bool(plan.sigmas[-1] == 0))
        chunked = RunSettings(1, run.seed, n, REFERENCE_CHUNK, run.device, run.dtype)
        indices = distributed.shard_indices(n, REFERENCE_CHUNK)  # each rank solves its chunks
        with self.reporter.task("reference solution (RK45)", len(indices)) as advance:
            pieces = distributed.guarded(lambda: [(b.indices, b.x.cpu()) for b, _ in
                                                  sample_points(model, ref_plan, chunked, indices, advance)],
                                         POINT_ERRORS)
        return distributed.rows_by_index(p for ps in distributed.unwrap(distributed.all_gather(pieces)) for p in ps)


def save_grid_samples(cfg: DictConfig, key: str, x: Tensor) -> str:
    """Keep the first samples of a point (same noise across points) for the sample-grid figures."""
    rel = Path("samples") / f"{key}.npz"
    results.save_npz(Path(cfg.out) / rel, x=x.float().numpy())
    return str(rel)


def base_row(point: Point, command: Sequence[str] | None) -> dict[str, Any]:
    """The config and provenance columns every row has, successful or not."""
    cfg, plan = point.cfg, point.plan
    spec = get_solver(str(cfg.solver.name))
    fields = flatten({k: v for k, v in to_dict(cfg).items() if k != "sweep"})
    row: dict[str, Any] = {results.KEY: point.key, "point_hash": point_hash(cfg), **fields, "nfe_policy": cfg.sweep.get("nfe_policy", "exact"),
                           "nfe_budget": point.nfe_budget, "solver_order": spec.order,
                           "solver_stochastic": spec.is_stochastic({k: v for k, v in to_dict(cfg.solver).items() if k != "name"}),
                           "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           **results.provenance(point.run.device, command), "world_size": distributed.world_size()}
    if plan is not None:
        levels = plan.sigmas[plan.sigmas > 0]
        row.update(nfe_declared=plan.nfe_declared, steps=plan.steps, sigma_max_used=float(levels[0]),
                   sigma_min_used=float(levels[-1]))
    return row


# Metrics ------------------------------------------------------------------------------------------

class MetricFeed:
    """Feeds sample batches to a MetricSuite in order, on the samples' device (no host round trip).

    With background=True (CUDA) each update runs in a worker thread, so the metric work of batch k
    (CPU resize, Inception on the GPU) overlaps the sampling of batch k+1; `seconds` sums the updates.
    """

    def __init__(self, suite: MetricSuite, reference: Tensor | None, background: bool):
        self.suite, self.reference, self.seconds = suite, reference, 0.0
        self.pool = ThreadPoolExecutor(max_workers=1) if background else None
        self.pending: Future[None] | None = None

    def __enter__(self) -> MetricFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown()

    def submit(self, x: Tensor, indices: Sequence[int]) -> None:
        """Wait for the previous batch's update, then start this one's."""
        self.wait()
        if self.pool is None:
            self._update(x, indices)
        else:
            self.pending = self.pool.submit(self._update, x, indices)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def _update(self, x: Tensor, indices: Sequence[int]) -> None:
        start = time.perf_counter()
        self.suite.update(x, indices, self.reference)
        self.seconds += time.perf_counter() - start


class MetricContext:
    """Extractors and reference statistics shared by the points of one sweep (built once each)."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter
        self._extractors: dict[str, FeatureExtractor] = {}
        self._refs: dict[str, RefStats] = {}
        self._targets: dict[str, FrechetTarget] = {}

    def extractor(self, cfg: DictConfig, device: torch.device) -> FeatureExtractor:
        """metrics.extractor: inception | random_conv | auto (inception if its weights resolve; on a
        CPU only with metrics.inception_on_cpu, as Inception is too slow there for a quick sweep)."""
        m = cfg.metrics
        name = str(m.extractor)
        if name == "auto" and device.type == "cpu" and not m.get("inception_on_cpu", False):
            name = "random_conv"
        options = {"resize_mode": str(m.resize_mode), "device": device}
        if name in ("inception", "auto"):
            options.update(weights=m.get("extractor_weights"), dtype=str(m.get("extractor_dtype", "float32")),
                           channels_last=bool(m.get("extractor_channels_last", False)))
        key = json.dumps([name, str(options)])
        if key not in self._extractors:
            self._extractors[key] = make_extractor(name, **options)
        return self._extractors[key]

    def frechet_target(self, ref: RefStats, device: torch.device) -> FrechetTarget:
        """The reference's Gaussian with its covariance square root, computed once per reference."""
        if ref.id not in self._targets:
            self._targets[ref.id] = FrechetTarget.of(ref.stats, device)
        return self._targets[ref.id]

    def reference(self, cfg: DictConfig, model: Denoiser, extractor: FeatureExtractor, batch_size: int) -> RefStats:
        """The dataset's feature statistics, from the cache or built now (with a progress bar)."""
        ref_n = cfg.metrics.get("ref_n")
        key = json.dumps([to_dict(cfg.dataset), to_dict(cfg.model), extractor.identity(), ref_n], sort_keys=True)
        if key not in self._refs:
            dataset = make_dataset(to_dict(cfg.dataset), model=model, model_config=to_dict(cfg.model))
            n = len(dataset) if ref_n is None else int(ref_n)
            with self.reporter.task(f"reference features ({extractor.name})", n) as advance:
                self._refs[key] = load_or_build_reference(dataset, extractor, n, cfg.cache_dir, batch_size=min(batch_size, FEATURE_BATCH),
                                                          progress=progress_callback(advance))
        return self._refs[key]


def check_metrics(cfg: DictConfig, model: Denoiser, run: RunSettings) -> None:
    """Metric choices that cannot work with this model or sample count (UsageError naming the fix)."""
    feature, paired = parse_metrics(list(cfg.metrics.names))
    shape = getattr(model, "shape", ())
    if feature or "lpips" in paired:
        check(len(shape) == 3 and shape[0] in (1, 3),
              f"metrics {', '.join(feature or paired)} need image samples [1 or 3, H, W] but the model's shape "
              f"is {tuple(shape)}; use metrics=error_only for this model")
    if feature:
        check(run.n_samples >= 2, f"metrics {', '.join(feature)} need n_samples >= 2 (got {run.n_samples})")


class MetricSuite:
    """Streams one point's sample batches into its metrics (diffbench.metrics' public API).

    Feature metrics (fd, kid, is, prdc) run on uint8 images through one extractor pass; they are
    named after the extractor unless it is Inception (fid, kid, ...), so a Frechet distance on
    random_conv features reads `fd_random_conv`, never FID. solver_error compares the first
    metrics.error_samples samples with the same-noise reference solution (`rmse_ref`).
    """

    def __init__(self, cfg: DictConfig, model: Denoiser, run: RunSettings, context: MetricContext):
        self.cfg, self.context = cfg, context
        self.feature, self.paired = parse_metrics(list(cfg.metrics.names))
        self.wants_reference = bool(self.paired)
        self.error = ErrorStats()
        self.lpips = (LPIPS(str(cfg.metrics.get("lpips_net", "alex")), run.device, cfg.metrics.get("lpips_weights"))
                      if "lpips" in self.paired else None)
        self.extractor = context.extractor(cfg, run.device) if self.feature else None
        self.ref = context.reference(cfg, model, self.extractor, run.batch_size) if self.extractor else None
        self.stats = StreamingStats(keep_features=True, device=self.extractor.device) if self.extractor else None

    def update(self, x: Tensor, indices: Sequence[int], reference: Tensor | None) -> None:
        if self.extractor is not None:
            for part in x.split(FEATURE_BATCH):  # batch_size=auto may hand over thousands of samples
                out = self.extractor(to_uint8(part))
                self.stats.update(out.features, out.logits)
        if reference is not None:
            keep = [k for k, i in enumerate(indices) if i < len(reference)]
            if keep:
                pairs = x[keep], reference[[indices[k] for k in keep]].to(x)
                self.error.update(*pairs)
                if self.lpips is not None:
                    self.lpips.update(to_uint8(pairs[0]), to_uint8(pairs[1]))

    def compute(self) -> tuple[dict[str, results.MetricValue], dict[str, Any]]:
        """(metric values with intervals, extra row columns: extractor, reference id, notes, ...)."""
        values, extra = self._feature_metrics() if self.stats is not None else ({}, {})
        if "solver_error" in self.paired:
            mse = self.error.per_sample_mse
            n_boot = int(self.cfg.metrics.get("error_n_boot", 0))
            if n_boot >= 2:
                iv = bootstrap(lambda idx: math.sqrt(float(mse[idx].mean())), len(mse), n_boot,
                               float(self.cfg.metrics.get("ci_level", 0.95)), nonnegative=True)
                values["rmse_ref"] = results.MetricValue(iv.estimate, iv.low, iv.high)
            else:
                values["rmse_ref"] = results.MetricValue(self.error.result()["rmse"])
            extra["n_error_samples"] = len(mse)
        if self.lpips is not None:
            values["lpips_ref"] = results.MetricValue(self.lpips.result()["lpips"])
            extra["lpips_weights_check"] = self.lpips.weights_check
        return values, extra

    def _feature_metrics(self) -> tuple[dict[str, results.MetricValue], dict[str, Any]]:
        opts = metric_options(self.cfg, self.extractor.device)
        gen = self.stats.finalize(self.extractor.identity())
        target = self.context.frechet_target(self.ref, self.extractor.device)  # one eigh per reference
        out = compute_metrics(gen, self.ref, self.feature, opts, self.extractor.logits_unavailable, target)
        return feature_values(out, self.extractor)


def metric_options(cfg: DictConfig, device: torch.device) -> MetricOptions:
    """The metrics config group as diffbench.metrics' MetricOptions."""
    fields = {f.name for f in dataclasses.fields(MetricOptions)} - {"device"}
    return MetricOptions(**{k: v for k, v in to_dict(cfg.metrics).items() if k in fields}, device=str(device))


def feature_values(out: dict[str, Any], extractor: FeatureExtractor) -> tuple[dict[str, results.MetricValue], dict[str, Any]]:
    """compute_metrics' dict as labelled metric values plus row columns (extractor, reference id, notes).

    A metric keeps its own name only on Inception features (`fid`, `kid`, ...); on other features
    it carries the extractor's name (`fd_random_conv`), so it is never mistaken for FID.
    """
    suffix = "" if extractor.name == "inception" else f"_{extractor.name}"
    values: dict[str, results.MetricValue] = {}
    extra: dict[str, Any] = {}
    for name in ("fd", "kid", "is", "precision", "recall", "density", "coverage"):
        if out.get(name) is not None:
            label = ("fid" if name == "fd" and not suffix else name) + suffix
            values[label] = results.MetricValue(out[name], out.get(f"{name}_low"), out.get(f"{name}_high"))
            if out.get(f"{name}_std") is not None:
                extra[f"{label}_std"] = out[f"{name}_std"]
    notes = extractor.notes + list(out["notes"])
    extra.update(feature_extractor=out["feature_extractor"], resize_mode=out["resize_mode"], ref_id=out["ref_id"],
                 n_ref=out["n_ref"], weights_check=extractor.weights_check, ci=out["ci"],
                 notes="; ".join(notes) or None)
    return values, extra
