"""A point's text-to-image metrics, each on its own network: clip_score, fd_dinov2, cmmd.

fd_dinov2 and cmmd run the images through their own extractor (``dinov2``, ``clip``) and compare with the
dataset's statistics of that extractor (cached like FID's); clip_score scores each image against its
sample's prompt, taken from the point's condition set (labels index into its texts). Options live in
the metrics node of each name (``metrics.fd_dinov2.model``, ...). Per-sample state (feature rows, CLIP
scores with their sample indices) merges across ranks like the suite's (diffbench.engine.shares).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from diffbench.columns import CLIP_SCORE, CMMD, FD_DINOV2, MetricValue
from diffbench.distributed import rows_by_index
from diffbench.errors import check
from diffbench.metrics.clip_score import load_clip
from diffbench.metrics.cmmd import cmmd
from diffbench.metrics.evaluate import MetricOptions, compute_metrics, text_image_metrics
from diffbench.metrics.features import FeatureExtractor
from diffbench.metrics.fid import FrechetTarget
from diffbench.metrics.refs import RefStats
from diffbench.metrics.stats import StreamingStats
from diffbench.metrics.uncertainty import bootstrap
from diffbench.models.conditions import ConditionSet

# Metrics on their own extractor: metric -> (extractor, the options it takes from metrics.<metric>).
OWN_EXTRACTOR = {FD_DINOV2: ("dinov2", ("model", "resize_mode")), CMMD: ("clip", ("model",))}


def check_prompts(metrics: Sequence[str], conditions: ConditionSet | None) -> None:
    """clip_score needs every sample's prompt: a condition set with texts (UsageError naming what the point has)."""
    if CLIP_SCORE in metrics:
        has = f"conditions {conditions.name}, which has no texts" if conditions else "no conditions"
        check(conditions is not None and bool(conditions.texts),
              f"metrics clip_score needs each sample's prompt, from a text-to-image model's prompt set (a condition "
              f"set with texts); this point has {has}: give it prompts or drop clip_score from metrics.names")


@dataclass
class OwnFeatures:
    """A metric's own feature pass: its extractor, the dataset's statistics and the point's streamed features."""

    extractor: FeatureExtractor
    reference: RefStats
    stats: StreamingStats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = StreamingStats(keep_features=True, device=self.extractor.device)


class TextImageMetrics:
    """Streams a point's uint8 images into clip_score / fd_dinov2 / cmmd (those in metrics.names)."""

    def __init__(self, cfg: DictConfig, device: torch.device, conditions: ConditionSet | None,
                 extractor: Callable[[str, dict[str, Any]], FeatureExtractor],
                 statistics: Callable[[FeatureExtractor], RefStats]):
        names = text_image_metrics(list(cfg.metrics.names))
        self.cfg, self.conditions, self.own = cfg, conditions, {}
        for metric in (m for m in names if m in OWN_EXTRACTOR):
            kind, fields = OWN_EXTRACTOR[metric]
            own = extractor(kind, {**{k: cfg.metrics[metric][k] for k in fields}, "device": device})
            self.own[metric] = OwnFeatures(own, statistics(own))
        self.clip = load_clip(str(cfg.metrics.clip_score.model), device) if CLIP_SCORE in names else None
        self.clip_scores: list[tuple[list[int], Tensor]] = []  # (sample indices, their CLIP scores) per batch

    @property
    def active(self) -> bool:
        """Whether any text-to-image metric is on (the suite converts samples to images only then)."""
        return bool(self.own) or self.clip is not None

    def update(self, images: Tensor, indices: Sequence[int]) -> None:
        """Add uint8 images [B, 3, H, W] of samples `indices`."""
        for own in self.own.values():
            own.stats.update(own.extractor(images).features)
        if self.clip is not None:
            assert self.conditions is not None  # check_prompts ran when the point was resolved
            prompts = [self.conditions.texts[int(label)] for label in self.conditions.take(indices)]
            self.clip_scores.append((list(indices), self.clip.scores(images, prompts).cpu()))

    def compute(self, values: dict[str, MetricValue], extra: dict[str, Any], opts: MetricOptions,
                target: Callable[[RefStats, torch.device], FrechetTarget]) -> None:
        """The metrics into values; the CLIP model, the reference ids and notes into extra."""
        notes = [extra["notes"]] if extra.get("notes") else []
        if self.clip is not None and self.clip_scores:
            values[CLIP_SCORE] = self._mean(rows_by_index(self.clip_scores).double().numpy(), opts)
            extra["clip_model"] = json.dumps(self.clip.identity(), sort_keys=True)
        if FD_DINOV2 in self.own:
            own = self.own[FD_DINOV2]
            gen = own.stats.finalize(own.extractor.identity())
            out = compute_metrics(gen, own.reference, ["fd"], opts, target=target(own.reference, own.extractor.device))
            if out.get("fd") is not None:
                values[FD_DINOV2] = MetricValue(out["fd"], out.get("fd_low"), out.get("fd_high"))
            notes += [f"fd_dinov2: {note}" for note in out["notes"]] + own.extractor.notes
            extra["fd_dinov2_ref_id"] = own.reference.id
        if CMMD in self.own:
            own = self.own[CMMD]
            gen = own.stats.finalize(own.extractor.identity())
            assert gen.features is not None and own.reference.stats.features is not None  # rows are kept
            values[CMMD] = MetricValue(cmmd(gen.features, own.reference.stats.features, device=opts.device))
            extra["cmmd_ref_id"] = own.reference.id
        if notes:
            extra["notes"] = "; ".join(notes)

    @staticmethod
    def _mean(scores: np.ndarray, opts: MetricOptions) -> MetricValue:
        """The mean of per-sample scores, with a bootstrap interval when metrics.n_boot >= 2."""
        if opts.n_boot < 2:
            return MetricValue(float(scores.mean()))
        iv = bootstrap(lambda idx: float(scores[idx].mean()), len(scores), opts.n_boot, opts.ci_level, opts.seed)
        return MetricValue(iv.estimate, iv.low, iv.high)
