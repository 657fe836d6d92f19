"""Metrics on CPU with the weight-free random_conv extractor and toy features with known answers.

Checks: streaming statistics are batch-size invariant and equal np.mean/np.cov; FD(set, itself) ~ 0
and FD grows with blur and noise; FD and KID agree with clean-fid's functions; IS from logits;
precision/recall/density/coverage on toy Gaussians; solver error; bootstrap and paired intervals;
reference cache reuse, keys and corruption; datasets. (Inception and resize parity: test_metrics_parity.)
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from cleanfid.fid import frechet_distance as cleanfid_frechet
from cleanfid.fid import kernel_distance as cleanfid_kid
from PIL import Image, ImageFilter

from diffbench.data import ArrayDataset, FolderDataset, NpzDataset, make_dataset, to_uint8
from diffbench.errors import UsageError
from diffbench.metrics import (
    ErrorStats,
    FeatureExtractor,
    Features,
    FeatureStats,
    FrechetTarget,
    MetricOptions,
    StreamingStats,
    evaluate,
    extract,
    frechet_distance,
    inception_score,
    kid,
    load_or_build_reference,
    make_extractor,
    paired_fd_difference,
    paired_mean_difference,
    parse_metrics,
    prdc,
    solver_error,
)
from diffbench.metrics.uncertainty import fd_interval
from diffbench.models.analytic import image_mixture


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Run this module's tests with one torch thread (conftest's one_thread)."""


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """256 uint8 images 3x16x16: exact draws from the project's analytic image mixture."""
    model = image_mixture(shape=(3, 16, 16), components=8, std=0.2)
    return to_uint8(model.sample_data(256, generator=torch.Generator().manual_seed(0)))


@pytest.fixture(scope="module")
def rconv():
    return make_extractor("random_conv")


def _stats(extractor, imgs: torch.Tensor, batch: int = 64) -> FeatureStats:
    return extract(ArrayDataset(imgs).batches(batch), extractor)


# ---------------------------------------------------------------------------------------- streaming

def test_streaming_stats_batch_invariant_and_equal_numpy(images, rconv):
    runs = [_stats(rconv, images, b) for b in (1, 17, 256)]
    for other in runs[1:]:
        np.testing.assert_allclose(other.features, runs[0].features, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(other.mean, runs[0].mean, rtol=1e-5)
        np.testing.assert_allclose(other.cov, runs[0].cov, rtol=1e-5, atol=1e-9)
    feats = runs[0].features.astype(np.float64)
    np.testing.assert_allclose(runs[0].mean, feats.mean(0), rtol=1e-10)
    np.testing.assert_allclose(runs[0].cov, np.cov(feats, rowvar=False), rtol=1e-8, atol=1e-14)


def test_merge_equals_one_pass():
    x = torch.randn(300, 8, dtype=torch.float64) * 3 + 10
    a, b, whole = StreamingStats(), StreamingStats(), StreamingStats()
    a.update(x[:120]), b.update(x[120:]), whole.update(x)
    a.merge(b)
    one, two = whole.finalize(), a.finalize()
    np.testing.assert_allclose(two.mean, one.mean, rtol=1e-13)
    np.testing.assert_allclose(two.cov, one.cov, rtol=1e-11)


def test_nonfinite_features_rejected():
    with pytest.raises(UsageError, match="NaN"):
        StreamingStats().update(torch.tensor([[0.0, float("nan")]]))


# ---------------------------------------------------------------------------------------- Frechet distance

@pytest.mark.parametrize("n", [500, 20])  # full-rank and singular (n < d) covariances
def test_frechet_matches_cleanfid(n, sqrtm_disp_shim):
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, 64)) @ rng.standard_normal((64, 64)) * 0.3
    b = rng.standard_normal((n, 64)) * 1.2 + 0.5
    sa, sb = FeatureStats.from_features(a), FeatureStats.from_features(b)
    ours = frechet_distance(sa, sb)
    ref = cleanfid_frechet(sa.mean, sa.cov, sb.mean, sb.cov)
    assert ours == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(sb, sa) == pytest.approx(ours, rel=1e-8)
    target = FrechetTarget.of(sb)  # the d x d path and the n x n row path agree
    assert target.distance(sa.mean, sa.cov) == pytest.approx(target.distance_to_rows(a), rel=1e-8)


