"""The metric suite of a point: extractors and dataset statistics shared across points, streamed updates.

Feature metrics (fd, kid, is, prdc: one extractor pass), paired ones (solver_error, lpips, exact: vs the reference
solutions), text-to-image ones (metrics.text_image) and label ones (class_accuracy, fd_per_class) take batches through a
MetricFeed (metrics.feed); progress goes to any object with `task(description, total)` (engine.progress).
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from omegaconf import DictConfig
from torch import Tensor

from diffbench.batching import FEATURE_BATCH
from diffbench.columns import MetricValue
from diffbench.config import RunSettings, to_dict
from diffbench.data import ImageDataset, make_dataset, to_uint8
from diffbench.metrics.classifier import class_accuracy
from diffbench.metrics.error import ErrorStats
from diffbench.metrics.evaluate import MetricOptions, compute_metrics, feature_values, parse_metrics
from diffbench.metrics.exact import ExactSamples
from diffbench.metrics.features import INCEPTION_EXTRACTORS, FeatureExtractor, make_extractor
from diffbench.metrics.fid import FrechetTarget
from diffbench.metrics.lpips import LPIPS
from diffbench.metrics.per_class import FD_PER_CLASS, per_class_fd
from diffbench.metrics.refs import RefStats, load_or_build_reference, load_published
from diffbench.metrics.stats import StreamingStats
from diffbench.metrics.text_image import TextImageMetrics
from diffbench.metrics.uncertainty import bootstrap
from diffbench.models import Denoiser
from diffbench.models.conditions import ConditionSet
from diffbench.sampling import Plan
from diffbench.stageclock import StageClock


class Tasks(Protocol):
    """Where progress goes: a bar of `total` units yielding advance(n)."""

    def task(self, description: str, total: int) -> AbstractContextManager[Callable[[int], None]]: ...


def progress_callback(advance: Callable[[int], None]) -> Callable[[int, int | None], None]:
    """Adapt a bar's advance(n) to diffbench.metrics' progress(done, total) callbacks."""
    done = [0]

    def progress(count: int, total: int | None) -> None:
        advance(count - done[0])
        done[0] = count

    return progress


class MetricContext:
    """Extractors and dataset statistics shared by the points of one sweep (built once each)."""

    def __init__(self, reporter: Tasks):
        self.reporter = reporter
        self._extractors: dict[str, FeatureExtractor] = {}
        self._refs: dict[str, RefStats] = {}
        self._targets: dict[str, FrechetTarget] = {}

    def extractor(self, cfg: DictConfig, device: torch.device) -> FeatureExtractor:
        """metrics.extractor: inception (or its nn.Module: inception_module, inception_compiled) |
        random_conv | auto (inception if its weights resolve; on a CPU only with
        metrics.inception_on_cpu, as Inception is too slow there for a quick sweep); TF32 as the point's `tf32`."""
        m = cfg.metrics
        name = str(m.extractor)
        if name == "auto" and device.type == "cpu" and not m.get("inception_on_cpu", False):
            name = "random_conv"
        options = {"resize_mode": str(m.resize_mode), "device": device, "tf32": bool(cfg.get("tf32", False))}
        if name in INCEPTION_EXTRACTORS:
            options.update(weights=m.get("extractor_weights"), dtype=str(m.get("extractor_dtype", "float32")),
                           channels_last=bool(m.get("extractor_channels_last", False)))
        return self.named_extractor(name, options)

    def named_extractor(self, name: str, options: dict[str, Any]) -> FeatureExtractor:
        """A registered extractor with these options, built once per sweep."""
        key = json.dumps([name, str(options)])
        if key not in self._extractors:
            self._extractors[key] = make_extractor(name, **options)
        return self._extractors[key]

    def frechet_target(self, ref: RefStats, device: torch.device) -> FrechetTarget:
        """The dataset statistics' Gaussian with its covariance square root, computed once per statistics."""
        if ref.id not in self._targets:
            self._targets[ref.id] = FrechetTarget.of(ref.stats, device)
        return self._targets[ref.id]

    def dataset_statistics(self, cfg: DictConfig, model: Denoiser | None, extractor: FeatureExtractor,
                           batch_size: int) -> RefStats:
        """The dataset's feature statistics: published ones as given, else cached or built now (with a progress bar)."""
        ref_n = cfg.metrics.ref_n
        key = json.dumps([to_dict(cfg.dataset), to_dict(cfg.model), extractor.identity(), ref_n], sort_keys=True)
        if key not in self._refs and cfg.dataset.get("kind") == "stats":
            self._refs[key] = load_published(to_dict(cfg.dataset), extractor)  # published: used as given
        if key in self._refs:
            return self._refs[key]
        dataset = make_dataset(to_dict(cfg.dataset), model=model, model_config=to_dict(cfg.model))
        return self.statistics(key, dataset, extractor, ref_n, cfg.cache_dir, batch_size)

    def statistics(self, key: str, dataset: ImageDataset, extractor: FeatureExtractor, n: int | None,
                   cache_dir: str | None, batch_size: int) -> RefStats:
        """The first n images' statistics, once per sweep: cached (metrics/refs.py) or built now with a progress bar."""
        if key not in self._refs:
            n = len(dataset) if n is None else int(n)
            with self.reporter.task(f"dataset statistics: {dataset.name} ({extractor.name})", n) as advance:
                self._refs[key] = load_or_build_reference(dataset, extractor, n, cache_dir,
                                                          batch_size=min(batch_size, FEATURE_BATCH),
                                                          progress=progress_callback(advance))
        return self._refs[key]


