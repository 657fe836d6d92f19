"""The tidy results table: one row per sweep point, Parquet and CSV side by side.

Every write is a read-merge-write under a file lock, to temporary files renamed into place
(os.replace), so concurrent sweeps sharing one table keep each other's rows, and a killed writer
or a failed write (disk full: diffbench.errors.StorageError) leaves the previous table intact.
Rows are keyed by ``config_hash``: a resumed sweep skips keys already present and a key is never
stored twice. The Parquet file is the source of truth; the CSV is rewritten from it on every write.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from filelock import FileLock

from diffbench import columns as col
from diffbench.atomicio import atomic_write, staged
from diffbench.columns import RENAMED_GROUP, MetricValue
from diffbench.errors import UsageError, check
from diffbench.interrupts import uninterrupted

if TYPE_CHECKING:  # torch is imported where a device is inspected: concurrent writers stay light
    import torch

TABLE_NAME = "results.parquet"
KEY = col.CONFIG_HASH
# Leading columns, in this order; config fields and provenance follow.
FIRST = (col.CONFIG_HASH, col.STATUS, col.REASON, col.MODEL_KIND, col.SOLVER, col.STEPS, col.NFE_BUDGET,
         col.NFE_DECLARED, col.NFE_MEASURED, col.N_STEPS, col.SEED, col.N_SAMPLES)
PACKAGES = ("diffbench", "torch", "numpy", "hydra-core", "clean-fid", "torchmetrics")
LOCK_TIMEOUT_S = 600
HIGHER_IS_BETTER = frozenset({"is", "inception_score", "precision", "recall", "density", "coverage", "class_accuracy"})


@dataclass(frozen=True)
class TablePaths:
    parquet: Path
    csv: Path
    lock: Path


def table_paths(path: str | os.PathLike[str]) -> TablePaths:
    """A results location: a directory (holding results.parquet) or a .parquet / .csv file."""
    p = Path(path)
    if p.suffix not in (".parquet", ".csv"):
        p = p / TABLE_NAME
    parquet = p.with_suffix(".parquet")
    return TablePaths(parquet, p.with_suffix(".csv"), parquet.with_name(parquet.name + ".lock"))


def load(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a results table (Parquet, else its CSV); a missing table is an empty frame."""
    paths = table_paths(path)
    try:
        if paths.parquet.is_file():
            return _renamed(pd.read_parquet(paths.parquet))
        if paths.csv.is_file():
            return _renamed(pd.read_csv(paths.csv))
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read results table {path}: {e}") from None
    return pd.DataFrame()


