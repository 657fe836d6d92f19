"""Sweeps: resume after SIGKILL, NFE policies, failed points, cached reference solutions, invariance."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from diffbench import results
from diffbench.errors import UsageError
from diffbench.solvers import SOLVERS, register
from diffbench.sweep import prepare, run_sweep

# Error-only metrics keep these sweeps fast; the full metric path runs in test_cli.
FAST = ["debug=default", "metrics=error_only"]
METRICS = ["rmse_ref", "rmse_ref_lo", "rmse_ref_hi"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: reference solutions are shared, as in real use."""
    return tmp_path_factory.mktemp("cache")


def _args(root, cache, *extra: str) -> list[str]:
    return [*FAST, f"out={root / 'out'}", f"cache_dir={cache}", *extra]


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("config_hash").reset_index(drop=True)


def test_sigkill_mid_sweep_then_resume_equals_an_uninterrupted_run(tmp_path, cache):
    grid = ["solver=euler,heun", "nfe=3,5,7,9", "n_samples=64", "batch_size=4"]
    killed = tmp_path / "killed"
    table = results.table_paths(killed / "out").parquet
    cmd = [sys.executable, "-m", "diffbench.cli", "sweep", "--quiet", "--no-report", *_args(killed, cache, *grid)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows_at_kill = 0
    while proc.poll() is None:
        if table.is_file():
            rows_at_kill = len(pd.read_parquet(table))
            if rows_at_kill >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.01)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, f"the sweep ended before it could be killed: {proc.stderr.read()!r}"
    survived = results.load(table)  # readable, never half-written
    assert 2 <= len(survived) < 8 and survived["config_hash"].is_unique

    resumed = run_sweep(_args(killed, cache, *grid), progress=False)
    assert resumed.skipped >= len(survived) and resumed.ran == 8 - resumed.skipped
    clean = run_sweep(_args(tmp_path / "clean", cache, *grid), progress=False)
    a, b = _sorted(results.load(table)), _sorted(clean.frame())
    assert len(a) == len(b) == 8 and a["config_hash"].is_unique
    assert list(a["config_hash"]) == list(b["config_hash"])
    assert (a["status"] == "ok").all()
    pd.testing.assert_frame_equal(a[METRICS + ["nfe_measured"]], b[METRICS + ["nfe_measured"]])


def test_rerun_skips_stored_points_and_batch_size_does_not_change_values(tmp_path, cache):
    first = run_sweep(_args(tmp_path, cache, "batch_size=4"), progress=False)
    assert (first.ran, first.skipped) == (4, 0)
    solutions = set((cache / "reference").glob("*.pt"))
    again = run_sweep(_args(tmp_path, cache, "batch_size=16"), progress=False)  # batch_size is not in the key
    assert (again.ran, again.skipped) == (0, 4)
    other = run_sweep(_args(tmp_path / "b", cache, "batch_size=16"), progress=False)
    pd.testing.assert_frame_equal(_sorted(first.frame())[METRICS], _sorted(other.frame())[METRICS])
    # One cached reference solution serves every point of the same model, seeds and noise span.
    assert set((cache / "reference").glob("*.pt")) == solutions


def test_nfe_policy_nearest_below_and_exact(tmp_path, cache):
    df = run_sweep(_args(tmp_path, cache, "solver=heun", "nfe=4,5,6"), progress=False).frame()
    # heun with a final step to zero makes 2n-1 evaluations: budget 4 runs at 3, budgets 5 and 6 at 5.
    got = df.set_index("nfe_budget")[["nfe_declared", "nfe_measured"]].to_dict("index")
    assert got == {4: {"nfe_declared": 3, "nfe_measured": 3}, 5: {"nfe_declared": 5, "nfe_measured": 5}}
    # Budget 6 resolves to the same point as budget 5: it runs once.
    assert len(df) == 2
    with pytest.raises(UsageError, match="cannot use exactly nfe=4"):
        prepare(_args(tmp_path, cache, "solver=heun", "nfe=4", "sweep.nfe_policy=exact"))


def test_budget_below_the_solver_minimum_is_a_failed_row(tmp_path, cache):
    name = next(n for n, s in SOLVERS.items() if not s.adaptive and s.min_nfe(True) > 2)
    df = run_sweep(_args(tmp_path, cache, f"solver={name}", "nfe=2,3"), progress=False).frame()
    row = df[df["nfe_budget"] == 2].iloc[0]
    assert row["status"] == "failed" and "minimum" in row["reason"]


def test_nan_samples_fail_the_point_and_the_sweep_goes_on(tmp_path, cache):
    @register("nan_for_tests", order=1)
    def nan_solver(denoiser, x, sigmas, *, noise=None):
        """Returns NaN after one evaluation (test helper)."""
        for i in range(len(sigmas) - 1):
            x = denoiser(x, float(sigmas[i])) * float("nan")
        return x

    try:
        summary = run_sweep(_args(tmp_path, cache, "solver=nan_for_tests,euler", "nfe=3"), progress=False)
    finally:
        SOLVERS.pop("nan_for_tests")
    df = summary.frame().set_index("solver.name")
    assert summary.failed == 1
    assert df.loc["nan_for_tests", "status"] == "failed" and "NaN" in df.loc["nan_for_tests", "reason"]
    assert df.loc["euler", "status"] == "ok" and np.isfinite(df.loc["euler", "rmse_ref"])


def test_row_has_provenance_timings_and_config_fields(tmp_path, cache):
    row = run_sweep(_args(tmp_path, cache, "solver=euler", "nfe=3"), progress=False, command=["diffbench", "sweep"]).frame().iloc[0]
    for col in ("config_hash", "model.kind", "solver.name", "schedule.rho", "nfe_declared", "nfe_measured", "n_samples",
                "time_sampling_s", "time_metrics_s", "time_per_nfe_s", "peak_memory_mb", "device_name", "git_sha",
                "version.torch", "command", "rmse_ref_lo", "status", "samples_path"):
        assert col in row.index, col
    assert row["command"] == "diffbench sweep" and row["nfe_declared"] == row["nfe_measured"] == 3
    with np.load(tmp_path / "out" / row["samples_path"]) as f:
        assert f["x"].shape[1:] == (3, 8, 8)


def test_shards_split_the_points(tmp_path, cache):
    a = run_sweep(_args(tmp_path, cache), progress=False, shard=(0, 2))
    b = run_sweep(_args(tmp_path, cache), progress=False, shard=(1, 2))
    assert a.ran + b.ran == 4 and len(results.load(tmp_path / "out")) == 4
    assert torch.isfinite(torch.tensor(results.load(tmp_path / "out")["rmse_ref"].to_numpy())).all()
