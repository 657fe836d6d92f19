"""Text-to-image metrics on random weights: CLIP score vs torchmetrics, FD-DINOv2 vs the dgm-eval / EDM2 code
path, CMMD vs its formula, and their wiring (errors, config hash)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from diffbench.config import compose, config_hash, to_dict
from diffbench.errors import AssetMissing, UsageError
from diffbench.metrics import StreamingStats, cmmd, frechet_distance, load_clip, make_extractor
from diffbench.metrics.dinov2 import Dinov2Extractor
from diffbench.models.conditions import ConditionSet
from tests.helpers.tiny_t2i import tiny_clip_folder, tiny_dinov2_folder

PROMPTS = ["a photo of a cat", "red car on the table", "a blue dog", "the cat on a car"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return tiny_clip_folder(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory):
    return tiny_dinov2_folder(tmp_path_factory.mktemp("dinov2"))


def images(n: int, seed: int, size: tuple[int, int] = (48, 40)) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


class TensorFeatures(torch.nn.Module):
    """torchmetrics' CLIP contract (get_*_features return tensors) over transformers 5's CLIPModel."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, pixel_values):
        return self.model.get_image_features(pixel_values).pooler_output

    def get_text_features(self, input_ids, attention_mask):
        return self.model.get_text_features(input_ids, attention_mask).pooler_output


def test_clip_score_equals_torchmetrics(clip_folder):
    from torchmetrics.multimodal.clip_score import CLIPScore

    clip = load_clip(str(clip_folder))
    x = images(len(PROMPTS), 0)
    ours = clip.scores(x, PROMPTS)
    reference = TensorFeatures(clip.model)
    for image, prompt, score in zip(x, PROMPTS, ours):  # one pair at a time: torchmetrics' clamp is per sample
        metric = CLIPScore(model_name_or_path=lambda: (reference, clip.processor))
        metric.update(image[None], [prompt])
        assert float(clip.scores(image[None], [prompt])[0]) == pytest.approx(float(metric.compute()), abs=1e-6)
        assert float(score) == pytest.approx(float(metric.compute()), rel=1e-6)  # batched: float32 rounding
    assert (ours > 0).any()
    if (ours > 0).all():  # torchmetrics clamps the mean; equal when no cosine is negative
        metric = CLIPScore(model_name_or_path=lambda: (reference, clip.processor))
        metric.update(x, PROMPTS)
        assert float(ours.mean()) == pytest.approx(float(metric.compute()), abs=1e-6)


def test_clip_score_prompts_must_match_images(clip_folder):
    with pytest.raises(UsageError, match="3 images but 2 prompts"):
        load_clip(str(clip_folder)).scores(images(3, 0), PROMPTS[:2])


