"""The command line: end-to-end sample and sweep, bad input (one line, exit 2, nothing written), check."""
from __future__ import annotations

import numpy as np
import pytest

from diffbench import results
from diffbench.cli import main
from tests.helpers.cli import run_cli


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Keep every cache (reference statistics, solutions) inside the test's folder."""
    monkeypatch.setenv("DIFFBENCH_CACHE", str(tmp_path / "cache"))


_run = run_cli


@pytest.mark.slow  # moved out of the default selection (under 3 minutes); CI runs it with -m slow
def test_list_solvers_shows_order_stochasticity_min_nfe_and_options(capsys):
    code, out, _ = _run(capsys, "list", "solvers")
    assert code == 0
    for word in ("solver", "order", "stochastic", "min NFE", "options", "euler", "heun", "rk45", "adaptive"):
        assert word in out
    heun = next(line for line in out.splitlines() if "│ heun " in line)
    assert "│ 2 " in heun and "s_churn>0" in heun and "1,3,5,7" in heun
    code, out, _ = _run(capsys, "list")
    assert code == 0 and all(t in out for t in ("steps", "models", "datasets", "metrics", "karras", "solver_error"))


@pytest.mark.parametrize("args, message", [
    (["sweep", "solver=no_such_solver"], "solver=no_such_solver is not an option"),
    (["sweep", "steps=no_such_schedule"], "steps=no_such_schedule is not an option"),
    (["sweep", "nfe=[]"], "nfe: the sweep list is empty"),
    (["sweep", "steps=explicit", "steps.sigma_max=5"], "steps.sigmas fixes the grid"),
    (["sweep", "steps.sigma_min=2", "steps.sigma_max=1"], "must be below steps.sigma_max"),
    (["sweep", "model=gaussian"], "need image samples"),
    (["sweep", "nfe=0"], "nfe must be an integer >= 1"),
    (["sweep", "solver=heun", "nfe=4", "sweep.nfe_policy=exact"], "nearest valid: 3 or 5"),
    (["sweep", "--shard", "3/2"], "--shard 3/2"),
    (["sweep", "--bogus"], "No such option"),
    (["sample", "nfe=4,8"], "use `diffbench sweep`"),
    (["sample", "--seeds", "a-b"], "--seeds a-b"),
    (["sample", "-o", "samples.txt"], "give a .npz path"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, message):
    out_dir = tmp_path / "out"
    code, _, err = _run(capsys, *args, "debug=default", f"out={out_dir}")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err
    assert "Traceback" not in err and not out_dir.exists()


def test_sample_writes_npz_and_grid_and_reports_measured_nfe(tmp_path, capsys):
    target = tmp_path / "s" / "heun.npz"
    code, out, _ = _run(capsys, "sample", "debug=default", "solver=heun", "nfe=5", "--seeds", "0-7", "-o", str(target),
                        "--quiet")
    assert code == 0
    assert "NFE measured 5 (declared 5)" in out and "s sampling" in out
    with np.load(target) as f:
        assert f["x"].shape == (8, 3, 8, 8) and list(f["indices"]) == list(range(8)) and np.isfinite(f["x"]).all()
    assert target.with_suffix(".png").stat().st_size > 0
    # Sample i depends only on (seed, i): indices 4-7 alone give the same samples.
    part = tmp_path / "part.npz"
    assert main(["sample", "debug=default", "solver=heun", "nfe=5", "--seeds", "4-7", "-o", str(part), "-q"]) == 0
    with np.load(target) as full, np.load(part) as half:
        np.testing.assert_array_equal(full["x"][4:], half["x"])


def test_eval_and_ref_on_saved_samples(tmp_path, capsys):
    samples = tmp_path / "s.npz"
    assert main(["sample", "debug=default", "nfe=8", "--seeds", "0-15", "-o", str(samples), "-q"]) == 0
    code, out, err = _run(capsys, "eval", str(samples), "debug=default", "--json", str(tmp_path / "e.json"), "-q")
    assert code == 0, err
    assert "fd_random_conv" in out and "16 samples vs 64 reference images" in out
    assert "fd_random_conv" in (tmp_path / "e.json").read_text()
    code, out, _ = _run(capsys, "ref", "debug=default", "-q")
    assert code == 0 and "found in the cache" in out
    code, _, err = _run(capsys, "eval", str(tmp_path / "missing.npz"), "debug=default")
    assert code == 2 and "does not exist" in err


def test_sweep_end_to_end_then_check_against_baselines(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = _run(capsys, "sweep", "debug=default", f"out={out_dir}", "--quiet")
    assert code == 0, err
    assert "4 points run" in out and "report:" in out
    df = results.load(out_dir)
    assert (df["status"] == "ok").all() and {"fd_random_conv", "rmse_ref"} <= set(results.metric_columns(df))
    assert (df["feature_extractor"] == "random_conv").all()
    assert (out_dir / "report" / "report.html").is_file() and (out_dir / "report" / "report.md").is_file()

    # Rerun: every point is already in the table.
    assert "0 points run, 4 already in the table" in _run(capsys, "sweep", "debug=default", f"out={out_dir}", "-q")[1]

    assert _run(capsys, "check", str(out_dir), "--baseline", str(out_dir))[0] == 0
    better = df.assign(rmse_ref=df["rmse_ref"] / 10, rmse_ref_lo=df["rmse_ref_lo"] / 10,
                       rmse_ref_hi=df["rmse_ref_hi"] / 10)
    results.append(tmp_path / "baseline", better.to_dict("records"))
    code, out, _ = _run(capsys, "check", str(out_dir), "--baseline", str(tmp_path / "baseline"),
                        "--metric", "rmse_ref")
    assert code == 1 and "regression" in out
    code, _, err = _run(capsys, "check", str(out_dir), "--baseline", str(tmp_path / "missing"))
    assert code == 2 and "no results table" in err


@pytest.mark.parametrize("command", ["sweep", "sample", "eval", "ref", "plot", "report", "check", "list", "doctor"])
def test_every_command_has_help_with_an_example(capsys, command):
    code, out, _ = _run(capsys, command, "--help")
    assert code == 0 and f"diffbench {command}" in out


def test_doctor_reports_packages_configs_and_devices(capsys):
    code, out, _ = _run(capsys, "doctor")
    assert code == 0
    for word in ("torch", "hydra-core", "configs", "cuda", "inception"):
        assert word in out


def test_ctrl_c_says_how_to_resume(capsys, monkeypatch):
    import os
    import signal

    from diffbench.engine import sweep

    def interrupted(overrides):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the sweep prepares its points

    monkeypatch.setattr(sweep, "prepare", interrupted)
    code, _, err = _run(capsys, "sweep")
    assert code == 130 and len(err.strip().splitlines()) == 1 and "rerun the same command to resume" in err
