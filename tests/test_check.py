"""`diffbench check`: flags a degraded solver, passes an unchanged re-run on another seed, and its
tolerance keeps the whole check's false-alarm rate at alpha (diffbench/regression.py)."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from diffbench import regression, results
from diffbench.cli import main
from diffbench.errors import UsageError
from diffbench.results import MetricValue, metric_row

LEVEL = 0.95
Z_LEVEL = NormalDist().inv_cdf((1 + LEVEL) / 2)
# A small real sweep: tiny analytic image mixture, a few hundred samples, random-conv FD + solver error.
SOLVERS, BUDGETS = ("heun", "dpmpp_2m"), (8, 12)
SMALL = ["model=image_mixture_tiny", "device=cpu", "n_samples=256", "batch_size=256", "dataset.n=512",
         "metrics.n_boot=20", "metrics.error_n_boot=100", "steps=karras", f"solver={','.join(SOLVERS)}"]


def _row(key: str, value: float, se: float = 0.0, *, point: str | None = None, **extra) -> dict:
    """A results row with a metric `fd` and an interval of standard error se at LEVEL."""
    hw = Z_LEVEL * se
    return {"config_hash": key, "point_hash": point or key, "status": "ok", "solver.name": "euler",
            "steps.name": "karras", "nfe_measured": 4, "metrics.ci_level": LEVEL, **extra,
            **metric_row({"fd": MetricValue(value, value - hw, value + hw)})}


def _verdicts(current: list[dict], baseline: list[dict], **options) -> dict[str, str]:
    df = regression.compare(pd.DataFrame(current), pd.DataFrame(baseline), **options)
    return df.set_index("config_hash")["verdict"].to_dict()


# Tolerance -----------------------------------------------------------------------------------------

def test_tolerance_combines_both_intervals_and_corrects_for_the_number_of_comparisons():
    se_b, se_c, m = 0.3, 0.4, 2
    tol = NormalDist().inv_cdf(1 - regression.ALPHA / m) * math.hypot(se_b, se_c)
    base = [_row("a", 1.0, se_b), _row("b", 1.0, se_b)]
    cur = [_row("a", 1.0 + 0.99 * tol, se_c), _row("b", 1.0 + 1.01 * tol, se_c)]
    assert _verdicts(cur, base) == {"a": "ok", "b": "regression"}
    # Summing the half-widths would have let b pass; one comparison alone needs less to be flagged.
    assert 1.01 * tol < Z_LEVEL * (se_b + se_c)
    assert _verdicts(cur[1:], base[1:]) == {"b": "regression"}
    assert _verdicts([_row("a", 1.0 - 1.01 * tol, se_c)], base[:1]) == {"a": "improved"}
    assert _verdicts(cur, base, rtol=0.02 * tol) == {"a": "ok", "b": "ok"}
    assert _verdicts(_higher_is_better(cur), _higher_is_better(base)) == {"a": "ok", "b": "regression"}


def _higher_is_better(rows: list[dict]) -> list[dict]:
    """The rows' fd mirrored into a precision (higher is better) with the same interval widths."""
    return [{**r, "metric_names": '["precision"]', "precision": -r["fd"], "precision_lo": -r["fd_hi"],
             "precision_hi": -r["fd_lo"]} for r in rows]


@pytest.mark.slow  # moved out of the default selection (under 3 minutes); CI runs it with -m slow
def test_unchanged_reruns_fail_the_check_at_most_alpha_and_real_shifts_are_caught():
    """Simulated checks of m points whose runs are independent normal estimates with honest intervals."""
    rng = np.random.default_rng(0)
    checks, m = 300, 20
    mu, se = rng.uniform(0.1, 1.0, m), rng.uniform(0.01, 0.1, m)
    z_m = NormalDist().inv_cdf(1 - regression.ALPHA / m)
    shift = (z_m + 2) * math.sqrt(2) * se  # detectable with power Phi(2) per comparison
    false_alarms = caught = 0
    for _ in range(checks):
        base = [_row(f"p{j}", v, s) for j, (v, s) in enumerate(zip(mu + se * rng.standard_normal(m), se))]
        rerun = mu + se * rng.standard_normal(m)
        same = [_row(f"p{j}", v, s) for j, (v, s) in enumerate(zip(rerun, se))]
        false_alarms += "regression" in _verdicts(same, base).values()
        worse = _verdicts([_row(f"p{j}", v, s) for j, (v, s) in enumerate(zip(rerun + shift, se))], base)
        caught += sum(v == "regression" for v in worse.values())
    alpha = regression.ALPHA
    assert false_alarms <= checks * alpha + 3 * math.sqrt(checks * alpha * (1 - alpha))
    power, n = NormalDist().cdf(2), checks * m
    assert caught >= n * power - 3 * math.sqrt(n * power * (1 - power))