def _renamed(df: pd.DataFrame) -> pd.DataFrame:
    """A table written before the step-grid group was renamed (schedule.* -> steps.*, steps -> n_steps), renamed."""
    old = f"{RENAMED_GROUP}."
    names = {c: "steps." + c.removeprefix(old) for c in df.columns if c.startswith(old)}
    return df.rename(columns={**names, **({"steps": col.N_STEPS} if names and "steps" in df.columns else {})})


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Like load, but a missing or empty table is a UsageError (for commands that need rows)."""
    df = load(path)
    check(not df.empty, f"no results table at {path}; run `diffbench sweep out=DIR` first or give its path")
    for col in (KEY, "status"):  # noqa: F402 (the columns module is not used here)
        check(col in df.columns, f"{path} is not a diffbench results table (no '{col}' column)")
    duplicated = df[KEY][df[KEY].duplicated()]
    if len(duplicated):
        raise UsageError(f"{path}: {len(duplicated)} rows repeat a {KEY} (e.g. {duplicated.iloc[0]}); a table "
                         "holds one row per point: remove the copies")
    for col in (c for m in metric_columns(df) for c in (m, f"{m}_lo", f"{m}_hi") if c in df.columns):
        values = df[col].dropna()
        bad = values[pd.to_numeric(values, errors="coerce").isna()]
        if len(bad):
            raise UsageError(f"{path}: metric column {col} holds non-numeric values (e.g. {bad.iloc[0]!r} in row "
                             f"{df.loc[bad.index[0], KEY]}); a diffbench table stores numbers there")
    return df


def done_keys(path: str | os.PathLike[str], *, ok_only: bool = False) -> set[str]:
    """Config hashes already in the table (only successful ones with ok_only)."""
    df = load(path)
    if df.empty:
        return set()
    if ok_only:
        df = df[df[col.STATUS] == col.OK]
    return set(df[KEY].astype(str))


def append(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], *, replace: bool = False) -> pd.DataFrame:
    """Merge rows into the table under its lock and rewrite it atomically.

    A row whose key is already stored is dropped, unless `replace`, where it supersedes the old one.
    """
    paths = table_paths(path)
    paths.parquet.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(paths.lock, timeout=LOCK_TIMEOUT_S):
        _remove_stale_temporaries(paths)
        old, new = load(paths.parquet), pd.DataFrame([dict(r) for r in rows])
        if not old.empty and not new.empty:
            if replace:
                old = old[~old[KEY].isin(new[KEY])]
            else:
                new = new[~new[KEY].isin(old[KEY])]
        merged = pd.concat([f for f in (old, new) if not f.empty] or [new], ignore_index=True)
        if KEY in merged.columns:
            merged = merged.drop_duplicates(subset=KEY, keep="first").reset_index(drop=True)
        merged = normalise(merged)
        _write_atomic(merged, paths)
    return merged


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Leading columns first; a column mixing value types (e.g. float and str) becomes text."""
    for name in df.columns:
        if df[name].dtype == object:
            kinds = {type(v) for v in df[name] if v is not None and not (isinstance(v, float) and v != v)}
            if len(kinds) > 1 and not kinds <= {int, float}:
                df[name] = df[name].map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v))
    first = [c for c in FIRST if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def _write_atomic(df: pd.DataFrame, paths: TablePaths) -> None:
    """Write Parquet and CSV to temporaries, then rename both: a failed write (disk full) changes neither.

    SIGTERM / SIGINT wait until both are renamed, so the pair never gets out of step.
    """
    with uninterrupted(), staged(paths.parquet) as parquet, staged(paths.csv) as csv:
        df.to_parquet(parquet, index=False)
        df.to_csv(csv, index=False)


def save_npz(target: Path, **arrays: Any) -> None:
    """np.savez_compressed, atomically (through a file object: np.savez would rename a temporary file)."""

    def write(path: Path) -> None:
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(target, write)


def _remove_stale_temporaries(paths: TablePaths) -> None:
    """Temporary files left by a killed writer (only writers holding the lock create them)."""
    for target in (paths.parquet, paths.csv):
        for tmp in target.parent.glob(f".{target.name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Names of the metric columns a table reports (from each row's `metric_names`)."""
    names: list[str] = []
    for entry in df.get(col.METRIC_NAMES, pd.Series(dtype=object)).dropna():
        try:
            listed = json.loads(entry)
        except (TypeError, ValueError):
            listed = None
        check(isinstance(listed, list) and all(isinstance(n, str) for n in listed),
              f"metric_names {entry!r} is not a JSON list of names; the table is not one diffbench wrote")
        names += [n for n in listed if n not in names]
    return [n for n in names if n in df.columns]


def metric_row(values: Mapping[str, MetricValue]) -> dict[str, Any]:
    """Metric values and CIs as row columns, with the list of names."""
    row: dict[str, Any] = {col.METRIC_NAMES: json.dumps(list(values))}
    for name, v in values.items():
        row.update(v.columns(name))
    return row


def write_table(path: str | os.PathLike[str], df: pd.DataFrame) -> None:
    """Replace a table with df, atomically (e.g. a baseline updated from a run)."""
    _write_atomic(normalise(df.copy()), table_paths(path))


# Provenance -------------------------------------------------------------------------------------

@cache
def versions() -> dict[str, str]:
    """Installed versions of the packages that change results (torch with its build tag, e.g. +cu130)."""
    import torch

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = torch.__version__ if pkg == "torch" else metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


@cache
def git_sha() -> str:
    """The source tree's commit, '+dirty' when it has uncommitted changes; 'unknown' outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    """A readable name of the device that ran a point."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu} ({torch.get_num_threads()} threads)"


def reset_peak_memory(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak GPU memory allocated since the last reset on CUDA; else the process's peak RSS (lifetime)."""
    import torch

    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20, "peak_memory_kind": "cuda_allocated"}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_memory_mb": rss_kb / 1024, "peak_memory_kind": "process_rss_peak"}


def provenance(device: torch.device, command: Sequence[str] | None = None) -> dict[str, Any]:
    """Versions, git SHA, device and the exact command line, as row columns."""
    argv = list(command) if command is not None else ["diffbench", *sys.argv[1:]]
    return {col.DEVICE_NAME: device_name(device), col.GIT_SHA: git_sha(), col.COMMAND: shlex.join(argv),
            **{f"{col.VERSION_PREFIX}{k}": v for k, v in versions().items()}}
