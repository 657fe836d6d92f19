"""Faults a sweep survives (issue 8), each proved here:

1. SIGTERM / SIGKILL mid-point: a rerun stores every point exactly once and leaves no temporary file;
   SIGTERM ends the sweep at once with one line and exit code 143.
2. An unwritable out or cache_dir (exit 2, before any point runs) or a full disk (exit 1): one line,
   the table's bytes unchanged.
3. NaN / inf samples: the point is a failed row with the reason; the sweep goes on.
4. Out of memory: the batch is halved and retried; samples are bitwise those of an un-halved run.
5. Damaged cache files (reference solutions, reference statistics, EMS): rebuilt, one warning line.
6. Two sweep processes writing one table: both sets of rows, each key once.
"""
from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from diffbench import results
from diffbench.atomicio import temporary_path
from diffbench.batching import AUTO_CPU, AUTO_CUDA_START, BatchSizer, resolve_batch_size
from diffbench.cli import main
from diffbench.config import RunSettings, compose, settings
from diffbench.data import ArrayDataset, to_uint8
from diffbench.engine import sweep
from diffbench.engine.points import ModelCache, Point, prepare
from diffbench.engine.progress import Reporter
from diffbench.engine.references import ReferenceSolutions
from diffbench.engine.sweep import SweepSummary, run_sweep
from diffbench.errors import StorageError, UsageError
from diffbench.metrics import load_or_build_reference, make_extractor
from diffbench.models import MODELS
from diffbench.models.analytic import MixtureDenoiser, gaussian, image_mixture
from diffbench.sampling import make_plan, sample_points
from diffbench.solvers import SOLVERS, register
from diffbench.solvers.ems import cached_ems, lambda_grid
from tests.helpers import slow_model
from tests.helpers.sweeps import FAST_SWEEP, sweep_args

