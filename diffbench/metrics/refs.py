"""Dataset statistics, computed once per (dataset, split, extractor, resize mode, N, content) and cached.

A cache entry in ``<cache_dir>/refs/`` is three files named by every choice that changes the
numbers (``<dataset>_<split>_<extractor>_<resize>_n<N>_<key>``): ``.npz`` (n, mean, cov),
``.features.npy`` (float32 rows, for KID / precision-recall / bootstrap) and ``.json``, the
provenance: the key's fields (dataset fingerprint, extractor identity incl. weights hash), the
SHA-256 of both data files, versions and creation time. The JSON is written last (atomically), so an
entry without it is incomplete; an entry whose files do not match their recorded hashes is corrupt
and rebuilt, with one warning line. A file lock keeps concurrent ranks/jobs from building the same entry twice.

Published statistics (``dataset=stats``: EDM's ``cifar10-32x32.npz``, score_sde's ``cifar10_stats.npz``,
pytorch-fid's ``fid_stats_*.npz``) are used as given instead: ``load_published`` reads their mean and
covariance (or the feature rows they ship) and names them by file and SHA-256 in every row's ``ref_id``.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from diffbench.assetstore import PACKAGE_ASSETS, file_digest, weights_dir
from diffbench.assetstore import cache_dir as default_cache_dir
from diffbench.atomicio import atomic_write
from diffbench.errors import AssetMissing, UsageError, check, warn
from diffbench.metrics.stats import FeatureStats, Progress, extract

FORMAT = 1


@dataclass
class RefStats:
    """Cached reference statistics and where they came from.

    Attributes:
        stats: the FeatureStats (features memory-mapped from the cache).
        key: hex key of the entry (a hash of ``provenance["key_fields"]``).
        provenance: the JSON record.
        path: the entry's path stem (add .npz / .features.npy / .json).
        built: True when this call computed the statistics (False: loaded from the cache).
        rebuilt_reason: why an existing entry was not used (corrupt, incomplete), or None.
    """

    stats: FeatureStats
    key: str
    provenance: dict[str, Any]
    path: Path
    built: bool = False
    rebuilt_reason: str | None = None

    @property
    def id(self) -> str:
        """The entry's file stem: names every choice that changes the numbers (for result rows)."""
        return self.path.name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def reference_key(dataset: Any, extractor: Any, n: int) -> tuple[str, dict[str, Any]]:
    """(hex key, the fields it hashes): dataset, split, extractor identity, N and the content hash."""
    fields = {"format": FORMAT, "dataset": dataset.name, "kind": dataset.kind, "split": dataset.split,
              "extractor": extractor.identity(), "n": n, "content": dataset.fingerprint(n)}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
    return key, fields


def _load(stem: Path, key: str) -> tuple[RefStats | None, str | None]:
    """The cached entry, or (None, why it cannot be used)."""
    meta_path = stem.with_suffix(".json")
    if not meta_path.exists():
        return None, None if not stem.with_suffix(".npz").exists() else "incomplete entry (no provenance JSON)"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        return None, f"unreadable provenance JSON ({err.__class__.__name__})"
    if meta.get("key") != key:
        return None, "provenance key does not match"
    for name, digest in meta.get("files", {}).items():
        path = stem.parent / name
        if not path.exists() or file_digest(path) != digest:
            return None, f"{name} is missing or does not match its recorded SHA-256 (corrupt)"
    with np.load(stem.with_suffix(".npz")) as z:
        n, mean, cov = int(z["n"]), z["mean"], z["cov"]
    features = np.load(stem.parent / (stem.name + ".features.npy"), mmap_mode="r")
    stats = FeatureStats(n, mean, cov, features, None, meta["key_fields"]["extractor"])
    return RefStats(stats, key, meta, stem), None


def _save(stem: Path, key: str, fields: dict[str, Any], stats: FeatureStats, dataset: Any,
          seconds: float) -> dict[str, Any]:
    """Write the entry's data files, then its provenance JSON (the commit marker)."""
    npz, feats = stem.with_suffix(".npz"), stem.parent / (stem.name + ".features.npy")

    def write_npz(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, n=stats.n, mean=stats.mean, cov=stats.cov)

    def write_features(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(stats.features, dtype=np.float32))

    atomic_write(npz, write_npz)
    atomic_write(feats, write_features)
    meta = {"key": key, "key_fields": fields, "dataset": dataset.describe(),
            "files": {npz.name: file_digest(npz), feats.name: file_digest(feats)},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(seconds, 3),
            "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}}
    atomic_write(stem.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=1, default=str)))
    return meta


