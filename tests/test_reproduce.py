"""`diffbench reproduce`: presets of published tables, their comparison, tolerance, exit codes, missing files;
and `dataset=stats` (published reference statistics used as given)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from diffbench import reproduce as rp
from diffbench.reproduce import Fact, compare
from tests.helpers.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
PAPER_PRESETS = ["edm-heun-35", "dpm-solver-v3-edm-cifar10", "diff-sampler-edm-cifar10"]
TINY = ["debug=default", "metrics=error_only", "n_samples=8", "batch_size=8"]  # one point in seconds on a CPU


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every cache (weights, statistics, solutions) inside the test's folder: nothing resolves from the user's."""
    monkeypatch.setenv("DIFFBENCH_CACHE", str(tmp_path / "cache"))


_run = run_cli


def _preset(path: Path, points: list[dict], protocol: list[str] = TINY, **fields: object) -> str:
    data = {"title": "test", "source": "a test", "protocol": protocol, "points": points, **fields}
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_baseline_preset_holds_the_committed_results_at_their_n_and_seed():
    baseline = pd.read_parquet(ROOT / "results" / "baseline.parquet")
    preset = rp.load_preset("diffbench-baseline")
    assert {"n_samples=1024", "seed=0"} <= set(preset.protocol)
    for fact in preset.points:
        run = dict(item.split("=") for item in fact.run)
        row = baseline[(baseline["solver.name"] == run["solver"]) & (baseline["nfe"] == int(run["nfe"]))]
        assert len(row) == 1 and row.iloc[0]["config_hash"] in fact.source
        assert fact.published == pytest.approx(float(row.iloc[0][fact.metric]), rel=1e-12)
        assert (row.iloc[0]["n_samples"], row.iloc[0]["seed"]) == (1024, 0)


def test_list_names_every_preset_with_its_source(capsys):
    code, out, _ = _run(capsys, "reproduce", "--list", "--json")
    rows = {r["preset"]: r for r in json.loads(out)}
    assert code == 0 and set(rows) >= {"diffbench-baseline", "diffbench-mnist-fid", *PAPER_PRESETS}
    assert rows["edm-heun-35"]["files"] == ["checkpoint", "statistics", "inception"]
    assert "Table 2" in rows["edm-heun-35"]["source"] and "Table 1" in rows["dpm-solver-v3-edm-cifar10"]["source"]


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_missing_checkpoint_and_statistics_one_line_exit_2_nothing_written(tmp_path, capsys, name):
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "reproduce", name, f"out={out}")
    assert code == 2 and stdout == "" and err.count("\n") == 1
    weights = tmp_path / "cache" / "weights"
    assert "(1) checkpoint edm-cifar10-32x32-uncond-vp.pt not found: set model.path=" in err
    assert "(2) statistics cifar10" in err and "set dataset.path=" in err and f"put it in {weights}" in err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_a_file_that_differs_from_the_pinned_sha256_is_refused(tmp_path, capsys):
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.zeros(3), sigma=np.eye(3))
    point = {"run": ["solver=euler", "nfe=3"], "metric": "fd", "published": 1.0, "source": "x"}
    preset = _preset(tmp_path / "p.yaml", [point], protocol=[*TINY, "dataset=stats", f"dataset.path={stats}"],
                     files=[{"what": "statistics", "field": "dataset.path", "sha256": "0" * 64}])
    code, _, err = _run(capsys, "reproduce", preset, f"out={tmp_path / 'out'}")
    assert code == 2 and f"statistics {stats} has sha256" in err and f"pins {'0' * 64}" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fields, message", [
    ({"points": []}, "points is empty"),
    ({"points": [{"run": ["solver=euler"], "metric": "fd", "published": "high", "source": "x"}]}, "is not a number"),
    ({"points": [{"run": ["solver=euler"], "metric": "fd", "published": 1.0}]}, "source is required"),
    ({"tolerance": 2}, "expected a fraction"),
    ({"colour": "red"}, "unknown field(s) colour"),
])
def test_bad_preset_is_one_line_exit_2(tmp_path, capsys, fields, message):
    data = {"points": [{"run": ["solver=euler", "nfe=3"], "metric": "fd", "published": 1.0, "source": "x"}], **fields}
    preset = _preset(tmp_path / "p.yaml", **data)
    code, _, err = _run(capsys, "reproduce", preset, f"out={tmp_path / 'out'}")
    assert code == 2 and message in err and err.count("\n") == 1


def test_unknown_preset_names_the_presets(capsys):
    code, _, err = _run(capsys, "reproduce", "no-such-table")
    assert code == 2 and "diffbench-baseline" in err


def _fact(published: float) -> Fact:
    return Fact("p", ("solver=euler",), "fid", published, "x")


def test_tolerance_is_the_larger_of_the_relative_one_and_the_interval():
    row = {"fid": 10.15, "fid_lo": 10.1, "fid_hi": 10.2, "status": "ok", "config_hash": "h"}
    assert compare(_fact(10.0), row, 0.02).within  # 1.5% off, inside 2%
    assert not compare(_fact(10.0), {**row, "fid": 10.3}, 0.02).within  # 3% off, interval half-width 0.05
    wide = compare(_fact(10.0), {**row, "fid": 10.3, "fid_lo": 9.6, "fid_hi": 11.0}, 0.02)
    assert wide.within and wide.tolerance == pytest.approx(0.7)  # 3% off, inside the interval's half-width
    failed = compare(_fact(10.0), {"status": "failed", "reason": "NaN samples", "fid": None}, 0.02)
    assert not failed.within and failed.reason == "NaN samples" and failed.row()["verdict"] == "MISS"