def test_fd_of_a_set_with_itself_is_zero(images, rconv):
    s = _stats(rconv, images)
    assert abs(frechet_distance(s, s)) < 1e-3


def _blur(imgs: torch.Tensor, radius: float) -> torch.Tensor:
    out = [np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()).filter(ImageFilter.GaussianBlur(radius)))
           for im in imgs]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _noisy(imgs: torch.Tensor, std: float) -> torch.Tensor:
    z = torch.randn(imgs.shape, generator=torch.Generator().manual_seed(1)) * std
    return (imgs.float() + z).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("corrupt,levels", [(_blur, [0.5, 1.0, 2.0]), (_noisy, [8.0, 24.0, 64.0])])
def test_fd_grows_with_blur_and_noise(images, rconv, corrupt, levels):
    ref = _stats(rconv, images[:128])
    clean = _stats(rconv, images[128:])
    fds = [frechet_distance(clean, ref)] + [frechet_distance(_stats(rconv, corrupt(images[128:], v)), ref)
                                            for v in levels]
    assert all(a < b for a, b in zip(fds, fds[1:])), fds


# ---------------------------------------------------------------------------------------- KID, IS, PR/DC

@pytest.mark.parametrize("n1,n2,subset", [(120, 120, 1000), (300, 200, 50)])
def test_kid_matches_cleanfid_draw_for_draw(n1, n2, subset):
    rng = np.random.default_rng(3)
    f1, f2 = rng.standard_normal((n1, 32)), rng.standard_normal((n2, 32)) * 1.1 + 0.1
    ours, std = kid(f1, f2, num_subsets=20, max_subset_size=subset, seed=5)
    np.random.seed(5)
    assert ours == pytest.approx(cleanfid_kid(f1, f2, num_subsets=20, max_subset_size=subset), rel=1e-9)
    assert std >= 0


class _FakeLogits(FeatureExtractor):
    """Tiny extractor with a classifier: class = brightest channel, logits scaled by confidence."""

    name, dim, input_size, has_logits = "fake_logits", 3, 8, True

    def forward(self, pixels: torch.Tensor) -> Features:
        feats = pixels.mean(dim=(2, 3)) / 255
        return Features(feats, 50.0 * feats)


def test_inception_score_known_values():
    n, k = 600, 6
    uniform = np.zeros((n, k))
    assert inception_score(uniform, splits=4) == pytest.approx((1.0, 0.0), abs=1e-9)
    confident = np.full((n, k), -1e4)
    confident[np.arange(n), np.arange(n) % k] = 0.0  # sure of one class each, balanced in every split
    mean, std = inception_score(confident, splits=4)
    assert mean == pytest.approx(k, rel=1e-9) and std < 1e-9


def test_inception_score_through_evaluate_and_unavailable_line(images, rconv):
    fake = _FakeLogits()
    ref = _stats(fake, images[:128])
    out = evaluate(ArrayDataset(images[128:]).batches(32), ref, fake, ["fd", "is"], MetricOptions(is_splits=4))
    assert out["is"] > 1.0 and out["is_std"] >= 0 and out["notes"] == []
    ref_rc = _stats(rconv, images[:128])
    out = evaluate(ArrayDataset(images[128:]).batches(32), ref_rc, rconv, ["fid", "inception_score"])
    assert out.get("is") is None and out["fd"] >= 0
    assert out["notes"] == ["inception_score: unavailable: this extractor has no classifier head"]


