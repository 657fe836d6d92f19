"""FID's Inception as an nn.Module: the same features as the TorchScript graph it takes its weights from.

Measured (CPU, float32, MNIST test images, clean resize): max |module - graph| feature difference
1.2e-5 on 8 images (features up to ~5), FID difference in test_fid_parity_on_real_images.
"""
from __future__ import annotations

import pytest
import torch

from diffbench.config import compose
from diffbench.data import NpzDataset
from diffbench.errors import AssetMissing
from diffbench.metrics.features import make_extractor
from diffbench.metrics.fid import frechet_distance
from diffbench.metrics.inception import ConvUnit, inception_fid, load_graph_weights
from diffbench.metrics.stats import FeatureStats
from diffbench.metrics.suite import MetricContext, feature_values

FEATURE_TOL = 1e-4  # float32 rounding (folded batch norm, summation order); measured 1.2e-5


def _extractor(name: str, **options):
    try:
        return make_extractor(name, **options)
    except AssetMissing as err:
        pytest.skip(f"Inception weights unavailable offline: {err}")


def _mnist(n: int) -> torch.Tensor:
    return next(NpzDataset("mnist_test.npz", key="images").batches(n))


def _stats(features: torch.Tensor) -> FeatureStats:
    x = features.double().numpy()
    return FeatureStats(len(x), x.mean(0), torch.cov(torch.from_numpy(x).T).numpy(), x)


@pytest.fixture(scope="module")
def reference():
    return _extractor("inception")


def test_module_features_match_the_torchscript_graph(reference):
    images = _mnist(2)
    module = _extractor("inception_module")
    diff = (module(images).features - reference(images).features).abs().max().item()
    assert diff < FEATURE_TOL


def test_module_rows_and_reference_keys_name_the_implementation(reference):
    cfg = compose(["metrics.extractor=inception_module", "metrics.extractor_dtype=bfloat16"])
    try:
        module = MetricContext(None).extractor(cfg, torch.device("cpu"))
    except AssetMissing as err:
        pytest.skip(f"Inception weights unavailable offline: {err}")
    assert module.identity()["dtype"] == "bfloat16"
    assert module.identity()["extractor"] == "inception_module" != reference.identity()["extractor"]
    assert module.identity()["weights_sha1"] == reference.identity()["weights_sha1"]
    out = {"fd": 1.0, "feature_extractor": "inception_module", "resize_mode": "clean", "ref_id": "r",
           "n_ref": 2, "ci": None, "notes": []}
    values, extra = feature_values(out, module)
    assert "fid" in values and extra["feature_extractor"] == "inception_module"


def test_tf32_follows_the_point_and_keys_only_features_it_changes():
    for tf32 in (False, True):
        cfg = compose(["metrics.extractor=random_conv", f"tf32={str(tf32).lower()}"])
        extractor = MetricContext(None).extractor(cfg, torch.device("cpu"))
        assert extractor.tf32 is tf32
        assert not extractor.sets_tf32 and "tf32" not in extractor.identity()  # a CPU has no TF32: CPU keys unchanged


@pytest.mark.gpu
@pytest.mark.parametrize("name,dtype,changes", [("random_conv", None, True), ("inception_module", "float32", True),
                                                ("inception_module", "float16", False)])
def test_cuda_extractors_run_and_are_keyed_at_their_tf32_setting(name, dtype, changes):
    options = {"device": "cuda", "tf32": True, **({"dtype": dtype} if dtype else {})}
    extractor = _extractor(name, **options)
    plain = _extractor(name, **{**options, "tf32": False})
    assert ("tf32" in extractor.identity()) is changes and "tf32" not in plain.identity()
    images = _mnist(2).cuda()
    plain(images)
    assert not torch.backends.cudnn.allow_tf32
    extractor(images)
    assert torch.backends.cudnn.allow_tf32 is changes  # a float16 network leaves the switch as it was


def test_loader_rejects_a_network_that_is_not_fids(reference):
    net = inception_fid()
    net.mixed_10.tower_mixed_conv = ConvUnit(384, 384, (1, 3), 1, (0, 0))  # wrong padding
    with pytest.raises(ValueError, match="mixed_10.tower_mixed_conv"):
        load_graph_weights(net, reference.layers)
    net = inception_fid()
    del net.mixed_10
    with pytest.raises(ValueError, match="differ"):
        load_graph_weights(net, reference.layers)


@pytest.mark.slow
def test_fid_parity_on_real_images(reference):
    """16 MNIST digits vs the next 16: FID from the module within 1e-3 of the graph's (float32);
    bfloat16 moves it by a few percent (the float16 GPU effect is in scripts/bench_inception.py)."""
    images = _mnist(32)
    graph = reference(images).features
    module = _extractor("inception_module")(images).features
    low = _extractor("inception_module", dtype="bfloat16", channels_last=True)(images).features
    fid_graph, fid_module, fid_low = (frechet_distance(_stats(f[:16]), _stats(f[16:])) for f in (graph, module, low))
    print(f"FID graph {fid_graph:.6f} module {fid_module:.6f} bfloat16 {fid_low:.6f}")
    assert (module - graph).abs().max().item() < FEATURE_TOL
    assert abs(fid_module - fid_graph) < 1e-3
    assert abs(fid_low - fid_graph) < 0.05 * fid_graph


@pytest.mark.slow
def test_compiled_module_pads_batches_and_matches(reference):
    """torch.compile'd module: 3 images run as a padded batch of 8, features as the graph's."""
    images = _mnist(3)
    compiled = _extractor("inception_compiled")
    out = compiled(images).features
    assert out.shape == (3, 2048) and compiled.shapes == {8} and compiled.warmup_seconds > 0
    assert (out - reference(images).features).abs().max().item() < FEATURE_TOL
