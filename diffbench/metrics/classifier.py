"""Classifier accuracy of class-conditional samples: does sample i show the class it was conditioned on?

A small CNN (diffbench/assets/mnist-classifier.pt, made by scripts/train_classifier.py) classifies each
sample; the point's `class_accuracy` is the share whose prediction equals its label, with a Wilson
score interval (Wilson 1927). Correctness is kept per sample, so ranks' shares merge by sample index.
"""
from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from diffbench import assetstore
from diffbench.assetstore import Asset
from diffbench.columns import MetricValue
from diffbench.config import RunSettings, to_dict
from diffbench.data import to_uint8
from diffbench.errors import UsageError, check
from diffbench.models import Denoiser
from diffbench.models.conditions import NONE, make_conditions
from diffbench.models.guidance import conditional

CLASS_ACCURACY = "class_accuracy"  # the metric's name in metrics.names and its row columns
MNIST_CLASSIFIER = Asset(
    label="diffbench's MNIST classifier (mnist-classifier.pt)", filenames=("mnist-classifier.pt",),
    config_key="metrics.classifier", package=("diffbench", "assets/mnist-classifier.pt"),
    sha256={"mnist-classifier.pt": "580dd9c71f8f02972305a7c1a2b82e07a25828bd2d22edafe2ad6705843e3564"})


class DigitClassifier(nn.Module):
    """A small CNN for square grey images: conv-conv-pool, conv-pool, two linear layers."""

    def __init__(self, classes: int = 10, width: int = 32, resolution: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * (resolution // 4) ** 2, 128), nn.ReLU(),
                                  nn.Linear(128, classes))

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, classes] of grey images [B, 1, H, W] in [-1, 1]."""
        return self.head(self.features(x))


def grey(pixels: Tensor) -> Tensor:
    """uint8 images [B, C, H, W] (C 1 or 3) -> float32 grey [B, 1, H, W] in [-1, 1], as the classifier sees them."""
    return pixels.float().mean(dim=1, keepdim=True) / 127.5 - 1


def save_classifier(path: Path, net: DigitClassifier, arch: dict[str, int], meta: dict[str, Any]) -> None:
    """Write the classifier: fp16 weights, its architecture and how it was made."""
    state = {k: v.half() for k, v in net.state_dict().items()}
    torch.save({"format": "diffbench-classifier", "arch": arch, "state": state, "meta": meta}, path)


def load_classifier(explicit: str | None, device: torch.device) -> tuple[DigitClassifier, dict[str, Any]]:
    """The classifier (metrics.classifier, else the shipped MNIST one) in eval mode, and its checkpoint's arch."""
    path = assetstore.resolve(MNIST_CLASSIFIER, explicit)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        net = DigitClassifier(**ckpt["arch"])
        net.load_state_dict({k: v.float() for k, v in ckpt["state"].items()})
    except (RuntimeError, KeyError, TypeError, OSError, pickle.UnpicklingError) as e:
        raise UsageError(MNIST_CLASSIFIER.broken_message(path, e)) from None
    return net.eval().requires_grad_(False).to(device), dict(ckpt["arch"])


class ClassAccuracy:
    """Accumulates, per sample, whether the classifier's prediction equals the sample's label (net None: off)."""

    def __init__(self, net: DigitClassifier | None, arch: dict[str, int], labels: Tensor):
        self.net, self.arch, self.labels = net, arch, labels
        self.correct: list[np.ndarray] = []

    def check_fits(self, shape: Sequence[int], classes: int) -> None:
        """The classifier reads the model's images and labels (UsageError naming the mismatch)."""
        size = self.arch.get("resolution", 28)
        check(len(shape) == 3 and shape[0] in (1, 3) and tuple(shape[1:]) == (size, size),
              f"metrics class_accuracy: the classifier reads [1 or 3, {size}, {size}] images; the model makes "
              f"{tuple(shape)}")
        check(classes == self.arch.get("classes", 10),
              f"metrics class_accuracy: the classifier knows {self.arch.get('classes', 10)} classes; the model has "
              f"{classes}")

    @torch.no_grad()
    def update(self, x: Tensor, indices: Sequence[int]) -> None:
        """Add one batch: samples [B, C, H, W] in [-1, 1] of sample indices `indices` (seen as uint8 images)."""
        if self.net is None:
            return
        device = next(self.net.parameters()).device
        predicted = self.net(grey(to_uint8(x).to(device))).argmax(dim=1).cpu()
        wanted = self.labels[torch.as_tensor(list(indices), dtype=torch.long)]
        self.correct.append((predicted == wanted).numpy())

    @property
    def per_sample(self) -> np.ndarray:
        """bool [n]: each sample's correctness, in the order added."""
        return np.concatenate(self.correct) if self.correct else np.zeros(0, dtype=bool)

    def result(self, level: float) -> MetricValue:
        """The accuracy with its Wilson score interval at `level`."""
        hits = self.per_sample
        check(len(hits) > 0, "metrics class_accuracy: no samples were classified")
        return MetricValue(float(hits.mean()), *wilson(int(hits.sum()), len(hits), level))

    def values(self, level: float) -> dict[str, MetricValue]:
        """{'class_accuracy': result} when on, else nothing."""
        return {} if self.net is None else {CLASS_ACCURACY: self.result(level)}


def wilson(hits: int, n: int, level: float) -> tuple[float, float]:
    """Wilson's score interval of a binomial proportion hits / n (Wilson 1927): sound at 0 and n hits too."""
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2, dtype=torch.float64)))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def class_accuracy(cfg: DictConfig, model: Denoiser, run: RunSettings) -> ClassAccuracy:
    """The class_accuracy metric of a point: its classifier and samples 0 .. n-1's labels (UsageError if unfit).

    Off (a ClassAccuracy that ignores samples) unless metrics.names lists class_accuracy.
    """
    if CLASS_ACCURACY not in cfg.metrics.names:
        return ClassAccuracy(None, {}, torch.zeros(0, dtype=torch.long))
    conditions: dict[str, Any] = to_dict(cfg.conditions) if "conditions" in cfg else {"name": NONE}
    check(conditions["name"] != NONE, "metrics class_accuracy compares samples with their class labels; "
                                      "set conditions=balanced (or conditions=file) on a class-conditional model")
    classes = conditional(model).classes
    accuracy = ClassAccuracy(*load_classifier(cfg.metrics.get("classifier"), run.device),
                             make_conditions(conditions, run.n_samples, classes).labels)
    accuracy.check_fits(getattr(model, "shape", ()), classes)
    return accuracy
