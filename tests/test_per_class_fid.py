"""fd_per_class: each class's samples vs that class's dataset images (random_conv features, tiny sizes), the
per-class statistics cache, the merge of ranks' shares, sweep rows, bad input and unchanged config hashes."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from diffbench.config import compose, config_hash
from diffbench.engine.points import prepare
from diffbench.engine.sweep import run_sweep
from diffbench.errors import UsageError
from diffbench.metrics.features import make_extractor
from diffbench.metrics.fid import FrechetTarget
from diffbench.metrics.per_class import PerClassFD, class_subsets
from diffbench.metrics.refs import load_or_build_reference
from diffbench.report import metric_notes
from tests.helpers.sweeps import sweep_args

CLASSES, PER_CLASS = 3, 24
UNET = ["model=random_class_unet", "model.shape=[1,8,8]", "model.channels=8"]
PER_CLASS_METRICS = ["dataset=mnist", "metrics.ref_n=300", "metrics.extractor=random_conv",
                     "metrics.names=[fd_per_class]"]


@pytest.fixture(scope="module")
def labelled():
    """uint8 images [3 * 24, 3, 8, 8] whose brightness and texture depend on their class, and their labels."""
    g = torch.Generator().manual_seed(0)
    labels = np.arange(CLASSES * PER_CLASS) % CLASSES
    base = torch.from_numpy(labels).float()[:, None, None, None] * 80 + 20
    noise = torch.rand(len(labels), 1, 8, 8, generator=g) * (30 + 40 * torch.from_numpy(labels)[:, None, None, None])
    return (base + noise).clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous(), labels


def build(labelled, cache):
    """The per-class reference statistics of the labelled set, and the extractor."""
    images, labels = labelled
    extractor = make_extractor("random_conv")
    subsets = class_subsets(images, labels, range(CLASSES), "toy", "train")
    return {c: load_or_build_reference(d, extractor, None, cache) for c, d in subsets.items()}, extractor


def target(ref):
    return FrechetTarget.of(ref.stats)


def test_samples_equal_to_their_class_images_are_at_distance_zero(labelled, tmp_path):
    """A class's own images score 0; the same images under other labels score far from 0; mean and max agree."""
    images, labels = labelled
    refs, extractor = build(labelled, tmp_path)
    features = extractor(images).features
    right = PerClassFD(torch.from_numpy(labels), refs, "fd_random_conv")
    right.update(features, range(len(images)))
    assert all(abs(d) < 1e-6 for d in right.distances(target).values())
    wrong = PerClassFD(torch.from_numpy((labels + 1) % CLASSES), refs, "fd_random_conv")
    wrong.update(features, range(len(images)))
    distances = wrong.distances(target)
    assert min(distances.values()) > 1.0
    values, columns = wrong.values(target)
    assert values["fd_random_conv_per_class_mean"].value == pytest.approx(np.mean(list(distances.values())))
    assert values["fd_random_conv_per_class_max"].value == pytest.approx(max(distances.values()))
    assert json.loads(columns["fd_random_conv_per_class"]) == pytest.approx({str(c): d for c, d in distances.items()})


def test_class_statistics_are_cached_per_class(labelled, tmp_path):
    """A second build loads every class's entry from the cache, with the same numbers, one entry per class."""
    first, _ = build(labelled, tmp_path)
    again, _ = build(labelled, tmp_path)
    assert all(r.built for r in first.values()) and not any(r.built for r in again.values())
    assert len({r.id for r in again.values()}) == CLASSES and all("toy-class" in r.id for r in again.values())
    for c in range(CLASSES):
        assert first[c].stats.n == PER_CLASS and np.array_equal(first[c].stats.mean, again[c].stats.mean)