class MetricSuite:
    """Streams one point's sample batches into its metrics (diffbench.metrics' public API).

    Feature metrics (fd, kid, is, prdc) run on uint8 images through one extractor pass, named after the extractor
    unless it is Inception (fid, kid, ...; `fd_random_conv` is never FID). solver_error: the first error_samples
    samples vs their same-noise reference solutions (`rmse_ref`); exact: metrics/exact.py (analytic models, `plan`);
    `text_image`: clip_score (prompts from `conditions`), fd_dinov2, cmmd; fd_per_class: metrics/per_class.py.
    """

    def __init__(self, cfg: DictConfig, model: Denoiser, run: RunSettings, context: MetricContext,
                 conditions: ConditionSet | None = None, plan: Plan | None = None):
        self.cfg, self.context = cfg, context
        self.feature, self.paired = parse_metrics(list(cfg.metrics.names))
        self.run_device = run.device
        self.text_image = TextImageMetrics(cfg, run.device, conditions, context.named_extractor,
                                           lambda e: context.dataset_statistics(cfg, model, e, run.batch_size))
        self.needs_solutions = bool(self.paired)
        self.error = ErrorStats()
        self.exact = ExactSamples(model, plan, cfg.metrics, enabled="exact" in self.paired)
        self.lpips = (LPIPS(str(cfg.metrics.get("lpips_net", "alex")), run.device, cfg.metrics.get("lpips_weights"))
                      if "lpips" in self.paired else None)
        per_class = FD_PER_CLASS in cfg.metrics.names
        self.extractor = context.extractor(cfg, run.device) if self.feature or per_class else None
        self.dataset_stats = (context.dataset_statistics(cfg, model, self.extractor, run.batch_size)
                              if self.extractor and self.feature else None)
        self.stats = StreamingStats(keep_features=True, device=run.device) if self.dataset_stats else None
        self.accuracy = class_accuracy(cfg, model, run)
        self.per_class = per_class_fd(cfg, model, run, self.extractor, lambda key, images, extractor: (
            context.statistics(key, images, extractor, None, cfg.cache_dir, run.batch_size)))
        self.clock = StageClock(run.device)  # this point's resize / features / statistics seconds

    def update(self, x: Tensor, indices: Sequence[int], solutions: Tensor | None) -> None:
        """Add one batch of samples (indices: their sample indices) to every metric."""
        image_metrics = self.extractor is not None or self.text_image.active
        for start in range(0, len(x) if image_metrics else 0, FEATURE_BATCH):  # batch_size=auto: thousands at once
            with self.clock.stage("resize"):
                images = to_uint8(x[start:start + FEATURE_BATCH])
            if self.extractor is not None:
                self._extract(images, indices[start:start + FEATURE_BATCH])
            self.text_image.update(images, indices[start:start + FEATURE_BATCH])
        self.accuracy.update(x, indices)
        self.exact.update(x, solutions)
        if solutions is not None:
            keep = [k for k, i in enumerate(indices) if i < len(solutions)]
            if keep:
                pairs = x[keep], solutions[[indices[k] for k in keep]].to(x)
                self.error.update(*pairs)
                if self.lpips is not None:
                    self.lpips.update(to_uint8(pairs[0]), to_uint8(pairs[1]))

    def _extract(self, images: Tensor, indices: Sequence[int]) -> None:
        """One chunk of uint8 images through the extractor into the feature statistics, each stage timed."""
        assert self.extractor is not None
        out = self.extractor(images, self.clock)
        with self.clock.stage("statistics"):
            if self.stats is not None:
                self.stats.update(out.features, out.logits)
            self.per_class.update(out.features, indices)

    def compute(self) -> tuple[dict[str, MetricValue], dict[str, Any]]:
        """(metric values with intervals, extra row columns: extractor, reference id, notes, ...), timed as the
        statistics stage."""
        with self.clock.stage("statistics"):
            return self._compute()

    def _compute(self) -> tuple[dict[str, MetricValue], dict[str, Any]]:
        values, extra = self._feature_metrics() if self.stats is not None else ({}, {})
        self.text_image.compute(values, extra, metric_options(self.cfg, self.run_device), self.context.frechet_target)
        if "solver_error" in self.paired:
            mse = self.error.per_sample_mse
            n_boot = int(self.cfg.metrics.error_n_boot)
            if n_boot >= 2:
                iv = bootstrap(lambda idx: math.sqrt(float(mse[idx].mean())), len(mse), n_boot,
                               float(self.cfg.metrics.ci_level), nonnegative=True)
                values["rmse_ref"] = MetricValue(iv.estimate, iv.low, iv.high)
            else:
                values["rmse_ref"] = MetricValue(self.error.result()["rmse"])
            extra["n_error_samples"] = len(mse)
        if self.lpips is not None:
            values["lpips_ref"] = MetricValue(self.lpips.result()["lpips"])
            extra["lpips_weights_check"] = self.lpips.weights_check
        values.update(self.accuracy.values(float(self.cfg.metrics.ci_level)))
        per_class, columns = self.per_class.values(lambda ref: self.context.frechet_target(ref, self.run_device))
        values.update(per_class)
        extra.update(columns)
        values.update(self.exact.compute())
        return values, extra

    def _feature_metrics(self) -> tuple[dict[str, MetricValue], dict[str, Any]]:
        assert self.extractor is not None and self.stats is not None and self.dataset_stats is not None
        opts = metric_options(self.cfg, self.extractor.device)
        gen = self.stats.finalize(self.extractor.identity())
        target = self.context.frechet_target(self.dataset_stats, self.extractor.device)  # one eigh per statistics
        out = compute_metrics(gen, self.dataset_stats, self.feature, opts, self.extractor.logits_unavailable, target)
        return feature_values(out, self.extractor)


def metric_options(cfg: DictConfig, device: torch.device) -> MetricOptions:
    """The metrics config group as diffbench.metrics' MetricOptions."""
    fields = {f.name for f in dataclasses.fields(MetricOptions)} - {"device"}
    return MetricOptions(**{k: v for k, v in to_dict(cfg.metrics).items() if k in fields}, device=str(device))
