"""`diffbench reproduce`: presets of published tables, their comparison, tolerance, exit codes, missing files;
and `dataset=stats` (published reference statistics used as given)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from huggingface_hub import constants as hub_constants
from omegaconf import OmegaConf

from diffbench import reproduce as rp
from diffbench.reproduce import Fact, compare
from tests.helpers.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
PAPER_PRESETS = ["edm-heun-35", "dpm-solver-v3-edm-cifar10", "diff-sampler-edm-cifar10", "edm2-img512-s-fid"]
TINY = ["debug=default", "metrics=error_only", "n_samples=8", "batch_size=8"]  # one point in seconds on a CPU


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every cache (weights, statistics, solutions, Hugging Face) inside the test's folder: none of the user's."""
    monkeypatch.setenv("DIFFBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DIFFBENCH_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


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


# ~2 s a preset: the first in the default selection, the others with -m slow (CI).
@pytest.mark.parametrize("name", [PAPER_PRESETS[0],
                                  *(pytest.param(n, marks=pytest.mark.slow) for n in PAPER_PRESETS[1:3])])
def test_missing_checkpoint_and_statistics_one_line_exit_2_nothing_written(tmp_path, capsys, name):
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "reproduce", name, f"out={out}")
    assert code == 2 and stdout == "" and err.count("\n") == 1
    weights = tmp_path / "cache" / "weights"
    assert "(1) checkpoint edm-cifar10-32x32-uncond-vp.pt not found: set model.path=" in err
    assert "(2) statistics cifar10" in err and "set dataset.path=" in err and f"put it in {weights}" in err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_class_conditional_preset_names_checkpoint_statistics_and_vae_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "reproduce", "edm2-img512-s-fid", f"out={out}")
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert "(1) checkpoint edm2-img512-s-fid.pt not found: set model.path=" in err and "export_edm2.py" in err
    assert "(2) statistics img512-fid.npz not found: set dataset.path=" in err and "edm2/dataset-refs/img512.pkl" in err
    assert ("(3) hub folder stabilityai/sd-vae-ft-mse not in the Hugging Face cache: huggingface-cli download "
            "stabilityai/sd-vae-ft-mse" in err and "set model.vae=" in err)
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_pinned_files_resolve_with_their_hash_or_hub_folder_recorded(tmp_path):
    images = tmp_path / "imgs.npz"
    np.savez(images, images=np.zeros((4, 8, 8, 3), dtype=np.uint8))
    digest = __import__("hashlib").sha256(images.read_bytes()).hexdigest()
    vae = tmp_path / "vae"
    vae.mkdir()
    preset = rp.Preset("p", "t", "s", (), (), (rp.PinnedFile("images", "dataset.path", None, digest.upper(), None),
                                              rp.PinnedFile("hub", "model.vae", None, None, None)), 0.02, 16, 0.1)
    cfg = OmegaConf.create({"cache_dir": str(tmp_path / "cache"), "dataset": {"path": str(images)},
                            "model": {"vae": str(vae)}})
    used = {f["what"]: f for f in rp.check_files(preset, cfg)}
    assert used["images"]["sha256"] == digest and used["images"]["check"] == "sha256 matches the preset"
    assert used["hub"]["path"] == str(vae) and used["hub"]["sha256"] is None


def test_a_hub_folder_cannot_pin_a_sha256(tmp_path, capsys):
    point = {"run": ["solver=euler", "nfe=3"], "metric": "fd", "published": 1.0, "source": "x"}
    preset = _preset(tmp_path / "p.yaml", [point], files=[{"what": "hub", "field": "model.vae", "sha256": "0" * 64}])
    code, _, err = _run(capsys, "reproduce", preset)
    assert code == 2 and "what=hub is a folder" in err and err.count("\n") == 1


def test_a_file_that_differs_from_the_pinned_sha256_is_refused(tmp_path, capsys):
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.zeros(3), sigma=np.eye(3))
    point = {"run": ["solver=euler", "nfe=3"], "metric": "fd", "published": 1.0, "source": "x"}
    (tmp_path / "conf" / "reproduce").mkdir(parents=True)
    _preset(tmp_path / "conf" / "reproduce" / "fake.yaml", [point],
            protocol=[*TINY, "dataset=stats", f"dataset.path={stats}"],
            files=[{"what": "statistics", "field": "dataset.path", "sha256": "0" * 64}])
    code, stdout, err = _run(capsys, "--config-dir", str(tmp_path / "conf"), "reproduce", "fake",
                             f"out={tmp_path / 'out'}")
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert f"statistics {stats} has sha256 {rp.assetstore.file_digest(stats)}, the preset pins {'0' * 64}" in err
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


@pytest.mark.slow  # moved out of the default selection (under 3 minutes); CI runs it with -m slow
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


@pytest.mark.slow  # moved out of the default selection (under 3 minutes); CI runs it with -m slow
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


def _mnist_quick_preset(path: Path, published: list[float] | None = None) -> str:
    """diffbench-mnist-fid on CPU: the shipped MNIST model and test images, random_conv features, quick N = 16."""
    data = yaml.safe_load((ROOT / "diffbench" / "configs" / "reproduce" / "diffbench-mnist-fid.yaml").read_text())
    swap = {"dataset.path": "dataset.path=mnist_test.npz", "metrics.extractor": "metrics.extractor=random_conv"}
    data["protocol"] = [swap.get(item.partition("=")[0], item) for item in data["protocol"]]
    data["protocol"] += ["metrics.ref_n=256", "device=cpu", "batch_size=16"]
    data["files"] = [f for f in data["files"] if f["what"] != "inception"]
    data["quick"] = {"n_samples": 16}
    for point in data["points"]:
        point["metric"] = "fd_random_conv"
    for point, value in zip(data["points"], published or []):
        point["published"] = value
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.slow
def test_quick_mode_runs_the_mnist_preset_end_to_end_on_a_cpu(tmp_path, capsys, sweep_cache, one_thread):
    """~30 s: the MNIST model standing in for a paper's: quick N, comparison, exit codes, a resumed rerun."""
    out, args = tmp_path / "out", (f"cache_dir={sweep_cache}", "--quick")
    preset = _mnist_quick_preset(tmp_path / "mnist.yaml")
    code, stdout, _ = _run(capsys, "reproduce", preset, f"out={out}", *args, "--json")
    result = json.loads(stdout)
    measured = [p["measured"] for p in result["points"]]
    assert result["quick"] and result["n_samples"] == 16 and all(m is not None and m > 0 for m in measured)
    assert code == (0 if result["passed"] else 1)
    assert all(p["tolerance"] >= 0.1 * p["published"] - 1e-12 for p in result["points"])  # quick: 10%
    assert result["files"][0]["what"] == "images" and len(result["files"][0]["sha256"]) == 64
    matching = _mnist_quick_preset(tmp_path / "mnist-own.yaml", [m * 1.05 for m in measured])
    code, stdout, _ = _run(capsys, "reproduce", matching, f"out={out}", *args)
    assert code == 0 and "QUICK: N = 16 instead of the protocol's, tolerance 10%" in stdout
    assert "2 of 2 points within tolerance" in stdout and "images: " in stdout and " sha256 " in stdout
    assert len(pd.read_parquet(out / "results.parquet")) == 2  # the second run resumed both points
