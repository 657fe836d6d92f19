"""Per-class Frechet distance of class-conditional samples (intra-FID, Miyato & Koyama 2018): the samples of
each class against the dataset images of that class.

One FID over all samples rewards the right overall mixture even when the samples of a label show another
class; per class, each label's samples are fitted with their own Gaussian and compared with the statistics of
that class's dataset images. The metric `fd_per_class` needs a condition set (`conditions=balanced` or `file`)
and dataset labels: the array `metrics.class_labels` of an npz dataset (dataset=mnist: `labels`). The dataset
statistics of each class are cached by metrics/refs.py like the whole dataset's (the class's images form their
own dataset, named `<dataset>-class<c>`). Rows get `<fd>_per_class_mean`, `<fd>_per_class_max` (over the
classes the samples have) and `<fd>_per_class`, the per-class values as JSON; `<fd>` is `fid` on Inception
features, else `fd_<extractor>`, as for the whole-set metric. Feature rows are kept with their sample indices,
so ranks' shares merge by index.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from diffbench.columns import MetricValue
from diffbench.config import RunSettings, to_dict
from diffbench.data import ArrayDataset, ImageDataset, load_array, make_dataset, resolve_data_path
from diffbench.errors import check
from diffbench.metrics.features import FeatureExtractor
from diffbench.metrics.fid import FrechetTarget
from diffbench.metrics.refs import RefStats
from diffbench.models import Denoiser
from diffbench.models.conditions import NONE, make_conditions
from diffbench.models.guidance import conditional

FD_PER_CLASS = "fd_per_class"  # the metric's name in metrics.names
Statistics = Callable[[str, ImageDataset, FeatureExtractor], RefStats]  # (key, dataset, extractor) -> its statistics


def dataset_labels(cfg: DictConfig) -> np.ndarray:
    """int64 [N]: the class label of each dataset image (array metrics.class_labels of an npz dataset)."""
    dataset, key = to_dict(cfg.dataset), str(cfg.metrics.class_labels)
    check(dataset.get("kind") == "npz" and str(dataset.get("path", "")).endswith(".npz"),
          f"metrics {FD_PER_CLASS} needs the class label of each dataset image: an npz dataset (e.g. dataset=mnist) "
          f"holding an array metrics.class_labels={key}; dataset kind {dataset.get('kind')} has none")
    path = resolve_data_path(dataset["path"])
    check(path.is_file(), f"dataset.path={dataset['path']} does not exist")
    labels = load_array(path, key, key_field="metrics.class_labels")
    check(labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer),
          f"metrics.class_labels={key} of {path.name}: need one integer label per image; got {labels.dtype} "
          f"{labels.shape}")
    return labels.astype(np.int64)


def sample_labels(cfg: DictConfig, model: Denoiser, run: RunSettings) -> Tensor:
    """int64 [n_samples]: the labels of samples 0 .. n-1, checked against the dataset's labels (UsageError if unfit)."""
    conditions: dict[str, Any] = to_dict(cfg.conditions) if "conditions" in cfg else {"name": NONE}
    check(conditions["name"] != NONE, f"metrics {FD_PER_CLASS} compares each class's samples with its dataset images; "
                                      "set conditions=balanced (or conditions=file) on a class-conditional model")
    labels = make_conditions(conditions, run.n_samples, conditional(model).classes).labels
    counts = np.bincount(labels[labels >= 0].numpy())
    few = [int(c) for c in np.flatnonzero(counts) if counts[c] < 2]
    check(not few, f"metrics {FD_PER_CLASS} needs at least 2 samples per class; n_samples={run.n_samples} gives "
                   f"class {', '.join(map(str, few))} 1 sample; raise n_samples")
    have = np.bincount(dataset_labels(cfg)[:cfg.metrics.ref_n], minlength=len(counts))
    lacking = [int(c) for c in np.flatnonzero(counts) if have[c] < 2]
    check(not lacking, f"metrics {FD_PER_CLASS}: the dataset's labels (metrics.class_labels) have fewer than 2 "
                       f"images of class {', '.join(map(str, lacking))}, which the samples have")
    return labels


