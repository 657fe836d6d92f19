"""Metric choices checked against the model, its conditions and the sample count before anything is sampled.

Every grid point's metrics are checked when the sweep is prepared (engine/points.py), so a choice that cannot
work is one line (UsageError naming the fix) before the first point runs.
"""
from __future__ import annotations

from omegaconf import DictConfig

from diffbench.config import RunSettings
from diffbench.errors import check
from diffbench.metrics.classifier import class_accuracy
from diffbench.metrics.evaluate import parse_metrics, text_image_metrics
from diffbench.metrics.per_class import FD_PER_CLASS, sample_labels
from diffbench.metrics.text_image import check_prompts
from diffbench.models import Denoiser
from diffbench.models.conditions import ConditionSet


def check_metrics(cfg: DictConfig, model: Denoiser, run: RunSettings, conditions: ConditionSet | None = None) -> None:
    """Metric choices that cannot work with this model, its conditions or sample count (UsageError naming the fix)."""
    feature, paired = parse_metrics(list(cfg.metrics.names))
    text_image = text_image_metrics(list(cfg.metrics.names))
    shape: tuple[int, ...] = getattr(model, "image_shape", getattr(model, "shape", ()))  # latent models: decoded
    per_class = [FD_PER_CLASS] if FD_PER_CLASS in cfg.metrics.names else []
    images = feature + text_image + per_class + [m for m in paired if m == "lpips"]
    if images:
        check(len(shape) == 3 and shape[0] in (1, 3),
              f"metrics {', '.join(images)} need image samples [1 or 3, H, W] but the model's shape "
              f"is {tuple(shape)}; use metrics=error_only for this model")
    counted = feature + text_image + per_class
    check(not counted or run.n_samples >= 2, f"metrics {', '.join(counted)} need n_samples >= 2 (got {run.n_samples})")
    check_prompts(text_image, conditions)
    class_accuracy(cfg, model, run)  # loads its classifier when metrics.names asks for it: UsageError if unfit
    if per_class:
        sample_labels(cfg, model, run)  # the samples' and the dataset's labels fit: UsageError if not
