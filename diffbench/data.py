"""Datasets the feature metrics compare with, each a stream of uint8 image batches [B, 3, H, W].

Kinds (``make_dataset(cfg, model=...)``, cfg = the ``dataset`` config group):

- ``folder``: every image file under ``path`` (recursive, sorted by relative path; clean-fid's
  extensions), converted to 8-bit RGB by ``load_rgb`` (16-bit greyscale scaled by its bit depth,
  alpha dropped, palettes expanded; see there). All images must share one size: the headers of
  the whole set are read before the first batch, so the answer does not depend on the batch size,
  and an unreadable, empty or truncated file is a UsageError naming it.
- ``npz``: an array in a ``.npz`` (``key``, default its only / first array, e.g. ``arr_0`` of the
  EDM/ADM reference batches) or ``.npy`` file: uint8 [N, H, W, C] or [N, C, H, W], C in {1, 3}.
  A garbage or truncated file is a UsageError naming it (``load_array``).
- ``model_samples``: exact draws from an analytic model's data distribution (``sample_data``),
  drawn in fixed chunks of 1024 seeded by (seed, chunk), so the images do not depend on batch size.

Every dataset has a ``fingerprint(n)`` (the content hash in reference-cache keys): the bytes of the
array file, the generated images, or, for folders, each file's relative path, size and mtime (a
stat-only fingerprint: re-hashing 50k image files on every run would cost as much as using them).
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from diffbench.assetstore import PACKAGE_ASSETS as ASSETS  # data and weights shipped with the package
from diffbench.errors import UsageError, check


def resolve_data_path(path: str | os.PathLike) -> Path:
    """dataset.path as given (relative to the working directory), else a name under diffbench/assets/."""
    given = Path(path).expanduser()
    if given.exists() or given.is_absolute() or not (ASSETS / given).exists():
        return given
    return ASSETS / given

IMAGE_EXTENSIONS = {".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}


def to_uint8(x: Tensor) -> Tensor:
    """Float samples in [-1, 1], [B, C, H, W] with C in {1, 3} -> uint8 [B, 3, H, W] (round, clip).

    Pixel = round(127.5 x + 127.5) clipped to [0, 255]; one channel is repeated to RGB.
    """
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise UsageError(f"image metrics need samples shaped [B, 1 or 3, H, W]; got {tuple(x.shape)} "
                         "(use metrics that do not need images, e.g. solver_error, for this model)")
    pixels = (x.detach().double() * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1).contiguous() if pixels.shape[1] == 1 else pixels


def _nchw(arr: np.ndarray, what: str) -> Tensor:
    """uint8 [N, H, W, C] or [N, C, H, W] (C in {1, 3}) -> uint8 tensor [N, 3, H, W]."""
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise UsageError(f"{what}: need a uint8 array [N, H, W, C] or [N, C, H, W]; got {arr.dtype} {arr.shape}")
    if arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    check(arr.shape[1] in (1, 3), f"{what}: need 1 or 3 channels; got shape {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.expand(-1, 3, -1, -1).contiguous() if t.shape[1] == 1 else t


def rebatch(parts: Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    """Re-cut a stream of [b_i, ...] tensors into batches of batch_size (the last may be smaller)."""
    check(batch_size >= 1, f"batch_size must be >= 1 (got {batch_size})")
    buffer: Tensor | None = None
    for part in parts:
        buffer = part if buffer is None else torch.cat([buffer, part])
        while len(buffer) >= batch_size:
            yield buffer[:batch_size]
            buffer = buffer[batch_size:]
    if buffer is not None and len(buffer):
        yield buffer


class ImageDataset(ABC):
    """A finite, ordered source of uint8 images; ``batches`` streams the first n of them."""

    kind: str
    name: str
    split: str = "train"

    @abstractmethod
    def __len__(self) -> int:
        """Number of images available."""

    @abstractmethod
    def batches(self, batch_size: int, n: int | None = None) -> Iterator[Tensor]:
        """uint8 [B, 3, H, W] batches of the first n images (all by default), in order."""

    @abstractmethod
    def fingerprint(self, n: int) -> str:
        """A hash of the content of the first n images (see the module docstring)."""

    def describe(self) -> dict[str, Any]:
        """Provenance fields for the reference cache and result rows."""
        return {"dataset": self.name, "kind": self.kind, "split": self.split, "size": len(self)}

    def _take(self, n: int | None, batch_size: int = 1) -> int:
        check(batch_size >= 1, f"batch_size must be >= 1 (got {batch_size})")
        n = len(self) if n is None else n
        check(1 <= n <= len(self), f"dataset '{self.name}' has {len(self)} images; asked for {n} "
                                    f"(lower metrics.ref_n or provide more images)")
        return n


class ArrayDataset(ImageDataset):
    """Images held in memory: a uint8 tensor [N, 3, H, W] (tests, npz files)."""

    kind = "array"

    def __init__(self, images: Tensor, name: str = "array", split: str = "train"):
        check(images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3,
              f"ArrayDataset needs uint8 [N, 3, H, W]; got {images.dtype} {tuple(images.shape)}")
        self.images, self.name, self.split = images, name, split

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int, n: int | None = None) -> Iterator[Tensor]:
        n = self._take(n, batch_size)
        for start in range(0, n, batch_size):
            yield self.images[start:min(start + batch_size, n)]

    def fingerprint(self, n: int) -> str:
        return hashlib.sha1(self.images[:n].numpy().tobytes()).hexdigest()


# What numpy raises on a file that is not (or no longer) a valid .npy / .npz: bad magic or header,
# truncated data, a damaged zip member, an object array (pickles are refused).
_ARRAY_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def load_array(path: Path, key: str | None = None, prefer: str | None = None,
               key_field: str = "dataset.key") -> np.ndarray:
    """The array of a .npy file, or array ``key`` of a .npz (default: ``prefer`` if present, else the first).

    A file numpy cannot read (garbage, truncated, pickled objects) is a UsageError naming it; an
    absent key names the option that gave it (``key_field``).
    """
    try:
        if path.suffix == ".npy":
            return np.load(path)
        with np.load(path) as npz:
            names = list(npz.keys())
            check(bool(names), f"{path}: the .npz holds no arrays")
            key = key or (prefer if prefer in names else names[0])
            check(key in names, f"{key_field} '{key}' is not in {path.name}; it has: {', '.join(names)}")
            return npz[key]
    except _ARRAY_ERRORS as e:
        raise UsageError(f"{path}: not a readable {path.suffix} array file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'no detail'}); "
                         "regenerate or re-download it") from None


class NpzDataset(ArrayDataset):
    """A .npz (array ``key``) or .npy file of uint8 images."""

    kind = "npz"

    def __init__(self, path: str | os.PathLike, key: str | None = None, split: str = "train"):
        self.path = resolve_data_path(path)
        check(self.path.is_file(), f"dataset.path={path} does not exist (nor under {ASSETS})")
        arr = load_array(self.path, key)
        super().__init__(_nchw(arr, f"dataset {self.path.name}"), self.path.stem, split)
        with open(self.path, "rb") as f:
            self.file_hash = hashlib.file_digest(f, "sha1").hexdigest()

    def fingerprint(self, n: int) -> str:
        return hashlib.sha1(f"{self.file_hash}:{n}".encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.path)}


def _open_image(path: Path) -> Image.Image:
    """PIL's lazy open (header only); UsageError naming the file when it is empty or not an image."""
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"{path}: not a readable image ({'empty file' if _empty(path) else type(e).__name__}); "
                         "remove or replace it") from None


