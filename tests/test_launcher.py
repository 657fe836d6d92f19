"""Sweeps as jobs of Hydra's launchers: submitit_local jobs equal a local sweep, resume, one-line errors."""
from __future__ import annotations

import os
import stat

import pandas as pd
import pytest

from diffbench import results
from diffbench.engine.sweep import run_sweep
from tests.helpers.cli import run_cli

# A tiny CPU sweep with a feature metric (random-conv FD) and the solver error, both fast.
TINY = ["debug=default", "n_samples=32", "steps=karras", "nfe=3"]
COMPARED = ["nfe_measured", "fd_random_conv", "rmse_ref", "rmse_ref_lo", "rmse_ref_hi"]


def _sweep(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, "sweep", "--quiet", *args)


def _by_key(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(results.KEY).reset_index(drop=True)


@pytest.mark.slow
def test_submitit_local_jobs_equal_a_local_sweep_and_skip_the_points_already_stored(tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "jobs"
    grid = [*TINY, f"cache_dir={cache}", "solver=euler,heun,dpmpp_2m"]
    local = run_sweep([*grid, f"out={tmp_path / 'local'}"], progress=False)
    assert local.failed == 0
    stored = local.frame()
    results.append(results.table_paths(out).parquet, stored[stored["solver.name"] == "euler"].to_dict("records"))

    code, stdout, stderr = _sweep(capsys, *grid, f"out={out}", "hydra/launcher=submitit_local")
    assert (code, stderr) == (0, "")
    assert "launching 2 jobs" in stdout and "2 points run, 1 already in the table, 0 failed" in stdout
    assert "report:" in stdout
    composed = [p.read_text() for p in sorted(out.glob("jobs/*/*/.hydra/overrides.yaml"))]
    assert [("- solver=heun" in c, "- solver=dpmpp_2m" in c) for c in composed] == [(True, False), (False, True)]

    code, stdout, _ = _sweep(capsys, *grid, f"out={out}", "hydra/launcher=submitit_local", "--no-report")
    assert code == 0 and "launching" not in stdout and "0 points run, 3 already in the table" in stdout

    table = results.load(results.table_paths(out).parquet)
    assert table[results.KEY].is_unique and set(table[results.KEY]) == set(local.keys)
    assert (table["status"] == "ok").all()
    pd.testing.assert_frame_equal(_by_key(table)[[results.KEY, *COMPARED]],
                                  _by_key(local.frame())[[results.KEY, *COMPARED]])


@pytest.mark.slow
def test_jobs_n_runs_one_job_per_shard_holding_missing_points(tmp_path, capsys):
    grid = [*TINY, "metrics=error_only", f"cache_dir={tmp_path / 'cache'}", "solver=euler,heun,dpmpp_2m",
            f"out={tmp_path / 'out'}"]
    in_process = ["hydra/launcher=basic", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    run_sweep([*grid[:-2], "solver=heun", grid[-1]], progress=False)  # shard 1/2 holds only heun: done
    code, stdout, stderr = _sweep(capsys, *grid, "--jobs", "2", *in_process)
    assert (code, stderr) == (0, "")
    assert "launching 1 jobs" in stdout and "2 points run, 1 already in the table, 0 failed" in stdout
    table = results.load(results.table_paths(tmp_path / "out").parquet)
    assert len(table) == 3 and table[results.KEY].is_unique


@pytest.mark.parametrize("args, message", [
    (["hydra/launcher=no_such_launcher"], "hydra/launcher=no_such_launcher is not an option"),
    (["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=soon"], "hydra.launcher.timeout_min=soon: Value"),
    (["hydra/launcher=local", "hydra.launcher.no_such_field=1"], "hydra.launcher.no_such_field: no such config field"),
    (["hydra.launcher.partition=gpu"], "a launcher option without a launcher"),
    (["hydra/launcher=local", "hydra.launcher.tasks_per_node=2"], "a diffbench job is one process"),
    (["hydra/launcher=local", "--shard", "0/2"], "give --jobs N instead"),
    (["hydra/launcher=local", "--jobs", "-1"], "--jobs -1"),
    (["--jobs", "2"], "--jobs 2 needs a launcher"),
    (["hydra/launcher=slurm"], "sbatch and srun not on PATH"),
])
def test_bad_launcher_options_are_one_line_exit_2_and_launch_nothing(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM commands here
    code, _, stderr = _sweep(capsys, *TINY, "solver=euler", f"out={tmp_path / 'out'}", f"cache_dir={tmp_path}", *args)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and message in stderr
    assert not (tmp_path / "out").exists()


def test_slurm_options_reach_sbatch_and_a_rejected_submission_is_exit_2(tmp_path, capsys, monkeypatch):
    bin_dir, script = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    for name in ("sbatch", "srun"):  # sbatch keeps what it was given and refuses it, as for a bad partition
        fake = bin_dir / name
        fake.write_text(f'#!/bin/sh\ncp "$1" {script}\necho "sbatch: error: invalid partition specified: tiny" >&2\n'
                        "exit 1\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    code, _, stderr = _sweep(capsys, *TINY, "solver=euler", f"out={tmp_path / 'out'}", f"cache_dir={tmp_path}",
                             "hydra/launcher=slurm", "hydra.launcher.partition=tiny", "hydra.launcher.timeout_min=7")
    assert code == 2
    last = stderr.strip().splitlines()[-1]
    assert last.endswith("submission failed: sbatch: error: invalid partition specified: tiny")
    text = script.read_text()
    assert "#SBATCH --partition=tiny" in text and "#SBATCH --time=7" in text and "#SBATCH --gpus-per-node=1" in text
    assert not results.table_paths(tmp_path / "out").parquet.exists()


@pytest.mark.slow  # moved out of the default selection (under 3 minutes); CI runs it with -m slow
def test_a_failing_job_is_one_line_per_point_and_exit_1(tmp_path, capsys):
    missing = tmp_path / "missing.npz"  # the jobs need the reference data; the parent does not read it
    code, _, stderr = _sweep(capsys, *TINY, "solver=euler,heun", "dataset=npz", f"dataset.path={missing}",
                             f"out={tmp_path / 'out'}", f"cache_dir={tmp_path}", "hydra/launcher=basic",
                             "hydra/job_logging=disabled", "hydra/hydra_logging=disabled")
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 2
    assert all(" failed: " in line and str(missing) in line for line in lines)
    assert sorted(line.split()[2] for line in lines) == ["(euler", "(heun"]


def test_local_jobs_run_in_waves_of_at_most_max_local_jobs():
    """hydra/launcher=local starts at most sweep.max_local_jobs processes at once; a cluster gets one submission."""
    from diffbench.launch import Job, _launch

    class Fake:
        def __init__(self, executor):
            self._EXECUTOR, self.calls = executor, []

        def launch(self, overrides, initial_job_idx):
            self.calls.append((len(overrides), initial_job_idx))
            return [f"job {initial_job_idx + i}" for i in range(len(overrides))]

    planned = [Job(f"point {i}", (), (0, 1), (f"seed={i}",), (str(i),)) for i in range(5)]
    local, slurm = Fake("local"), Fake("slurm")
    assert _launch(local, "local", planned, 2) == ([f"job {i}" for i in range(5)], None)
    assert local.calls == [(2, 0), (2, 2), (1, 4)]
    _launch(slurm, "slurm", planned, 2)
    assert slurm.calls == [(5, 0)]
