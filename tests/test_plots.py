"""Figures and the report from a small synthetic results table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diffbench import plots, results
from diffbench.cli import main
from diffbench.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def table(tmp_path):
    """2 solvers x 2 schedules x 3 NFE with CIs and stored samples, plus one failed point."""
    rng = np.random.default_rng(0)
    rows = []
    for solver, order in (("euler", 1), ("heun", 2)):
        for schedule in ("karras", "uniform_logsnr"):
            for nfe in (4, 8, 16):
                key = f"{solver}-{schedule}-{nfe}"
                rel = f"samples/{key}.npz"
                (tmp_path / "samples").mkdir(exist_ok=True)
                np.savez(tmp_path / rel, x=rng.uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32))
                err = 2.0 / nfe**order
                rows.append({"config_hash": key, "status": "ok", "solver.name": solver, "steps.name": schedule,
                             "choices.model": "image_mixture", "nfe_budget": nfe, "nfe_measured": nfe,
                             "time_sampling_s": 0.01 * nfe, "samples_path": rel, "git_sha": "abc",
                             "command": "diffbench sweep",
                             **results.metric_row({"rmse_ref": results.MetricValue(err, 0.8 * err, 1.2 * err),
                                                   "fd_random_conv": results.MetricValue(10 * err)})})
    rows.append({"config_hash": "failed-point", "status": "failed", "reason": "samples contain NaN",
                 "solver.name": "heun", "steps.name": "karras", "nfe_budget": 2})
    results.append(tmp_path, rows)
    return tmp_path


def _is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_plot_all_draws_nfe_pareto_and_grid_figures(table):
    df = results.load(table)
    paths = plots.plot_all(df, table, table / "figs")
    names = sorted(p.name for p in paths)
    assert names == ["nfe_fd_random_conv.png", "nfe_rmse_ref.png", "pareto_fd_random_conv.png",
                     "pareto_rmse_ref.png", "samples_grid.png"]
    assert all(_is_png(p) for p in paths)


def test_pareto_front_keeps_only_undominated_points():
    x = np.array([1.0, 2.0, 3.0, 1.5, 4.0])
    y = np.array([5.0, 3.0, 1.0, 6.0, 2.0])
    assert list(plots.pareto_front(x, y)) == [0, 1, 2]


def test_report_lists_every_point_and_inlines_figures(table):
    df = results.load(table)
    html, md = write_report(df, table, table / "report")
    page = html.read_text()
    for key in df["config_hash"]:
        assert key in page and key in md.read_text()
    assert page.count("data:image/png;base64,") == 5
    assert "samples contain NaN" in page
    assert "](figures/samples_grid.png)" in md.read_text()
    assert all(_is_png(p) for p in (table / "report" / "figures").iterdir())


@pytest.mark.slow  # 2.6 s: keeps the default suite under 3 minutes
def test_report_and_plot_commands(table, capsys):
    assert main(["report", str(table), "--out", str(table / "r2")]) == 0
    assert (table / "r2" / "report.html").is_file()
    assert main(["plot", str(table / "results.parquet"), "--metric", "rmse_ref", "--out", str(table / "p")]) == 0
    assert sorted(p.name for p in (table / "p").iterdir()) == ["nfe_rmse_ref.png", "pareto_rmse_ref.png",
                                                               "samples_grid.png"]
    capsys.readouterr()
    assert main(["plot", str(table), "--metric", "nope", "--out", str(table / "q")]) == 2
    assert "metric nope is not in the table" in capsys.readouterr().err
    assert not (table / "q").exists()


def test_guided_rows_get_one_panel_per_guidance_setting_never_averaged(table):
    """Rows at several CFG scales: one NFE panel per (model, rule, scale), each line holding only its own points."""
    df = results.load(table)
    guided = df[df["status"] == "ok"].copy()
    guided["guidance.name"], guided["guidance.scale"] = "cfg", 2.0
    other = guided.assign(**{"guidance.scale": 4.0, "rmse_ref": guided["rmse_ref"] * 10})
    unguided = guided.assign(**{"guidance.name": "none", "guidance.scale": 1.0})
    fig = plots.nfe_plot(pd.concat([guided, other, unguided]), "rmse_ref")
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert sorted(panels) == ["rmse_ref vs NFE: image_mixture", "rmse_ref vs NFE: image_mixture · cfg w=2",
                              "rmse_ref vs NFE: image_mixture · cfg w=4"]
    data = [line for line in panels["rmse_ref vs NFE: image_mixture · cfg w=2"].get_lines() if line.get_marker() == "o"]
    low = max(max(line.get_ydata()) for line in data)
    assert low == pytest.approx(guided["rmse_ref"].max())  # not the mean with the w=4 rows
