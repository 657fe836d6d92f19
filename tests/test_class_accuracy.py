"""The class_accuracy metric: classifier predictions vs each sample's label, its interval, rows and bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffbench.data import to_uint8
from diffbench.engine.points import prepare
from diffbench.engine.sweep import run_sweep
from diffbench.errors import UsageError
from diffbench.metrics.classifier import ClassAccuracy, DigitClassifier, grey, load_classifier, save_classifier, wilson
from diffbench.models.edm import edm
from tests.helpers.sweeps import sweep_args

ASSETS = Path(__file__).resolve().parent.parent / "diffbench" / "assets"
ARCH = {"classes": 10, "width": 4, "resolution": 28}
UNET = ["model=random_class_unet", "model.shape=[1,28,28]", "model.channels=8"]


@pytest.fixture
def classifier_file(tmp_path):
    """A random-weight classifier checkpoint (seeded) in the shipped format."""
    torch.manual_seed(0)
    path = tmp_path / "clf.pt"
    save_classifier(path, DigitClassifier(**ARCH), ARCH, {"made": "test"})
    return path


def test_wilson_interval_matches_the_formula_and_stays_in_0_1():
    low, high = wilson(8, 10, 0.95)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 20, 0.95)[0] == 0.0 and wilson(20, 20, 0.95)[1] == 1.0
    assert wilson(500, 1000, 0.95)[1] - wilson(500, 1000, 0.95)[0] < wilson(5, 10, 0.95)[1] - wilson(5, 10, 0.95)[0]


def test_accuracy_counts_samples_whose_prediction_is_their_label(classifier_file):
    net, arch = load_classifier(str(classifier_file), torch.device("cpu"))
    x = torch.rand(12, 1, 28, 28) * 2 - 1
    predicted = net(grey(to_uint8(x))).argmax(1)
    labels = torch.arange(20) % 10
    labels[[3, 7, 11]] = predicted[[3, 7, 11]]  # indices 3, 7, 11 labelled with their predictions
    labels[[0, 1]] = (predicted[[0, 1]] + 1) % 10  # indices 0, 1 labelled wrongly
    accuracy = ClassAccuracy(net, arch, labels)
    accuracy.update(x[[0, 1, 3]], [0, 1, 3])
    accuracy.update(x[[7, 11]], [7, 11])
    assert accuracy.per_sample.tolist() == [False, False, True, True, True]
    result = accuracy.result(0.95)
    assert result.value == pytest.approx(0.6) and (result.lo, result.hi) == wilson(3, 5, 0.95)


@pytest.mark.slow  # ~15 s: a UNet sweep at 28x28 on the CPU
def test_sweep_rows_report_class_accuracy(tmp_path, sweep_cache, classifier_file):
    args = sweep_args(tmp_path, sweep_cache, *UNET, "conditions=balanced", "guidance=cfg", "solver=euler", "nfe=2",
                      "n_samples=6", "metrics=conditional", "metrics.names=[class_accuracy]",
                      f"metrics.classifier={classifier_file}")
    df = run_sweep(args, progress=False).frame()
    assert list(df["status"]) == ["ok"], df["reason"].tolist()
    row = df.iloc[0]
    assert 0 <= row["class_accuracy_lo"] <= row["class_accuracy"] <= row["class_accuracy_hi"] <= 1
    assert np.isclose(row["class_accuracy"] * 6, round(row["class_accuracy"] * 6))  # a share of 6 samples


@pytest.mark.parametrize("extra, message", [
    (["model=class_gmm", "conditions=balanced"], r"classifier reads \[1 or 3, 28, 28\] images"),
    ([*UNET, "model.classes=4", "conditions=balanced"], "classifier knows 10 classes; the model has 4"),
    ([*UNET], "class_accuracy compares samples with their class labels; set conditions=balanced"),
    (["conditions=balanced"], "need a class-conditional model"),
])
def test_unfit_class_accuracy_is_a_one_line_error_before_sampling(tmp_path, classifier_file, extra, message):
    overrides = ["debug=default", f"out={tmp_path / 'out'}", "metrics=conditional", "metrics.names=[class_accuracy]",
                 f"metrics.classifier={classifier_file}", *extra]
    with pytest.raises(UsageError, match=message) as err:
        prepare(overrides)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_shipped_classifier_reads_the_mnist_test_split():
    """The shipped classifier (resolved with no path; its hash verified) on the first 1000 test digits."""
    net, arch = load_classifier(None, torch.device("cpu"))
    with np.load(ASSETS / "mnist_test.npz") as npz:
        pixels, labels = torch.from_numpy(npz["images"][:1000]).permute(0, 3, 1, 2), npz["labels"][:1000]
    accuracy = ClassAccuracy(net, arch, torch.from_numpy(labels.astype(np.int64)))
    accuracy.update(pixels.double() / 127.5 - 1, range(1000))
    assert arch == ARCH | {"width": 32} and accuracy.result(0.95).value > 0.95
    assert (ASSETS / "mnist-classifier.pt").stat().st_size < 2e6


def test_missing_classifier_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="metrics.classifier=.*does not exist"):
        load_classifier(str(tmp_path / "none.pt"), torch.device("cpu"))


@pytest.mark.slow
def test_shipped_conditional_model_draws_the_digit_it_is_asked_for(tmp_path):
    """model=diffbench-mnist-cond (resolved from the assets) under CFG w=2: the shipped classifier reads its labels."""
    summary = run_sweep(["model=diffbench-mnist-cond", "dataset=mnist", "conditions=balanced", "guidance=cfg",
                         "guidance.scale=2", "metrics=conditional", "metrics.names=[class_accuracy]",
                         "solver=dpmpp_2m", "nfe=10", "n_samples=20", "batch_size=20", f"out={tmp_path / 'out'}",
                         f"cache_dir={tmp_path}"],
                        progress=False)
    row = summary.frame().iloc[0]
    assert summary.ran == 1 and summary.failed == 0 and row["class_accuracy"] >= 0.9


@pytest.mark.parametrize(("options", "atol"), [({"channels_last": True}, 1e-5), ({"dtype": "bfloat16"}, 0.05)])
def test_shipped_conditional_model_takes_the_speed_options(options, atol):
    """The class-conditional checkpoint runs in a lower precision / channels-last (label embedding included) and
    gives the float32 network's denoised images to that precision; the labels still decide the output."""
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma, labels = torch.full((4,), 1.0, dtype=torch.float64), torch.tensor([0, 3, 7, -1])
    reference = edm("diffbench-mnist-cond.pt").denoise_cond(x, sigma, labels)
    fast = edm("diffbench-mnist-cond.pt", **options)
    out = fast.denoise_cond(x, sigma, labels)
    assert out.dtype == torch.float64 and float((out - reference).abs().max()) < atol
    assert float((fast.denoise_cond(x, sigma, labels.flip(0)) - out).abs().max()) > 10 * atol
