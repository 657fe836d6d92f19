"""Sweeps: NFE policies, failed points, cached reference solutions, invariance. (Faults: test_faults.)"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from diffbench import results
from diffbench.columns import ResultRow
from diffbench.engine.points import prepare
from diffbench.engine.sweep import run_sweep
from diffbench.errors import UsageError
from diffbench.solvers import SOLVERS
from tests.helpers.sweeps import sweep_args as _args

METRICS = ["rmse_ref", "rmse_ref_lo", "rmse_ref_hi"]


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("config_hash").reset_index(drop=True)


def test_rerun_skips_stored_points_and_batch_size_does_not_change_values(tmp_path, sweep_cache):
    first = run_sweep(_args(tmp_path, sweep_cache, "batch_size=4"), progress=False)
    assert (first.ran, first.skipped) == (4, 0)
    solutions = set((sweep_cache / "reference").glob("*.pt"))
    again = run_sweep(_args(tmp_path, sweep_cache, "batch_size=16"), progress=False)  # batch_size is not in the key
    assert (again.ran, again.skipped) == (0, 4)
    other = run_sweep(_args(tmp_path / "b", sweep_cache, "batch_size=16"), progress=False)
    pd.testing.assert_frame_equal(_sorted(first.frame())[METRICS], _sorted(other.frame())[METRICS])
    # One cached reference solution serves every point of the same model, seeds and noise span.
    assert set((sweep_cache / "reference").glob("*.pt")) == solutions


def test_step_grids_of_one_span_share_one_reference_solution(tmp_path):
    """Karras, uniform-logSNR and time-quadratic grids end at 80 and 0.002 only to rounding (79.99999999999993 vs
    79.99999999999997): one RK45 solution serves all three."""
    df = run_sweep(_args(tmp_path, tmp_path / "cache", "solver=euler", "nfe=3",
                         "steps=karras,uniform_logsnr,quadratic"), progress=False).frame()
    assert (df["status"] == "ok").all() and df["rmse_ref"].nunique() == 3
    assert len(list((tmp_path / "cache" / "reference").glob("*.pt"))) == 1


def test_nfe_policy_nearest_below_and_exact(tmp_path, sweep_cache):
    df = run_sweep(_args(tmp_path, sweep_cache, "solver=heun", "nfe=4,5,6"), progress=False).frame()
    # heun with a final step to zero makes 2n-1 evaluations: budget 4 runs at 3, budgets 5 and 6 at 5.
    got = df.set_index("nfe_budget")[["nfe_declared", "nfe_measured"]].to_dict("index")
    assert got == {4: {"nfe_declared": 3, "nfe_measured": 3}, 5: {"nfe_declared": 5, "nfe_measured": 5}}
    # Budget 6 resolves to the same point as budget 5: it runs once.
    assert len(df) == 2
    with pytest.raises(UsageError, match="cannot use exactly nfe=4"):
        prepare(_args(tmp_path, sweep_cache, "solver=heun", "nfe=4", "sweep.nfe_policy=exact"))


def test_one_step_plans_are_measured_against_the_whole_ode(tmp_path, sweep_cache):
    """NFE 1 (sigma_max -> 0 in one jump) has a reference down to the schedule's sigma_min, not a zero span."""
    df = run_sweep(_args(tmp_path, sweep_cache, "solver=euler,heun", "nfe=1,3"), progress=False).frame()
    assert (df["status"] == "ok").all(), df["reason"].tolist()
    error = df.set_index(["solver.name", "nfe_measured"])["rmse_ref"]
    assert error[("euler", 1)] > error[("euler", 3)] > 0 and error[("heun", 1)] == error[("euler", 1)]


def test_budget_below_the_solver_minimum_is_a_failed_row(tmp_path, sweep_cache):
    name = next(n for n, s in SOLVERS.items() if not s.adaptive and s.min_nfe(True) > 2)
    df = run_sweep(_args(tmp_path, sweep_cache, f"solver={name}", "nfe=2,3"), progress=False).frame()
    row = df[df["nfe_budget"] == 2].iloc[0]
    assert row["status"] == "failed" and "minimum" in row["reason"]


def test_row_has_provenance_timings_and_config_fields(tmp_path, sweep_cache, capsys):
    row = run_sweep(_args(tmp_path, sweep_cache, "solver=euler", "nfe=3,4"), command=["diffbench", "sweep"]).frame()
    # stderr is not a terminal here: no bars, one plain line per finished point.
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["[1/2] euler / karras / nfe 3", "[2/2] euler / karras / nfe 4"]
    assert set(ResultRow().columns()) <= set(row.columns)  # every fixed column of the schema is in the table
    row = row.set_index("nfe_budget").loc[3]
    for col in ("config_hash", "model.kind", "solver.name", "steps.rho", "nfe_declared", "nfe_measured", "n_samples",
                "time_sampling_s", "time_metrics_s", "time_per_nfe_s", "peak_memory_mb", "device_name", "git_sha",
                "version.torch", "command", "rmse_ref_lo", "status", "samples_path"):
        assert col in row.index, col
    assert row["command"] == "diffbench sweep" and row["nfe_declared"] == row["nfe_measured"] == 3
    with np.load(tmp_path / "out" / row["samples_path"]) as f:
        assert f["x"].shape[1:] == (3, 8, 8)


@pytest.mark.slow  # 2 s: keeps the default suite under 3 minutes
def test_shards_split_the_points(tmp_path, sweep_cache):
    a = run_sweep(_args(tmp_path, sweep_cache), progress=False, shard=(0, 2))
    b = run_sweep(_args(tmp_path, sweep_cache), progress=False, shard=(1, 2))
    assert a.ran + b.ran == 4 and len(results.load(tmp_path / "out")) == 4
    assert torch.isfinite(torch.tensor(results.load(tmp_path / "out")["rmse_ref"].to_numpy())).all()