# Four points whose sweep subprocess, slowed down per evaluation, lasts a few seconds: long enough to
# stop it mid-point or overlap it with another sweep; in this process the same points take no time.
GRID = [f"model.kind={slow_model.KIND}", "solver=euler,heun", "nfe=3,5", "batch_size=2"]
OTHER_GRID = [f"model.kind={slow_model.KIND}", "solver=heun,dpmpp_2m", "nfe=3"]  # shares heun / nfe 3
DELAY_S = "0.05"  # per evaluation in the subprocess
PROMPT_S = 10  # a stopped sweep must be gone by then
POLL_S = 0.01
METRICS = ["nfe_measured", "rmse_ref", "rmse_ref_lo", "rmse_ref_hi"]
BATCH, FITS = 16, 4  # the configured batch size, and the largest batch that "fits in memory"


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Run this module's in-process sweeps with one torch thread (conftest's one_thread)."""


@pytest.fixture(scope="module")
def slow_kind():
    """The slowed-down model kind, registered in this process too."""
    slow_model.register()
    yield
    MODELS.pop(slow_model.KIND)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, sweep_cache, slow_kind) -> SweepSummary:
    """GRID swept without interruption (it also caches the points' reference solution)."""
    return run_sweep(sweep_args(tmp_path_factory.mktemp("clean"), sweep_cache, *GRID), progress=False)


def _start(root: Path, cache: Path, *grid: str) -> subprocess.Popen:
    """A real `diffbench sweep` subprocess whose model evaluations are slowed down."""
    cmd = [sys.executable, slow_model.__file__, "sweep", "--quiet", "--no-report", *sweep_args(root, cache, *grid)]
    env = {**os.environ, slow_model.DELAY_ENV: DELAY_S, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_rows(proc: subprocess.Popen, table: Path, rows: int) -> None:
    """Wait until the table holds more than `rows` rows, the sweep still running (reads it when it changes)."""
    seen = None
    while True:
        assert proc.poll() is None, f"the sweep ended first: {proc.stderr.read()!r}"
        version = table.stat().st_mtime_ns if table.is_file() else None
        if version != seen:
            seen = version
            if len(results.load(table)) > rows:
                return
        time.sleep(POLL_S)


def _stored(table: Path, *, csv: bool = True) -> pd.DataFrame:
    """The table as stored: readable, each key once, and (csv) its CSV holding the same keys."""
    df = results.load(table)
    assert df["config_hash"].is_unique
    if csv:
        assert sorted(pd.read_csv(table.with_suffix(".csv"))["config_hash"]) == sorted(df["config_hash"])
    return df


def _temporaries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.tmp"))


def _same_metrics(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a, b = (df.sort_values("config_hash").reset_index(drop=True) for df in (a, b))
    assert list(a["config_hash"]) == list(b["config_hash"]) and (a["status"] == "ok").all()
    pd.testing.assert_frame_equal(a[METRICS], b[METRICS])


# 1 and 6: signals, resume, concurrent writers ------------------------------------------------------

@pytest.mark.slow
def test_sigterm_mid_point_beside_another_sweep_then_resume(tmp_path, sweep_cache, clean):
    root = tmp_path / "shared"
    table = results.table_paths(root / "out").parquet
    proc = _start(root, sweep_cache, *GRID)
    _wait_for_rows(proc, table, 0)
    other = run_sweep(sweep_args(root, sweep_cache, *OTHER_GRID), progress=False, command=["other"])
    assert proc.poll() is None, "the two sweeps did not overlap"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=PROMPT_S)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert len(err.strip().splitlines()) == 1 and "terminated by SIGTERM" in err

    stored = _stored(table)
    assert set(other.keys) <= set(stored["config_hash"])  # the other sweep's rows survived concurrent writes
    assert (stored["command"] != "other").any()  # and so did the stopped sweep's
    assert set(clean.keys) - set(stored["config_hash"])  # which stopped before its last point
    assert not _temporaries(root)
    done = len(set(clean.keys) & set(stored["config_hash"]))
    resumed = run_sweep(sweep_args(root, sweep_cache, *GRID), progress=False)
    assert (resumed.skipped, resumed.ran) == (done, len(clean.keys) - done)  # only the missing points ran
    final = _stored(table)
    assert set(final["config_hash"]) == set(clean.keys) | set(other.keys)
    _same_metrics(final[final["config_hash"].isin(clean.keys)], clean.frame())


@pytest.mark.slow
def test_sigkill_mid_point_then_resume_stores_every_point_once(tmp_path, sweep_cache, clean):
    root = tmp_path / "killed"
    table = results.table_paths(root / "out").parquet
    proc = _start(root, sweep_cache, *GRID)
    _wait_for_rows(proc, table, 0)
    proc.kill()
    proc.communicate(timeout=PROMPT_S)
    assert proc.returncode == -signal.SIGKILL
    survived = _stored(table, csv=False)  # a kill between the CSV and Parquet renames leaves the CSV ahead
    assert 1 <= len(survived) < len(clean.keys)
    # A writer killed mid-write leaves its temporary file behind; a running writer's must stay.
    live = temporary_path(root / "out" / "samples" / "live.npz")
    orphan = live.with_name(live.name.replace(f".{os.getpid()}@", f".{proc.pid}@"))
    for path in (live, orphan):
        path.write_bytes(b"half-written")

    resumed = run_sweep(sweep_args(root, sweep_cache, *GRID), progress=False)
    assert (resumed.skipped, resumed.ran) == (len(survived), len(clean.keys) - len(survived))
    assert live.exists() and not orphan.exists()
    live.unlink()
    assert not _temporaries(root)
    _same_metrics(_stored(table), clean.frame())


# 2: unwritable folders, full disk ---------------------------------------------------------------------

def _table_bytes(out: Path) -> dict[str, bytes]:
    paths = results.table_paths(out)
    return {p.name: p.read_bytes() for p in (paths.parquet, paths.csv)}


def _sweep_cli(*overrides: str) -> int:
    return main(["sweep", "--quiet", "--no-report", *FAST_SWEEP, "solver=euler", *overrides])


@pytest.mark.parametrize("field,how", [("out", "below_a_file"), ("cache_dir", "below_a_file"), ("out", "read_only")])
def test_unwritable_folder_is_one_line_exit_2_before_any_point_runs(tmp_path, sweep_cache, capsys, field, how):
    out = tmp_path / "out"
    run_sweep(sweep_args(tmp_path, sweep_cache, "solver=euler", "nfe=3"), progress=False)
    before = _table_bytes(out)
    folders = {"out": out, "cache_dir": sweep_cache}
    if how == "read_only":
        out.chmod(0o555)
        if os.access(out, os.W_OK):
            out.chmod(0o755)
            pytest.skip("running as root: a read-only mode does not stop writes")
    else:
        folders[field] = results.table_paths(out).csv / "sub"  # below a regular file: not even root creates it
    try:
        rc = _sweep_cli(*(f"{k}={v}" for k, v in folders.items()), "nfe=5")
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err
    assert rc == UsageError.exit_code and err.count("\n") == 1 and f"{field}={folders[field]}" in err
    assert _table_bytes(out) == before


def _fills_the_disk(*args: object, **kwargs: object) -> None:
    """A writer that runs out of space after a few bytes; its destination comes last among args."""
    dest = args[-1]  # DataFrame.to_parquet / to_csv(self, path), np.savez_compressed(file)
    with nullcontext(dest) if hasattr(dest, "write") else open(dest, "wb") as f:
        f.write(b"partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("owner,writer", [(pd.DataFrame, "to_parquet"), (pd.DataFrame, "to_csv"),
                                          (np, "savez_compressed")])
def test_full_disk_is_one_line_exit_1_and_the_table_is_unchanged(tmp_path, sweep_cache, capsys, monkeypatch,
                                                                  owner, writer):
    where = [f"out={tmp_path / 'out'}", f"cache_dir={sweep_cache}"]
    assert _sweep_cli(*where, "nfe=3") == 0
    before = _table_bytes(tmp_path / "out")
    capsys.readouterr()
    monkeypatch.setattr(owner, writer, _fills_the_disk)
    rc = _sweep_cli(*where, "nfe=5")
    err = capsys.readouterr().err
    assert rc == StorageError.exit_code and err.count("\n") == 1 and os.strerror(errno.ENOSPC) in err
    assert _table_bytes(tmp_path / "out") == before and not _temporaries(tmp_path)


# 3: NaN / inf --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("bad", "overlap"), [(math.nan, False), (math.inf, False), (math.nan, True)])
def test_non_finite_samples_fail_the_point_and_the_sweep_goes_on(tmp_path, sweep_cache, bad, overlap, monkeypatch):
    """Also with the CUDA path's background decode forced on (the failure is then found in the worker)."""
    monkeypatch.setattr(sweep, "overlapped", lambda device: overlap)

    @register("diverges_for_tests", order=1)
    def diverges(denoiser, x, sigmas, *, noise=None):
        """Multiplies every step by NaN or inf (test helper)."""
        for i in range(len(sigmas) - 1):
            x = denoiser(x, float(sigmas[i])) * bad
        return x

    try:
        grid = sweep_args(tmp_path, sweep_cache, "solver=diverges_for_tests,euler", "nfe=3")
        summary = run_sweep(grid, progress=False)
    finally:
        SOLVERS.pop("diverges_for_tests")
    df = summary.frame().set_index("solver.name")
    assert (summary.ran, summary.failed) == (len(df), 1)
    assert df.loc["diverges_for_tests", "status"] == "failed" and "NaN or inf" in df.loc["diverges_for_tests", "reason"]
    assert df.loc["euler", "status"] == "ok" and np.isfinite(df.loc["euler", "rmse_ref"])


# 4: out of memory -----------------------------------------------------------------------------------------

def _out_of_memory_above(limit: int, denoise):
    """MixtureDenoiser.denoise raising torch.OutOfMemoryError for batches above `limit`, as a full GPU would."""

    def wrapped(self, x, sigma):
        if len(x) > limit:
            raise torch.OutOfMemoryError(f"test: a batch of {len(x)} does not fit")
        return denoise(self, x, sigma)

    return wrapped


def test_out_of_memory_halves_the_batch_and_the_samples_stay_bitwise_equal(tmp_path, sweep_cache, monkeypatch):
    grid = ["solver=euler,heun", "nfe=3", f"n_samples={BATCH}", f"batch_size={BATCH}"]
    plain = run_sweep(sweep_args(tmp_path / "plain", sweep_cache, *grid), progress=False).frame()
    monkeypatch.setattr(MixtureDenoiser, "denoise", _out_of_memory_above(FITS, MixtureDenoiser.denoise))
    halved = run_sweep(sweep_args(tmp_path / "halved", sweep_cache, *grid), progress=False).frame()
    assert (plain["batch_size_used"] == BATCH).all() and (plain["oom_halvings"] == 0).all()
    assert (halved["batch_size_used"] == FITS).all() and (halved["oom_halvings"] == math.log2(BATCH // FITS)).all()
    a, b = (df.sort_values("config_hash").reset_index(drop=True) for df in (plain, halved))
    assert list(a["config_hash"]) == list(b["config_hash"]) and (b["status"] == "ok").all()
    assert a["rmse_ref"].tolist() == b["rmse_ref"].tolist()
    for name, p, q in zip(a["solver.name"], a["samples_path"], b["samples_path"]):
        with np.load(tmp_path / "plain" / "out" / p) as x, np.load(tmp_path / "halved" / "out" / q) as y:
            assert np.array_equal(x["x"], y["x"]), name


def test_out_of_memory_at_batch_size_one_is_a_clear_error(mixture, monkeypatch):
    monkeypatch.setattr(MixtureDenoiser, "denoise", _out_of_memory_above(0, MixtureDenoiser.denoise))
    run = RunSettings(3, 0, BATCH, BATCH, torch.device("cpu"), torch.float64)
    sizer = BatchSizer(BATCH, run.device)
    with pytest.raises(UsageError, match="out of memory on cpu even at batch size 1"):
        list(sample_points(mixture, make_plan("euler", 3, mixture.schedule), run, range(BATCH), sizer=sizer))
    assert sizer.halvings == math.log2(BATCH)


def test_batch_size_auto_starts_large_on_cuda_and_is_fixed_on_cpu():
    many, cuda = 2 * AUTO_CUDA_START, torch.device("cuda")
    assert resolve_batch_size("auto", many, cuda) == AUTO_CUDA_START
    assert resolve_batch_size("auto", FITS, cuda) == FITS
    assert settings(compose(["batch_size=auto", "device=cpu", f"n_samples={many}"])).batch_size == AUTO_CPU
    with pytest.raises(UsageError, match="integer >= 1 or auto"):
        settings(compose(["batch_size=big"]))


# 5: damaged cache files ----------------------------------------------------------------------------------

@cache
def _point() -> Point:
    (point,) = prepare([*FAST_SWEEP, "solver=euler", "nfe=3"])
    return point


def _reference_solution(root: Path) -> tuple[np.ndarray, Path]:
    """A point's same-noise reference solution, cached under root (as a new sweep's runner gets it)."""
    point = _point()
    cfg = point.cfg.copy()
    cfg.cache_dir = str(root / "cache")
    model = ModelCache().get(cfg.model)
    x = ReferenceSolutions(Reporter(enabled=False)).get(cfg, model, point.plan, point.run, point.run.n_samples)
    (path,) = (root / "cache" / "reference").glob("*.pt")
    return x.numpy(), path


def _reference_statistics(root: Path) -> tuple[np.ndarray, Path]:
    """Feature statistics of a small image set, cached under root."""
    model = image_mixture(shape=(3, 8, 8), components=4)
    images = to_uint8(model.sample_data(32, generator=torch.Generator().manual_seed(0)))
    ref = load_or_build_reference(ArrayDataset(images, name="faults"), make_extractor("random_conv"),
                                  cache_dir=root / "cache")
    return np.concatenate([ref.stats.mean, ref.stats.cov.ravel()]), ref.path.with_suffix(".npz")


def _ems(root: Path) -> tuple[np.ndarray, Path]:
    """DPM-Solver-v3's statistics of a Gaussian model, cached under root."""
    shape = (64,)  # tensor data fill most of the file
    ems = cached_ems(gaussian(shape=shape, mean=0.5, std=0.8), shape, lambda_grid(-1.0, 1.0, 8), samples=16,
                     jvp="fd", directory=root / "ems")
    (path,) = (root / "ems").glob("*.pt")
    return torch.stack([ems.l, ems.s, ems.b]).numpy(), path


CACHES = {"reference solution": _reference_solution, "reference statistics": _reference_statistics, "EMS": _ems}


def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        del raw[len(raw) // 2:]
    elif how == "flipped":
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw[:] = np.random.default_rng(0).bytes(len(raw))
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["truncated", "flipped", "garbage"])
@pytest.mark.parametrize("what", list(CACHES))
def test_damaged_cache_file_is_rebuilt_with_one_warning(tmp_path, capsys, what, how):
    build = CACHES[what]
    first, path = build(tmp_path)
    _damage(path, how)
    capsys.readouterr()
    again, _ = build(tmp_path)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and what in warnings[0]
    np.testing.assert_array_equal(again, first)
    build(tmp_path)
    assert "warning:" not in capsys.readouterr().err  # the rebuilt file is used as it is