# Matching --------------------------------------------------------------------------------------------

def test_points_match_across_seeds_and_machine_columns_never_count():
    base = [_row("s0", 1.0, 0.1, point="p", seed=0, time_sampling_s=1.0, device_name="cpu", batch_size=256)]
    other_machine = [_row("s1", 1.0, 0.1, point="p", seed=1, time_sampling_s=99.0, device_name="H100", batch_size=7)]
    assert regression.match_key(pd.DataFrame(other_machine), pd.DataFrame(base)) == "point_hash"
    assert _verdicts(other_machine, base) == {"s0": "ok"}
    # A table holding two seeds of the point is matched seed by seed (full config hash).
    two_seeds = base + [_row("s1", 5.0, 0.1, point="p", seed=1)]
    assert regression.match_key(pd.DataFrame(two_seeds), pd.DataFrame(two_seeds)) == "config_hash"
    assert _verdicts(two_seeds, two_seeds) == {"s0": "ok", "s1": "ok"}


def test_missing_failed_and_valueless_points_are_regressions_with_their_reason():
    base = [_row(k, 1.0, 0.1) for k in "abcd"]
    cur = [_row("a", 1.0, 0.1), {**_row("b", float("nan")), "status": "failed", "reason": "NaN in samples"},
           _row("c", float("nan"))]
    df = regression.compare(pd.DataFrame(cur), pd.DataFrame(base), require_all=True).set_index("config_hash")
    assert df["verdict"].to_dict() == {"a": "ok", "b": "regression", "c": "regression", "d": "regression"}
    assert df.loc["b", "why"] == "failed: NaN in samples" and df.loc["c", "why"] == "no value"
    assert df.loc["d", "why"] == "not in the run"


def test_results_lacking_a_baseline_metric_or_point_are_usage_errors():
    base = pd.DataFrame([_row("a", 1.0)])
    renamed = pd.DataFrame([{**_row("a", 1.0), "metric_names": '["fid"]', "fid": 1.0}])
    with pytest.raises(UsageError, match="lack the baseline's metric"):
        regression.compare(renamed, base)
    with pytest.raises(UsageError, match="no point of the results matches"):
        regression.compare(pd.DataFrame([_row("z", 1.0)]), base)


# Same-seed rule and coverage ------------------------------------------------------------------------

CPU = {"device_name": "cpu: AMD EPYC (2 threads)", "version.torch": "2.14.1", "version.numpy": "2.4.6",
       "version.python": "3.11.7"}


def test_a_same_seed_rerun_is_held_to_its_reproducible_numbers():
    base = [_row("a@0", 1.0, 0.1, point="a", **CPU)]
    nudged = 1.0 + 1e-4  # 1e-4 relative: far inside the statistical tolerance (~0.1 * 3.2)
    assert _verdicts([_row("a@1", nudged, 0.1, point="a", **CPU)], base) == {"a@0": "ok"}  # another seed
    df = regression.compare(pd.DataFrame([_row("a@0", nudged, 0.1, point="a", **CPU)]), pd.DataFrame(base))
    assert df.loc[0, "verdict"] == "regression" and df.loc[0, "rule"] == "same seed"
    assert "same seed tolerance 1e-06" in df.loc[0, "why"]
    assert _verdicts([_row("a@0", 1.0 + 1e-8, 0.1, point="a", **CPU)], base) == {"a@0": "ok"}  # float rounding
    # Off for GPUs (not bit-reproducible run to run), other package versions, or when turned off.
    for other in ({**CPU, "device_name": "NVIDIA H200"}, {**CPU, "version.torch": "2.15.0"}):
        env_base = [_row("a@0", 1.0, 0.1, point="a", **other)] if other["device_name"] != CPU["device_name"] else base
        assert _verdicts([_row("a@0", nudged, 0.1, point="a", **other)], env_base) == {"a@0": "ok"}
    assert _verdicts([_row("a@0", nudged, 0.1, point="a", **CPU)], base, same_seed_rtol=None) == {"a@0": "ok"}


def test_only_shared_points_are_compared_unless_all_are_required():
    base = [_row(k, 1.0, 0.1) for k in "abc"]
    assert _verdicts([_row("a", 1.0, 0.1)], base) == {"a": "ok", "b": "skipped", "c": "skipped"}
    assert _verdicts([_row("a", 1.0, 0.1)], base, require_all=True) == {"a": "ok", "b": "regression",
                                                                        "c": "regression"}