def test_shares_merge_by_sample_index(labelled, tmp_path):
    """Rows added by two ranks in any order give what one process adding them in index order gives."""
    images, labels = labelled
    refs, extractor = build(labelled, tmp_path)
    features, n = extractor(images).features, len(images)
    noisy = torch.from_numpy((labels + (np.arange(n) % 5 == 0)) % CLASSES)
    one = PerClassFD(noisy, refs, "fd_random_conv")
    one.update(features, range(n))
    ranks = [PerClassFD(noisy, refs, "fd_random_conv") for _ in range(2)]
    for start in range(0, n, 8):
        ranks[(start // 8) % 2].update(features[start:start + 8], range(start, min(start + 8, n)))
    merged = PerClassFD(noisy, refs, "fd_random_conv")
    merged.load([ranks[1].state(), ranks[0].state()])
    assert merged.distances(target) == one.distances(target)


@pytest.mark.slow  # ~40 s wall on the shared 2-core CPU: a UNet sweep with 10 classes' statistics
def test_sweep_rows_report_per_class_fd(tmp_path, sweep_cache):
    """A class-conditional UNet on balanced labels: one distance per class in the row, mean <= max."""
    args = sweep_args(tmp_path, sweep_cache, *UNET, *PER_CLASS_METRICS, "conditions=balanced", "guidance=cfg",
                      "solver=euler", "nfe=2", "n_samples=20")
    df = run_sweep(args, progress=False).frame()
    assert list(df["status"]) == ["ok"], df["reason"].tolist()
    row = df.iloc[0]
    per_class = json.loads(row["fd_random_conv_per_class"])
    assert sorted(per_class, key=int) == [str(c) for c in range(10)] and min(per_class.values()) > 0
    assert row["fd_random_conv_per_class_mean"] == pytest.approx(np.mean(list(per_class.values())))
    assert row["fd_random_conv_per_class_max"] == pytest.approx(max(per_class.values()))
    assert "fd_random_conv" not in df.columns  # only what was asked for


@pytest.mark.parametrize("extra, message", [
    ([*UNET, "conditions=balanced", "dataset=model_samples"], "needs the class label of each dataset image"),
    ([*UNET, "conditions=balanced", "metrics.class_labels=nope"], "metrics.class_labels 'nope' is not in"),
    ([*UNET], "set conditions=balanced"),
    ([*UNET, "conditions=balanced", "n_samples=15"], "n_samples=15 gives class 5, 6, 7, 8, 9 1 sample"),
    ([*UNET, "conditions=balanced", "metrics.ref_n=5"], "fewer than 2 images of class"),
])
def test_unfit_per_class_fd_is_a_one_line_error_before_sampling(tmp_path, extra, message):
    overrides = ["debug=default", f"out={tmp_path / 'out'}", *PER_CLASS_METRICS, "n_samples=20", *extra]
    with pytest.raises(UsageError, match=message) as err:
        prepare(overrides)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_class_labels_option_is_hashed_only_with_the_metric():
    """Existing points keep their config hashes: metrics.class_labels counts only while fd_per_class is on."""
    assert config_hash(compose(["metrics.class_labels=other"])) == config_hash(compose([]))
    on = ["metrics.names=[fd,fd_per_class]"]
    assert config_hash(compose([*on, "metrics.class_labels=other"])) != config_hash(compose(on))


def test_report_describes_the_per_class_columns():
    """The report's notes name the per-class mean and max (not the whole-set Frechet distance's note)."""
    df = pd.DataFrame({"metric_names": [json.dumps(["fd_random_conv", "fd_random_conv_per_class_mean",
                                                    "fd_random_conv_per_class_max"])],
                       "fd_random_conv": [1.0], "fd_random_conv_per_class_mean": [2.0],
                       "fd_random_conv_per_class_max": [3.0], "fd_random_conv_per_class": ["{}"]})
    notes = metric_notes(df)
    assert "mean over the classes" in notes["fd_random_conv_per_class_mean"]
    assert "worst class" in notes["fd_random_conv_per_class_max"]
    assert "per class" not in notes["fd_random_conv"] and "fd_random_conv_per_class" not in notes