def load_or_build_reference(dataset: Any, extractor: Any, n: int | None = None,
                            cache_dir: str | os.PathLike | None = None, *, batch_size: int = 64,
                            progress: Progress | None = None) -> RefStats:
    """Dataset statistics of the first n images of `dataset` under `extractor`, from the cache if valid.

    Args:
        dataset: a diffbench.data.ImageDataset.
        extractor: a FeatureExtractor (its identity, incl. resize mode and weights, is part of the key).
        n: number of reference images (default: all of the dataset).
        cache_dir: cache root (default $DIFFBENCH_CACHE or ~/.cache/diffbench); entries go in refs/.
        batch_size: images per extractor call while building.
        progress: progress(done, total) while building (nothing is reported when loading).
    """
    n = len(dataset) if n is None else int(n)
    key, fields = reference_key(dataset, extractor, n)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    (root / "refs").mkdir(parents=True, exist_ok=True)
    ident = fields["extractor"]
    name = f"{dataset.name}_{dataset.split}_{ident['extractor']}_{ident['resize_mode']}_n{n}_{key[:12]}"
    stem = root / "refs" / _slug(name)
    with FileLock(str(stem) + ".lock"):
        ref, reason = _load(stem, key)
        if ref is not None:
            return ref
        if reason:
            warn(f"reference statistics {stem}: {reason}; rebuilding them")
        start = time.perf_counter()
        stats = extract(dataset.batches(batch_size, n), extractor, keep_features=True, total=n, progress=progress)
        meta = _save(stem, key, fields, stats, dataset, time.perf_counter() - start)
    return RefStats(stats, key, meta, stem, built=True, rebuilt_reason=reason)


PUBLISHED_ARRAYS = (("mu", "sigma"), ("pool_3",))  # (mean, covariance) as EDM / pytorch-fid; feature rows as score_sde


def stats_file(path: str) -> Path:
    """dataset.path of published statistics: as given, else under diffbench/assets/, else in the cache's weights/."""
    check(bool(path), "dataset.path is empty; set it to the statistics file (.npz)")
    given = Path(path).expanduser()
    places = [given] + ([PACKAGE_ASSETS / path, weights_dir() / path] if not given.is_absolute() else [])
    found = next((p for p in places if p.is_file()), None)
    if found is None:
        raise AssetMissing(f"dataset.path={path}: no such statistics file ({' or '.join(map(str, places))}); "
                           f"set dataset.path=/path/to/{given.name} or put it in {weights_dir()}")
    return found


def load_published(cfg: dict[str, Any], extractor: Any) -> RefStats:
    """Published reference statistics from a .npz, used as given (not computed): their identity is the file.

    ``cfg`` is the dataset config (kind stats): ``path``, ``extractor`` and ``resize_mode`` (the network
    and resize the file was computed with; they must be the run's, or its FID is not the paper's FID).
    The mean and covariance come from arrays ``mu``/``sigma``, else from the feature rows ``pool_3``.
    """
    for field in ("extractor", "resize_mode"):
        check(cfg.get(field) == extractor.identity()[field],
              f"dataset.{field}={cfg.get(field)}: these statistics were computed with {field} {cfg.get(field)} but the "
              f"run uses {extractor.identity()[field]}; set metrics.{field}={cfg.get(field)}")
    file = stats_file(str(cfg.get("path") or ""))
    digest = file_digest(file)
    with np.load(file) as z:
        arrays = next((names for names in PUBLISHED_ARRAYS if all(n in z for n in names)), None)
        check(arrays is not None, f"dataset.path={file}: holds {', '.join(z.files)}; published statistics need "
              "mu and sigma (mean, covariance) or pool_3 (feature rows)")
        assert arrays is not None  # check() raised otherwise
        data = {name: np.asarray(z[name], dtype=np.float64) for name in arrays}
    if arrays == ("pool_3",):
        stats = FeatureStats.from_features(data["pool_3"], identity=extractor.identity(), keep=False)
    else:
        stats = FeatureStats(int(cfg.get("n") or 0), data["mu"], data["sigma"], None, None, extractor.identity())
    if stats.dim != extractor.dim:
        raise UsageError(f"dataset.path={file}: {stats.dim}-d statistics, but {extractor.name} gives {extractor.dim}-d "
                         "features; use the statistics of this extractor")
    fields = {"kind": "stats", "file": file.name, "sha256": digest, "arrays": list(arrays),
              "extractor": extractor.identity()}
    meta = {"key": digest, "key_fields": fields, "dataset": {**cfg, "path": str(file)}, "files": {file.name: digest}}
    return RefStats(stats, digest, meta, file.parent / _slug(f"stats_{file.stem}_sha256-{digest[:16]}"))