def test_prdc_toy_gaussians():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((400, 8))
    same = prdc(real, real, k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    # Each ball holds its k neighbours and its centre (up to rounding ties of d(i, j) vs d(j, i)).
    assert same["density"] == pytest.approx(6 / 5, abs=0.01)
    fresh = prdc(real, rng.standard_normal((400, 8)), k=5)
    assert min(fresh.values()) > 0.75 and abs(fresh["density"] - 1) < 0.25
    far = prdc(real, rng.standard_normal((400, 8)) + 20, k=5)
    assert max(far.values()) == 0.0
    narrow = prdc(real, 0.3 * rng.standard_normal((400, 8)), k=5)  # mode collapse: precise, no recall
    assert narrow["precision"] > 0.9 and narrow["recall"] < 0.3


def test_evaluate_all_feature_metrics_and_identity_check(images, rconv):
    ref = _stats(rconv, images[:128])
    out = evaluate(ArrayDataset(images[128:]).batches(50), ref, rconv, ["fd", "kid", "prdc"],
                   MetricOptions(kid_subsets=10, kid_subset_size=50, n_boot=20, kid_n_boot=10))
    assert {"fd", "kid", "kid_std", "precision", "recall", "density", "coverage"} <= out.keys()
    assert out["fd_low"] <= out["fd"] <= out["fd_high"] and out["kid_low"] <= out["kid_high"]
    assert out["feature_extractor"] == "random_conv" and out["n_gen"] == 128
    other = make_extractor("random_conv", seed=1)
    with pytest.raises(UsageError, match="rebuild the reference"):
        evaluate(ArrayDataset(images[128:]).batches(50), ref, other, ["fd"])


def test_parse_metrics():
    assert parse_metrics(["fid", "kid", "solver_error", "lpips", "fd"]) == (["fd", "kid"], ["solver_error", "lpips"])
    with pytest.raises(UsageError, match="'fdi' is unknown"):
        parse_metrics(["fdi"])


# ---------------------------------------------------------------------------------------- solver error

def test_solver_error_rmse_psnr():
    x = torch.rand(10, 3, 4, 4, dtype=torch.float64) * 2 - 1
    assert solver_error(x, x) == {"rmse": 0.0, "psnr": math.inf, "rmse_max": 0.0}
    out = solver_error(x + 0.1, x)
    assert out["rmse"] == pytest.approx(0.1) and out["psnr"] == pytest.approx(20 * math.log10(2 / 0.1))
    acc = ErrorStats()
    acc.update(x[:3] + 0.1, x[:3]), acc.update(x[3:] + 0.3, x[3:])
    assert acc.result()["rmse"] == pytest.approx(math.sqrt((3 * 0.01 + 7 * 0.09) / 10))
    with pytest.raises(UsageError, match="differ in shape"):
        acc.update(x, x[:2])


# ---------------------------------------------------------------------------------------- uncertainty

def test_bootstrap_interval_and_paired_differences():
    rng = np.random.default_rng(1)
    ref = FeatureStats.from_features(rng.standard_normal((2000, 16)))
    target = FrechetTarget.of(ref)
    base = rng.standard_normal((300, 16))
    a, b = base * 1.3 + 0.2, base * 1.1  # same "noise" per row, A further from the reference
    ci = fd_interval(a, target, n_boot=50)
    assert ci.low <= ci.estimate <= ci.high and ci.std > 0
    diff = paired_fd_difference(a, b, target, n_boot=50)
    assert diff.estimate == pytest.approx(target.distance_to_rows(torch.as_tensor(a))
                                          - target.distance_to_rows(torch.as_tensor(b)))
    assert diff.low > 0  # A is resolved as worse at this n
    zero = paired_fd_difference(a, a, target, n_boot=10)
    assert zero.estimate == zero.low == zero.high == 0.0
    mse = paired_mean_difference(base[:, 0] ** 2 + 0.1, base[:, 0] ** 2, n_boot=200)
    assert mse.estimate == pytest.approx(0.1) and mse.high - mse.low < 1e-9


# ---------------------------------------------------------------------------------------- reference cache

class _Counting:
    """Wraps an extractor and counts the images it sees."""

    def __init__(self, inner):
        self.inner, self.seen = inner, 0
        self.device, self.identity = inner.device, inner.identity

    def __call__(self, batch):
        self.seen += len(batch)
        return self.inner(batch)


def test_reference_cached_reused_and_rebuilt_when_corrupt(tmp_path, images, rconv):
    ds = ArrayDataset(images, name="fixture")
    ex = _Counting(rconv)
    calls = []
    first = load_or_build_reference(ds, ex, n=100, cache_dir=tmp_path, batch_size=32,
                                    progress=lambda done, total: calls.append((done, total)))
    assert first.built and ex.seen == 100 and calls[-1] == (100, 100)
    second = load_or_build_reference(ds, ex, n=100, cache_dir=tmp_path)
    assert not second.built and ex.seen == 100 and second.key == first.key
    np.testing.assert_array_equal(second.stats.cov, first.stats.cov)
    np.testing.assert_array_equal(second.stats.features, first.stats.features)
    meta = json.loads(first.path.with_suffix(".json").read_text())
    assert meta["key_fields"]["n"] == 100 and meta["key_fields"]["extractor"]["extractor"] == "random_conv"
    assert meta["key_fields"]["split"] == "train" and meta["key_fields"]["content"] == ds.fingerprint(100)
    # A different N or content is a different entry.
    assert load_or_build_reference(ds, ex, n=64, cache_dir=tmp_path).key != first.key
    # Corrupt the statistics file: detected by its hash and rebuilt.
    npz = first.path.with_suffix(".npz")
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))
    seen = ex.seen
    third = load_or_build_reference(ds, ex, n=100, cache_dir=tmp_path)
    assert third.built and "corrupt" in third.rebuilt_reason and ex.seen == seen + 100
    np.testing.assert_allclose(third.stats.cov, first.stats.cov, rtol=1e-10, atol=1e-15)
    assert not load_or_build_reference(ds, ex, n=100, cache_dir=tmp_path).built