def _empty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size == 0


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_rgb(path: Path) -> np.ndarray:
    """One image file as uint8 [H, W, 3], converted deliberately by mode.

    - 16-bit greyscale (Pillow's ``I;16*`` modes, and ``I``, as which older Pillows open 16-bit
      PNGs): scaled by its bit depth, round(v / 257), the inverse of the usual 8 -> 16-bit
      expansion v * 257 (PIL's own ``convert`` clips such values at 255: all white). ``I`` values
      outside [0, 65535] are an error.
    - Alpha (``RGBA``, ``LA``, palettes with transparency): dropped, colour kept as stored (clean-fid's
      ``convert("RGB")``), not composited on a background.
    - Palette (``P``): expanded through the palette; 1-bit: 0 / 255; ``L``: repeated to RGB;
      CMYK / YCbCr / LAB: Pillow's conversion. Float images (``F``) are refused (no agreed range).
    A truncated or otherwise undecodable file is a UsageError naming it.
    """
    with _open_image(path) as img:
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise UsageError(f"{path}: cannot decode this image (truncated or corrupt: {e}); "
                             "remove or replace it") from None
        if img.mode in SIXTEEN_BIT_MODES:
            return np.repeat(_sixteen_to_eight(np.asarray(img), path)[..., None], 3, axis=2)
        check(img.mode != "F", f"{path}: float (mode F) images are not supported; save it as 8- or 16-bit")
        return np.asarray(img.convert("RGBA").convert("RGB") if img.mode == "P" else img.convert("RGB"))


def _sixteen_to_eight(arr: np.ndarray, path: Path) -> np.ndarray:
    """16-bit greyscale values -> uint8 by round(v / 257)."""
    check(arr.min() >= 0 and arr.max() <= 65535,
          f"{path}: 32-bit integer pixels outside the 16-bit range [0, 65535]; save it as 8- or 16-bit")
    return np.rint(arr.astype(np.float64) / 257).astype(np.uint8)


