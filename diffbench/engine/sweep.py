"""Sweeps: run the resolved points the table lacks, one row each, appended under the table's lock.

A point samples with common noise (sample i's noise is a function of (seed, i) only), streams its
batches into its metric suite, compares the first samples with their cached same-noise reference
solutions, and appends one row to the results table. A killed sweep therefore loses at most the
point in flight, and a rerun of the same sweep skips every point whose config hash is stored.
"""
from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch
from torch import Tensor

from diffbench import assetstore, distributed, results, warmup
from diffbench import columns as col
from diffbench.atomicio import check_writable, remove_orphans
from diffbench.batching import BatchSizer
from diffbench.columns import MetricValue, ResultRow
from diffbench.engine.discrete import is_discrete, measure_discrete
from diffbench.engine.points import POINT_ERRORS, ModelCache, Point, prepare
from diffbench.engine.progress import Reporter
from diffbench.engine.references import ReferenceSolutions
from diffbench.engine.rows import record, save_grid_samples, split_fixed, start_row
from diffbench.engine.shares import Share, merge_shares
from diffbench.errors import check
from diffbench.metrics.feed import MetricFeed
from diffbench.metrics.suite import MetricContext, MetricSuite
from diffbench.models import Denoiser
from diffbench.models.text import text_seconds
from diffbench.sampling import Batch, Plan, decode_timed, first_nonfinite, sample_points, set_tf32

GRID_SAMPLES = 16  # samples kept per point for the sample-grid figures


def overlapped(device: torch.device) -> bool:
    """Whether a point's decode and metric work run in a worker thread, overlapping the sampling (CUDA only: on a
    CPU the threads would compete for the same cores); tests force it on to check the results do not change."""
    return device.type == "cuda"


@dataclass
class SweepSummary:
    """What one `diffbench sweep` did."""

    table: Path
    keys: list[str]
    ran: int
    skipped: int
    failed: int
    time_append_s: float = 0.0  # seconds appending the rows to the table (after each row was assembled)

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
    check_shard(index, count)
    points = prepare(overrides)
    table = results.table_paths(points[0].cfg.out).parquet
    failed, t_append = 0, 0.0
    with distributed.session(p.run.device for p in points), assetstore.cache_root(points[0].cfg.cache_dir):
        done = cast(set[str], distributed.broadcast(results.done_keys(table, ok_only=retry_failed)
                                                   if distributed.is_main() else None))
        todo = [p for p in points[index::count] if p.key not in done]
        with Reporter(progress and distributed.is_main()) as reporter:
            runner = Runner(reporter, command)
            with distributed.main_first():  # rank 0 readies folders and builds caches, the others then read them
                if todo:
                    ready_folders(table.parent, Path(points[0].cfg.cache_dir))
                runner.warm_up(todo)  # missing weights or bad data stop the sweep here, before any row is written
            with reporter.task("sweep", len(todo)) as advance:
                for done_count, point in enumerate(todo, 1):
                    row = runner.run(point)
                    if distributed.is_main():
                        start = time.perf_counter()
                        results.append(table, [row], replace=retry_failed)
                        t_append += time.perf_counter() - start
                        failed += row[col.STATUS] != col.OK
                        on_row(row)
                    advance(1)
                    reporter.point_done(done_count, len(todo), point.label, row[col.STATUS], row[col.TIME_TOTAL] or 0.0)
    return SweepSummary(table, [p.key for p in points], len(todo), len(points) - len(todo), failed, t_append)


def check_shard(index: int, count: int) -> None:
    """--shard I/N must name one of N shares."""
    check(count >= 1 and 0 <= index < count, f"--shard {index}/{count}: need 0 <= index < count")


def ready_folders(out: Path, cache: Path) -> None:
    """Before any point runs: out and cache_dir must be writable (UsageError); temporaries of killed runs go."""
    check_writable(out, "out")
    check_writable(cache, "cache_dir")
    for folder in (out, out / "samples", cache / "reference", cache / "refs"):
        remove_orphans(folder)


