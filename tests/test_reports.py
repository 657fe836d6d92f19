"""Reports and figures: written all or nothing (full disk), output folders and table shapes checked
before any work, captions and metric notes, tick labels that never overlap, unambiguous grid rows."""
from __future__ import annotations

import errno
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffbench import atomicio, plots, results
from diffbench.cli import main
from diffbench.report import write_report


@pytest.fixture
def table(tmp_path):
    """Two models x (euler, a stochastic euler_a) x NFE 4, 8, with intervals and stored samples."""
    rng = np.random.default_rng(0)
    (tmp_path / "samples").mkdir()
    rows = []
    for model, (solver, stochastic), nfe in itertools.product(("mix_a", "mix_b"), (("euler", False), ("euler_a", True)),
                                                              (4, 8)):
        key = f"{model}-{solver}-{nfe}"
        np.savez(tmp_path / "samples" / f"{key}.npz", x=rng.uniform(-1, 1, (2, 1, 4, 4)).astype(np.float32))
        rows.append({"config_hash": key, "status": "ok", "choices.model": model, "solver.name": solver,
                     "steps.name": "karras", "nfe_budget": nfe, "nfe_measured": nfe, "solver_stochastic": stochastic,
                     "time_sampling_s": 0.01 * nfe, "samples_path": f"samples/{key}.npz", "metrics.ci_level": 0.95,
                     **results.metric_row({"rmse_ref": results.MetricValue(1 / nfe, 0.9 / nfe, 1.1 / nfe),
                                           "fd_random_conv": results.MetricValue(10 / nfe, 9 / nfe, 11 / nfe)})})
    results.append(tmp_path, rows)
    return tmp_path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys, code: int, exit_code: int = 2) -> str:
    err = capsys.readouterr().err
    assert code == exit_code and err.count("\n") == 1 and err.startswith("error: "), err
    return err


# Atomic writes ------------------------------------------------------------------------------------------