def class_subsets(images: Tensor, labels: np.ndarray, classes: Sequence[int], name: str,
                  split: str) -> dict[int, ArrayDataset]:
    """Each class's images [N_c, 3, H, W] as a dataset of its own (`<name>-class<c>`, cached under that name)."""
    check(len(labels) >= len(images), f"metrics.class_labels: {len(labels)} labels for {len(images)} dataset images")
    picked = {c: torch.from_numpy(np.flatnonzero(labels[:len(images)] == c)) for c in classes}
    return {c: ArrayDataset(images[idx], f"{name}-class{c}", split) for c, idx in picked.items()}


def class_statistics(cfg: DictConfig, extractor: FeatureExtractor, classes: Sequence[int],
                     statistics: Statistics) -> dict[int, RefStats]:
    """Each class's dataset statistics: its images among the first metrics.ref_n, cached per class."""
    labels, dataset = dataset_labels(cfg), make_dataset(to_dict(cfg.dataset))
    assert isinstance(dataset, ArrayDataset)  # dataset_labels checked that it is an npz dataset
    subsets = class_subsets(dataset.images[:cfg.metrics.ref_n], labels, classes, dataset.name, dataset.split)
    key = [to_dict(cfg.dataset), extractor.identity(), cfg.metrics.ref_n]
    return {c: statistics(json.dumps([*key, c], sort_keys=True), subset, extractor) for c, subset in subsets.items()}


def per_class_fd(cfg: DictConfig, model: Denoiser, run: RunSettings, extractor: FeatureExtractor | None,
                 statistics: Statistics) -> PerClassFD:
    """The fd_per_class metric of a point on `extractor`'s features (off unless metrics.names lists it)."""
    if FD_PER_CLASS not in cfg.metrics.names or extractor is None:
        return PerClassFD(torch.zeros(0, dtype=torch.long), {}, "")
    labels = sample_labels(cfg, model, run)
    classes = sorted(set(labels[labels >= 0].tolist()))
    prefix = "fid" if extractor.fid_network else f"fd_{extractor.name}"
    return PerClassFD(labels, class_statistics(cfg, extractor, classes, statistics), prefix)


class PerClassFD:
    """Keeps the samples' feature rows by sample index; per class, their Frechet distance to that class's statistics.

    Columns are named `<prefix>_per_class*`; off (ignores every batch) when `refs` is empty.
    """

    def __init__(self, labels: Tensor, refs: Mapping[int, RefStats], prefix: str):
        self.labels, self.refs, self.prefix = labels, dict(refs), prefix
        self.indices: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []

    @property
    def active(self) -> bool:
        return bool(self.refs)

    def update(self, features: Tensor, indices: Sequence[int]) -> None:
        """Add one batch's feature rows [B, d] of sample indices `indices`."""
        if self.active:
            self.indices.append(np.asarray(indices, dtype=np.int64))
            self.rows.append(features.detach().float().cpu().numpy())

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """(sample indices [n], feature rows [n, d]) in the order added."""
        if not self.indices:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(self.indices), np.concatenate(self.rows)

    def load(self, states: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        """Set the rows to the union of several shares' states, in sample-index order."""
        kept = [s for s in states if len(s[0])]
        if kept:
            indices = np.concatenate([s[0] for s in kept])
            order = np.argsort(indices, kind="stable")
            self.indices, self.rows = [indices[order]], [np.concatenate([s[1] for s in kept])[order]]

    def distances(self, target: Callable[[RefStats], FrechetTarget]) -> dict[int, float]:
        """{class: Frechet distance of its samples' features to its dataset statistics}."""
        indices, rows = self.state()
        labels = self.labels[torch.from_numpy(indices)].numpy()
        return {c: target(ref).distance_to_rows(rows[labels == c]) for c, ref in sorted(self.refs.items())}

    def values(self, target: Callable[[RefStats], FrechetTarget]) -> tuple[dict[str, MetricValue], dict[str, Any]]:
        """({<prefix>_per_class_mean, _max}, {<prefix>_per_class: the per-class values as JSON}); nothing when off."""
        if not self.active:
            return {}, {}
        per_class = self.distances(target)
        values = list(per_class.values())
        return ({f"{self.prefix}_per_class_mean": MetricValue(float(np.mean(values))),
                 f"{self.prefix}_per_class_max": MetricValue(float(np.max(values)))},
                {f"{self.prefix}_per_class": json.dumps({str(c): v for c, v in per_class.items()})})