def test_missing_weights_offline_name_the_field(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("DIFFBENCH_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(AssetMissing, match=r"metrics.clip_score.model=nobody/no-clip: no such folder .* Hugging Face"):
        load_clip("nobody/no-clip")
    with pytest.raises(AssetMissing, match=r"metrics.fd_dinov2.model=.*is not a directory"):
        make_extractor("dinov2", model=str(tmp_path / "a" / "b" / "c"))


def hub_interpolation(embeddings, x, height, width):
    """DINOv2's vision_transformer.interpolate_pos_encoding (offset 0.1, scale factor, no antialias), restated."""
    pos = embeddings.position_embeddings.float()
    n, dim = pos.shape[1] - 1, pos.shape[-1]
    m, w0, h0 = int(math.sqrt(n)), width // 14, height // 14
    patch = F.interpolate(pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2), mode="bicubic", antialias=False,
                          scale_factor=((w0 + 0.1) / m, (h0 + 0.1) / m))
    return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def reference_features(model, x: torch.Tensor, resize: str) -> np.ndarray:
    """dgm-eval (pil: PIL bicubic on the uint8 RGB image) / EDM2 (torch: bicubic, antialias) DINOv2 features:
    224 px, /255, ImageNet mean/std, CLS token after the last layer norm."""
    if resize == "pil":
        pixels = torch.stack([torch.from_numpy(np.asarray(Image.fromarray(a.permute(1, 2, 0).numpy(), "RGB")
                                                          .resize((224, 224), Image.Resampling.BICUBIC)))
                              .permute(2, 0, 1) for a in x]).float()
    else:
        pixels = F.interpolate(x.float(), size=(224, 224), mode="bicubic", antialias=True)
    pixels = pixels / 255
    pixels = (pixels - torch.tensor([0.485, 0.456, 0.406]).reshape(1, -1, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).reshape(1, -1, 1, 1)
    embeddings = model.embeddings
    embeddings.interpolate_pos_encoding = lambda e, h, w: hub_interpolation(embeddings, e, h, w)
    with torch.no_grad():
        return model(pixel_values=pixels).pooler_output.double().numpy()


def reference_fd(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's / dgm-eval's Frechet distance: scipy sqrtm of the covariance product."""
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("resize", ["pil", "torch"])
def test_fd_dinov2_follows_reference_code_path(dinov2_folder, resize):
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(dinov2_folder).eval()
    ours = Dinov2Extractor(copy.deepcopy(model), {"pil": "pil_uint8", "torch": "torch_bicubic"}[resize])
    feats, expected = {}, {}
    for name, seed in (("gen", 1), ("ref", 2)):
        x = images(24, seed, (40, 36))
        stats = StreamingStats(keep_features=True)
        stats.update(ours(x).features)
        feats[name] = stats.finalize(ours.identity())
        expected[name] = reference_features(copy.deepcopy(model), x, resize)
        np.testing.assert_allclose(feats[name].features, expected[name], rtol=0, atol=1e-5)
    assert frechet_distance(feats["gen"], feats["ref"]) == pytest.approx(
        reference_fd(expected["gen"], expected["ref"]), rel=1e-6)


def test_dinov2_extractor_identity_names_the_choices(dinov2_folder):
    ident = make_extractor("dinov2", model=str(dinov2_folder), resize_mode="pil_uint8").identity()
    assert ident["extractor"] == "dinov2" and ident["resize_mode"] == "pil_uint8" and ident["input_size"] == 224
    assert len(ident["weights_sha1"]) == 40
    with pytest.raises(UsageError, match="resize_mode 'clean' is unknown"):
        make_extractor("dinov2", model=str(dinov2_folder), resize_mode="clean")


def cmmd_formula(x: np.ndarray, y: np.ndarray) -> float:
    """CMMD's reference formula: 1000 * (mean k_xx + mean k_yy - 2 mean k_xy), k = exp(-|a - b|^2 / (2 * 10^2))."""
    def k(a, b):
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / 200).mean()
    return 1000 * (k(x, x) + k(y, y) - 2 * k(x, y))


def test_cmmd_equals_its_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(0.3, 1.2, size=(9, 5))
    x, y = x / np.linalg.norm(x, axis=1, keepdims=True) * 3, y / np.linalg.norm(y, axis=1, keepdims=True) * 3
    assert cmmd(x, y) == pytest.approx(cmmd_formula(x, y), rel=1e-10)
    assert cmmd(x, x) == pytest.approx(0, abs=1e-12)
    from diffbench.metrics.cmmd import kernel_mean
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    assert kernel_mean(xt, yt, block=2) == pytest.approx(kernel_mean(xt, yt), rel=1e-12)


def test_clip_extractor_gives_unit_embeddings(clip_folder):
    out = make_extractor("clip", model=str(clip_folder))(images(3, 4)).features
    assert out.shape == (3, 16)
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1, atol=1e-6)


def test_optional_metric_options_leave_the_hash_alone():
    cfg = to_dict(compose([]))
    bare = {**cfg, "metrics": {k: v for k, v in cfg["metrics"].items() if k not in ("clip_score", "fd_dinov2", "cmmd")}}
    assert config_hash(cfg) == config_hash(bare)
    named = compose(["metrics.names=[fd,fd_dinov2]"])
    other = compose(["metrics.names=[fd,fd_dinov2]", "metrics.fd_dinov2.resize_mode=pil_uint8"])
    assert config_hash(named) != config_hash(other)
    assert config_hash(compose(["metrics.cmmd.model=x/y"])) == config_hash(cfg)


def test_clip_score_without_prompts_is_one_line(clip_folder):
    from diffbench.config import settings
    from diffbench.metrics.checks import check_metrics
    from diffbench.models import make_model

    cfg = compose(["metrics.names=[clip_score]", "n_samples=4"])
    model = make_model(str(cfg.model.kind), {k: v for k, v in to_dict(cfg.model).items() if k != "kind"})
    with pytest.raises(UsageError, match="clip_score needs each sample's prompt.*no conditions"):
        check_metrics(cfg, model, settings(cfg))
    labels = ConditionSet("balanced-cyclic", torch.arange(4) % 2)
    with pytest.raises(UsageError, match="balanced-cyclic, which has no texts"):
        check_metrics(cfg, model, settings(cfg), labels)
    check_metrics(cfg, model, settings(cfg), ConditionSet("prompts", torch.arange(4) % 2, ("a cat", "a dog")))