class Runner:
    """Runs points, holding what they share: built models, extractors, dataset statistics, reference solutions."""

    def __init__(self, reporter: Reporter, command: Sequence[str] | None = None):
        self.reporter, self.command = reporter, command
        self.models = ModelCache()
        self.metrics = MetricContext(reporter)
        self.solutions = ReferenceSolutions(reporter)

    def warm_up(self, points: Sequence[Point]) -> None:
        """Build every extractor and dataset statistic the points need (UsageError if impossible)."""
        seen = set()
        for point in points:
            cfg = point.cfg
            key = json.dumps([point.config["metrics"], point.config["dataset"], point.model_key, str(point.run.device)],
                             sort_keys=True)
            if point.plan is not None and key not in seen and not is_discrete(point):
                seen.add(key)
                MetricSuite(cfg, self.models.get(cfg.model), point.run, self.metrics)

    def run(self, point: Point) -> dict[str, Any]:
        """Sample one point, compute its metrics and return its row (a failure is a row with its reason)."""
        row = start_row(point, self.command)
        if point.plan is None:
            return record(point, row.update(status=col.FAILED, reason=point.reason))
        results.reset_peak_memory(point.run.device)
        set_tf32(bool(point.cfg.tf32))
        start, warm = time.perf_counter(), warmup.total()
        try:
            extra, values = self._measure(point, row)
        except POINT_ERRORS as e:
            extra, values = {}, None
            row.update(status=col.FAILED, reason=f"{type(e).__name__}: {e}".splitlines()[0])
        row.update(time_total_s=time.perf_counter() - start, time_warmup_s=warmup.total() - warm,
                   **results.peak_memory(point.run.device))
        return record(point, row, extra, values)

    def _measure(self, point: Point, row: ResultRow) -> tuple[dict[str, Any], Mapping[str, MetricValue] | None]:
        """Sampling + metrics of one point: sets the row's measured columns, returns (extra columns, metrics)."""
        cfg, run, plan = point.cfg, point.run, point.plan
        assert plan is not None
        if is_discrete(point):
            return measure_discrete(point, self.models.get(cfg.model), row)
        assert isinstance(plan, Plan)  # a continuous solver spec always gets a Plan
        model = self.models.for_point(cfg, run.n_samples)  # with its conditions and guidance bound, if any
        suite = MetricSuite(cfg, self.models.get(cfg.model), run, self.metrics, getattr(model, "conditions", None),
                            plan)
        n_err = min(run.n_samples, int(cfg.metrics.error_samples or run.n_samples))
        solutions = (model.decode(self.solutions.get(cfg, model, plan, run, n_err)) if suite.needs_solutions
                     else None)  # compared as images: latent models' references decoded like their samples
        sizer = BatchSizer(run.batch_size, run.device)  # its columns: rank 0's batches under torchrun
        gathered = distributed.gather(distributed.guarded(
            lambda: self._sample_share(point, model, suite, solutions, sizer), POINT_ERRORS))
        if gathered is None:
            return {}, None  # rank 0 writes the row
        share = merge_shares(distributed.unwrap(gathered), suite, GRID_SAMPLES, sizer.size)
        t_sample, nfe_measured = share.time_sampling_s, share.nfe_measured
        row.update(nfe_measured=nfe_measured, nfe_network=share.nfe_network, time_sampling_s=t_sample,
                   time_decode_s=share.time_decode_s, time_text_encoder_s=text_seconds(model), **sizer.columns())
        if share.reason:
            row.update(status=col.FAILED, reason=share.reason)
            return {}, None
        start = time.perf_counter()
        values, extra = suite.compute()
        t_metrics = share.time_metrics_s + time.perf_counter() - start
        start = time.perf_counter()
        row.update(samples_path=save_grid_samples(cfg.out, point.key, share.grid))
        row.update(status=col.OK, reason=None, time_metrics_s=t_metrics, time_writing_s=time.perf_counter() - start,
                   time_per_nfe_s=t_sample / nfe_measured if nfe_measured else math.nan, **suite.clock.columns())
        return split_fixed(extra, row), values

    def _sample_share(self, point: Point, model: Denoiser, suite: MetricSuite, solutions: Tensor | None,
                      sizer: BatchSizer) -> Share:
        """Sample this rank's batches of a point (all of them on one process) into its metric suite."""
        run, share = point.run, Share()
        assert isinstance(point.plan, Plan)  # only runnable continuous points are sampled (see _measure)
        indices = distributed.shard_indices(run.n_samples, run.batch_size)
        background = overlapped(run.device)
        # decode and metric kernels run on their own stream (CUDA), apart from the sampling's
        stream = torch.cuda.Stream(run.device) if background and run.device.type == "cuda" else None

        def images_of(batch: Batch, seconds: float) -> Tensor | None:
            """The batch decoded (latent models: their VAE) and recorded in the share; None once the share failed."""
            if share.reason:
                return None
            images, decode_seconds = decode_timed(model, batch.x, run.device, stream)
            share.time_decode_s += decode_seconds
            share.add(batch.indices, images, seconds, batch.nfe_measured, GRID_SAMPLES, batch.nfe_network)
            reason = first_nonfinite(images)
            if reason:
                share.fail(batch.indices, reason)
                return None
            return images

        with self.reporter.task(point.label, len(indices)) as advance, \
                MetricFeed(suite, solutions, background=background, stream=stream) as feed:
            for batch, seconds in sample_points(model, point.plan, run, indices, advance, sizer):
                if share.reason:  # a background decode found non-finite images: stop sampling
                    break
                feed.submit(functools.partial(images_of, batch, seconds), batch.indices)
        if share.reason:
            return share
        share.time_metrics_s = feed.seconds
        return share.capture(suite)