class FolderDataset(ImageDataset):
    """Image files under a directory (recursive, sorted), loaded with PIL as RGB."""

    kind = "folder"

    def __init__(self, path: str | os.PathLike, split: str = "train"):
        self.root = Path(path).expanduser()
        check(self.root.is_dir(), f"dataset.path={self.root} is not a directory")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        check(bool(self.files), f"dataset.path={self.root} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        self.name, self.split = self.root.name, split
        self.headers_checked = 0  # the first this many files passed check_headers

    def __len__(self) -> int:
        return len(self.files)

    def check_headers(self, n: int) -> None:
        """Read the headers of the first n files: all must open and share one size (UsageError naming two)."""
        if n <= self.headers_checked:
            return
        first: tuple[Path, tuple[int, int]] | None = None
        for path in self.files[:n]:
            with _open_image(path) as img:
                size = img.size
            if first is None:
                first = (path, size)
            elif size != first[1]:
                raise UsageError(f"{self.root}: images differ in size: {first[0].relative_to(self.root)} is "
                                 f"{first[1][0]}x{first[1][1]}, {path.relative_to(self.root)} is {size[0]}x{size[1]}; "
                                 "resize them to one size first")
        self.headers_checked = n

    def batches(self, batch_size: int, n: int | None = None) -> Iterator[Tensor]:
        n = self._take(n, batch_size)
        self.check_headers(n)
        for start in range(0, n, batch_size):
            arrays = [load_rgb(p) for p in self.files[start:min(start + batch_size, n)]]
            yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def fingerprint(self, n: int) -> str:
        h = hashlib.sha1()
        for p in self.files[:n]:
            st = p.stat()
            h.update(f"{p.relative_to(self.root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.root)}


class ModelSamplesDataset(ImageDataset):
    """Exact samples of an analytic model's data distribution, as uint8 images."""

    kind = "model_samples"
    chunk = 1024

    def __init__(self, model: Any, n: int, seed: int = 0, model_config: Mapping[str, Any] | None = None,
                 split: str = "train"):
        check(hasattr(model, "sample_data"),
              f"dataset kind model_samples needs an analytic model with sample_data(); {type(model).__name__} has none")
        check(n >= 1, f"dataset.n must be >= 1 (got {n})")
        self.model, self.n, self.seed, self.split = model, int(n), int(seed), split
        self.model_config = dict(model_config or {})
        self.name = f"model_samples-{self.model_config.get('kind', type(model).__name__)}"

    def __len__(self) -> int:
        return self.n

    def _chunk(self, index: int) -> Tensor:
        """Images index*1024 ... index*1024 + 1023: always a full chunk, so they do not depend on n."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + index)
        return to_uint8(self.model.sample_data(self.chunk, generator=g))

    def batches(self, batch_size: int, n: int | None = None) -> Iterator[Tensor]:
        n = self._take(n)
        chunks = (self._chunk(i)[:n - i * self.chunk] for i in range((n + self.chunk - 1) // self.chunk))
        return rebatch(chunks, batch_size)

    def fingerprint(self, n: int) -> str:
        h = hashlib.sha1(json.dumps({"model": self.model_config, "seed": self.seed}, sort_keys=True,
                                    default=str).encode())
        for batch in self.batches(self.chunk, n):
            h.update(batch.numpy().tobytes())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "seed": self.seed, "model": self.model_config}


def make_dataset(cfg: Mapping[str, Any], model: Any = None,
                 model_config: Mapping[str, Any] | None = None) -> ImageDataset:
    """Build the dataset a ``dataset`` config describes (kinds: folder, npz, model_samples)."""
    cfg = dict(cfg)
    kind, split = cfg.pop("kind", None), str(cfg.pop("split", "train"))
    if kind == "folder":
        return FolderDataset(_required(cfg, "path", kind), split)
    if kind == "npz":
        return NpzDataset(_required(cfg, "path", kind), cfg.get("key"), split)
    if kind == "model_samples":
        check(model is not None, "dataset kind model_samples needs the model (pass model=...)")
        return ModelSamplesDataset(model, int(cfg["n"]), int(cfg["seed"]), model_config, split)
    check(kind != "stats", "dataset kind stats holds published statistics, not images; this command needs images "
                           "(dataset=npz or dataset=folder)")
    raise UsageError(f"dataset.kind '{kind}' is unknown; choose one of: folder, npz, model_samples, stats")


def _required(cfg: Mapping[str, Any], key: str, kind: str) -> Any:
    check(cfg.get(key) is not None, f"dataset.{key} is required for dataset kind {kind}")
    return cfg[key]