def test_check_counts_points_not_in_the_run_and_prints_each_regression_once(tmp_path, capsys):
    results.write_table(tmp_path / "base", pd.DataFrame([_row(k, 1.0, 0.1) for k in ("p1", "p2", "p3")]))
    results.write_table(tmp_path / "run", pd.DataFrame([_row("p1", 1.0, 0.1), _row("p2", 9.0, 0.1)]))
    capsys.readouterr()
    assert main(["check", str(tmp_path / "run"), "--baseline", str(tmp_path / "base")]) == 1
    out = capsys.readouterr().out
    assert "2 comparisons, 1 regressions; 1 baseline points not in the run" in out
    assert out.count("p2") == 1 and "REGRESSION euler / karras / nfe 4 (p2) fd: worse by 8" in out
    assert "p3" not in out
    assert main(["check", str(tmp_path / "run"), "--baseline", str(tmp_path / "base"), "--require-all"]) == 1
    assert "(p3) fd: not in the run" in capsys.readouterr().out
    results.write_table(tmp_path / "part", pd.DataFrame([_row("p1", 1.0, 0.1)]))
    assert main(["check", str(tmp_path / "part"), "--baseline", str(tmp_path / "base")]) == 0
    results.write_table(tmp_path / "worse", pd.DataFrame([_row("p2", 9.0, 0.1)]))
    capsys.readouterr()
    assert main(["check", str(tmp_path / "worse"), "--baseline", str(tmp_path / "base")]) == 1
    assert capsys.readouterr().out.splitlines()[0].startswith("1 comparisons, 1 regressions")  # no empty table


# End to end: real sweeps ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Baseline (seed 0), the same points with NFE halved, and an unchanged re-run on seed 1."""
    root = tmp_path_factory.mktemp("check")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFBENCH_CACHE", str(root / "cache"))
        for name, extra in (("base", [f"nfe={','.join(str(b) for b in BUDGETS)}"]),
                            ("halved", [f"nfe={','.join(str(b // 2) for b in BUDGETS)}"]),
                            ("seed1", [f"nfe={','.join(str(b) for b in BUDGETS)}", "seed=1"])):
            assert main(["sweep", *SMALL, *extra, f"out={root / name}", "--quiet", "--no-report"]) == 0
    return root


def _relabel_as(degraded: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """Give each degraded row the keys of the baseline point with the same solver and twice its budget."""
    keys = baseline.set_index(["solver.name", "nfe_budget"])[["config_hash", "point_hash"]]
    pairs = [keys.loc[(s, 2 * b)] for s, b in zip(degraded["solver.name"], degraded["nfe_budget"])]
    return degraded.assign(config_hash=[p["config_hash"] for p in pairs], point_hash=[p["point_hash"] for p in pairs])


@pytest.mark.slow
def test_check_flags_the_same_points_run_with_half_the_nfe(sweeps, capsys):
    baseline = results.read_table(sweeps / "base")
    results.write_table(sweeps / "relabelled", _relabel_as(results.read_table(sweeps / "halved"), baseline))
    capsys.readouterr()
    assert main(["check", str(sweeps / "relabelled"), "--baseline", str(sweeps / "base")]) == 1
    out = capsys.readouterr().out
    for _, row in baseline.iterrows():
        point = f"{row['solver.name']} / karras / nfe {row['nfe_measured']} ({row['config_hash']})"
        assert f"REGRESSION {point} rmse_ref: worse by" in out


@pytest.mark.slow
def test_check_passes_an_unchanged_rerun_on_another_seed(sweeps, capsys):
    capsys.readouterr()
    assert main(["check", str(sweeps / "seed1"), "--baseline", str(sweeps / "base")]) == 0
    out = capsys.readouterr().out
    metrics = results.metric_columns(results.read_table(sweeps / "base"))
    assert f"{len(SOLVERS) * len(BUDGETS) * len(metrics)} comparisons, 0 regressions" in out


@pytest.mark.slow
def test_update_writes_the_results_as_the_baseline(sweeps, capsys):
    target = sweeps / "new" / "baseline.parquet"
    assert main(["check", str(sweeps / "seed1"), "--baseline", str(target), "--update"]) == 0
    assert target.is_file() and target.with_suffix(".csv").is_file()
    assert main(["check", str(sweeps / "seed1"), "--baseline", str(target)]) == 0
    pd.testing.assert_frame_equal(results.read_table(target), results.read_table(sweeps / "seed1"))