@pytest.mark.slow  # moved out of the default selection (under 3 minutes); CI runs it with -m slow
def test_a_full_disk_mid_report_leaves_the_previous_report_intact(table, capsys, monkeypatch):
    assert main(["report", str(table)]) == 0
    before = _files(table / "report")
    assert {"report.html", "report.md", "figures/samples_grid.png"} <= set(before)
    written = []
    real = Path.write_bytes

    def fills_up(path: Path, data: bytes) -> int:
        written.append(path)
        if len(written) == 3:  # the disk fills during the third file
            real(path, data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(Path, "write_bytes", fills_up)
    capsys.readouterr()
    err = _one_line_error(capsys, main(["report", str(table), "--title", "new"]), exit_code=1)
    assert "No space left on device" in err
    assert _files(table / "report") == before  # pages, figures, and no temporaries left behind
    assert len(written) == 3


# Output folders and table shapes, checked before any work ---------------------------------------------

@pytest.mark.parametrize("command", ["plot", "report"])
@pytest.mark.parametrize("case", ["a file", "under a file", "read-only", "full device"])
def test_bad_output_folders_are_one_line_before_any_work(table, capsys, monkeypatch, command, case):
    a_file = table / "a_file"
    a_file.write_text("keep")
    out = {"a file": a_file, "under a file": a_file / "out", "read-only": Path("/proc/diffbench_out"),
           "full device": table / "new"}[case]
    if case == "full device":
        usage = atomicio.shutil.disk_usage(table)
        monkeypatch.setattr(atomicio.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    drawn = []
    monkeypatch.setattr(plots, "charts", lambda *a, **k: drawn.append(a))
    err = _one_line_error(capsys, main([command, str(table), "--out", str(out)]))
    assert "--out" in err and not drawn
    assert a_file.read_text() == "keep" and not (table / "new").exists()


def _shapes(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"no status column": df.drop(columns="status"),
            "duplicated key": pd.concat([df, df.iloc[:1]], ignore_index=True),
            "non-numeric metric": df.assign(rmse_ref=df["rmse_ref"].astype(object).where(df.index > 0, "abc")),
            "non-numeric nfe": df.assign(nfe_measured=df["nfe_measured"].astype(str).where(df.index > 0, "many")),
            "no solver column": df.drop(columns="solver.name")}


@pytest.mark.parametrize("shape", ["no status column", "duplicated key", "non-numeric metric", "non-numeric nfe",
                                   "no solver column"])
def test_malformed_tables_are_one_line_for_report_plot_and_check(table, tmp_path, capsys, shape):
    bad = tmp_path / "bad" / "results.csv"
    bad.parent.mkdir()
    _shapes(results.load(table))[shape].to_csv(bad, index=False)
    expect = {"no status column": "no 'status' column", "duplicated key": "repeat a config_hash",
              "non-numeric metric": "metric column rmse_ref holds non-numeric values",
              "non-numeric nfe": "nfe_measured",
              "no solver column": "lacks the column(s) solver.name"}[shape]
    commands = [["report", str(bad), "--out", str(tmp_path / "r")], ["plot", str(bad), "--out", str(tmp_path / "p")]]
    if shape in ("no status column", "duplicated key", "non-numeric metric"):
        commands += [["check", str(bad), "--baseline", str(table)], ["check", str(table), "--baseline", str(bad)]]
    for argv in commands:
        assert expect in _one_line_error(capsys, main(argv)), argv
    assert not (tmp_path / "r").exists() and not (tmp_path / "p").exists()


# Content ----------------------------------------------------------------------------------------------

def test_report_captions_each_figure_and_explains_each_metric(table):
    _, md = write_report(results.load(table), table, table / "report")
    text = md.read_text()
    notes = [line for line in text.splitlines() if line.startswith("- `")]
    assert [n.split("`")[1] for n in notes] == ["rmse_ref", "fd_random_conv", "[lo, hi]"]
    assert "random convolutional network" in notes[1] and "95%" in notes[2]
    assert "not a convergence error" in notes[0]
    captions = [line for line in text.splitlines() if line.startswith("*") and line.endswith("*")]
    assert len(captions) == 5 and "Pareto front" in captions[1] and "one row per solver" in captions[-1]
    assert "stochastic solver: its rmse_ref" in captions[2 if "rmse_ref" in captions[2] else 0]
    # rmse_ref cells of the stochastic solver carry the mark, the deterministic ones do not.
    marked = {row.split("|")[1].strip(): row.count(plots.STOCHASTIC_MARK) for row in text.splitlines()
              if row.startswith("| mix_")}
    assert all(marked[k] == (1 if "euler_a" in k else 0) for k in marked) and len(marked) == 8


def test_nfe_tick_labels_never_overlap():
    nfes = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 25, 30, 35, 50, 100, 1000]
    df = pd.DataFrame({"config_hash": [str(n) for n in nfes], "status": "ok", "solver.name": "euler",
                       "steps.name": "karras", "nfe_measured": nfes, "metric_names": '["rmse_ref"]',
                       "rmse_ref": [1.0 / n for n in nfes]})
    fig = plots.nfe_plot(df, "rmse_ref")
    fig.tight_layout()
    plots.hide_overlapping_tick_labels(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for axis in (fig.axes[0].xaxis, fig.axes[0].yaxis):
        boxes = [t.get_window_extent(renderer) for t in axis.get_ticklabels(which="both")
                 if t.get_visible() and t.get_text()]
        assert len(boxes) >= 2
        assert not any(a.padded(2).overlaps(b) for a, b in itertools.combinations(boxes, 2))  # 2 px apart
    shown = [t.get_text() for t in fig.axes[0].xaxis.get_ticklabels() if t.get_visible()]
    assert "3" in shown and "1000" in shown and len(shown) < len(nfes)


def test_sample_grid_rows_name_model_solver_and_schedule(table):
    fig = plots.grid_plot(results.load(table), table)
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == ["mix_a:\neuler (karras)", f"mix_a:\neuler_a (karras) {plots.STOCHASTIC_MARK}",
                      "mix_b:\neuler (karras)", f"mix_b:\neuler_a (karras) {plots.STOCHASTIC_MARK}"]
    assert [ax.get_title() for ax in fig.axes[:2]] == ["NFE 4", "NFE 8"]