def test_exit_1_on_a_miss_and_0_when_every_point_lies_within(tmp_path, capsys, sweep_cache, one_thread):
    out, point = tmp_path / "out", {"run": ["solver=heun", "nfe=5"], "metric": "rmse_ref", "source": "x"}
    wrong = _preset(tmp_path / "wrong.yaml", [{**point, "published": 1000.0}])
    code, stdout, _ = _run(capsys, "reproduce", wrong, f"out={out}", f"cache_dir={sweep_cache}", "--json")
    result = json.loads(stdout)
    measured = result["points"][0]["measured"]
    assert code == 1 and not result["passed"] and result["points"][0]["verdict"] == "MISS" and measured > 0
    right = _preset(tmp_path / "right.yaml", [{**point, "published": measured * 1.015}], quick={"n_samples": 16})
    code, stdout, _ = _run(capsys, "reproduce", right, f"out={out}", f"cache_dir={sweep_cache}")
    assert code == 0 and "within" in stdout and "1 of 1 points within tolerance" in stdout
    _, stdout, _ = _run(capsys, "reproduce", right, f"out={out}", f"cache_dir={sweep_cache}", "--quick")
    assert "QUICK: N = 16 instead of the protocol's, tolerance 10%" in stdout


def _stats_run(capsys, tmp_path: Path, cache: Path, *extra: str) -> dict:
    """One tiny FD point on random_conv features; returns its row."""
    args = ["debug=default", "metrics.names=[fd]", "metrics.extractor=random_conv", "solver=euler", "nfe=3",
            f"cache_dir={cache}", *extra]
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    code, _, err = _run(capsys, "sweep", *args, f"out={out}", "--quiet", "--no-report")
    assert code == 0, err
    return pd.read_parquet(out / "results.parquet").iloc[0].to_dict()


def test_published_statistics_give_the_fd_of_the_statistics_they_hold(tmp_path, capsys, sweep_cache, one_thread):
    computed = _stats_run(capsys, tmp_path, sweep_cache)
    with np.load(next((sweep_cache / "refs").glob("*.npz"))) as z:
        mean, cov = z["mean"], z["cov"]
    features = np.load(next((sweep_cache / "refs").glob("*.features.npy")))
    np.savez(tmp_path / "musigma.npz", mu=mean, sigma=cov)
    np.savez(tmp_path / "rows.npz", pool_3=features)
    common = ["dataset=stats", "dataset.extractor=random_conv", "dataset.resize_mode=clean"]
    given = _stats_run(capsys, tmp_path, sweep_cache, *common, f"dataset.path={tmp_path / 'musigma.npz'}",
                       "dataset.n=64")
    rows = _stats_run(capsys, tmp_path, sweep_cache, *common, f"dataset.path={tmp_path / 'rows.npz'}")
    assert given["fd_random_conv"] == pytest.approx(computed["fd_random_conv"], rel=1e-9)
    assert rows["fd_random_conv"] == pytest.approx(computed["fd_random_conv"], rel=1e-5)
    digest = __import__("hashlib").sha256((tmp_path / "musigma.npz").read_bytes()).hexdigest()
    assert given["ref_id"] == f"stats-musigma-sha256-{digest[:16]}" and given["n_ref"] == 64 and rows["n_ref"] == 64


def test_published_statistics_of_another_extractor_are_refused(tmp_path, capsys, sweep_cache):
    np.savez(tmp_path / "s.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    code, _, err = _run(capsys, "sweep", "debug=default", "metrics.names=[fd]", "metrics.extractor=random_conv",
                        "dataset=stats", f"dataset.path={tmp_path / 's.npz'}", f"out={tmp_path / 'out'}",
                        f"cache_dir={sweep_cache}", "--quiet")
    assert code == 2 and "computed with extractor inception" in err and "metrics.extractor=inception" in err


@pytest.mark.slow
def test_baseline_preset_reproduces_the_committed_numbers(tmp_path, capsys, sweep_cache):
    """~1 min of CPU: the six facts of results/baseline.parquet re-measured at its N and seed."""
    code, stdout, _ = _run(capsys, "reproduce", "diffbench-baseline", f"out={tmp_path / 'out'}",
                           f"cache_dir={sweep_cache}", "--json")
    result = json.loads(stdout)
    assert code == 0 and result["passed"] and len(result["points"]) == 6
    assert max(abs(p["difference_pct"]) for p in result["points"]) < 0.01  # same seed on a CPU: ~1e-5 relative


def test_missing_image_file_names_the_field_and_how_to_make_it(tmp_path, capsys):
    code, _, err = _run(capsys, "reproduce", "diffbench-mnist-fid", f"out={tmp_path / 'out'}")
    assert code == 2 and "(1) images mnist_b.npz not found: set dataset.path=/path/to/mnist_b.npz" in err
    assert "mnist_test.npz" in err and not (tmp_path / "out").exists()
