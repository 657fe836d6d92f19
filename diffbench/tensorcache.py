"""Cache files of tensors that carry a SHA-256 of their contents, so a damaged file is rebuilt, never used.

A file holds {"format", "tensors", "sha256"} (torch.save, written atomically). A file that does not
load (truncated, overwritten), is not in this format (e.g. from an older version) or whose tensors
do not match the recorded digest is rebuilt, with one warning line on stderr.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from diffbench.atomicio import atomic_write
from diffbench.errors import warn

FORMAT = 1


class CorruptCache(Exception):
    """A cache file that cannot be used; the message says why."""


def digest(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 of named tensors: names, dtypes, shapes and raw bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def save(path: Path, tensors: Mapping[str, Tensor]) -> None:
    """Write tensors with their digest, atomically."""
    tensors = {k: v.detach().cpu() for k, v in tensors.items()}
    payload = {"format": FORMAT, "tensors": tensors, "sha256": digest(tensors)}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load(path: Path, mmap: bool = False) -> dict[str, Tensor]:
    """The tensors of a cache file; CorruptCache when it cannot be read or does not match its digest.

    mmap: the tensors are views of the file's pages (read on use, evictable), not a copy in process memory.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 -- truncated or overwritten files fail in zip, pickle or EOF code alike
        raise CorruptCache(f"unreadable: {type(e).__name__}") from None
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT and isinstance(payload.get("tensors"), dict)):
        raise CorruptCache(f"not a diffbench cache file of format {FORMAT}")
    if digest(payload["tensors"]) != payload.get("sha256"):
        raise CorruptCache("contents do not match the recorded SHA-256")
    return payload["tensors"]


def load_or_build(path: Path, build: Callable[[], dict[str, Tensor]], what: str, *,
                  store: bool = True, mmap: bool = False) -> dict[str, Tensor]:
    """The tensors cached at path, else build() (saved there when `store`); an unusable file is rebuilt.

    Rebuilding an unusable file prints one warning line naming it and why. mmap (with store): the tensors are
    memory-mapped from the file, also right after building (the built copy is dropped).
    """
    if path.is_file():
        try:
            return load(path, mmap)
        except CorruptCache as e:
            warn(f"{what} {path} is unusable ({e}); rebuilding it")
    tensors = build()
    if store:
        save(path, tensors)
        if mmap:
            del tensors
            return load(path, mmap=True)
    return tensors