# ---------------------------------------------------------------------------------------- data

def test_to_uint8_and_layouts(tmp_path):
    x = torch.tensor([-1.0, -0.999, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 5)
    assert to_uint8(x).shape == (1, 3, 1, 5)
    assert to_uint8(x)[0, 0, 0].tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(UsageError, match="1 or 3"):
        to_uint8(torch.zeros(2, 4))
    arr = np.random.default_rng(0).integers(0, 256, (7, 9, 10, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=arr)
    np.save(tmp_path / "ref_nchw.npy", arr.transpose(0, 3, 1, 2))
    a, b = NpzDataset(tmp_path / "ref.npz"), NpzDataset(tmp_path / "ref_nchw.npy")
    assert torch.equal(torch.cat(list(a.batches(3))), torch.cat(list(b.batches(4))))
    assert a.fingerprint(7) != a.fingerprint(6)
    folder = tmp_path / "imgs" / "sub"
    folder.mkdir(parents=True)
    for i, im in enumerate(arr):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    f = make_dataset({"kind": "folder", "path": str(tmp_path / "imgs")})
    assert isinstance(f, FolderDataset) and len(f) == 7
    assert torch.equal(torch.cat(list(f.batches(2))), torch.cat(list(a.batches(7))))
    with pytest.raises(UsageError, match="has 7 images"):
        next(f.batches(2, n=8))
    with pytest.raises(UsageError, match="dataset.kind"):
        make_dataset({"kind": "lmdb"})


def test_model_samples_independent_of_batch_size():
    model = image_mixture(shape=(1, 8, 8), components=3)
    ds = make_dataset({"kind": "model_samples", "n": 1500, "seed": 3}, model=model, model_config={"kind": "x"})
    a, b = torch.cat(list(ds.batches(7))), torch.cat(list(ds.batches(1024, n=1500)))
    assert a.shape == (1500, 3, 8, 8) and torch.equal(a, b)
    assert torch.equal(torch.cat(list(ds.batches(100, n=300))), a[:300])
    assert ds.fingerprint(1500) == ds.fingerprint(1500) != ds.fingerprint(1499)


def test_shipped_mnist_dataset_resolves_from_any_working_directory(tmp_path, monkeypatch):
    from diffbench.config import compose

    monkeypatch.chdir(tmp_path)
    data = make_dataset(compose(["dataset=mnist"]).dataset)
    assert data.path.is_file() and data.path.parent.name == "assets"
    assert len(data) == 10_000 and tuple(data.images.shape[1:]) == (3, 28, 28)  # grey as RGB, like Inception input
    with pytest.raises(UsageError, match="does not exist"):
        make_dataset({"kind": "npz", "path": "no_such_file.npz"})
