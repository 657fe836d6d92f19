"""Fitted step grids: the GITS dynamic programme, AYS tables, artefacts (reproducible, cached) and sweeps using them."""
from __future__ import annotations

import json

import pytest
import torch

from diffbench.cli import main
from diffbench.engine.points import prepare
from diffbench.engine.sweep import run_sweep
from diffbench.errors import UsageError
from diffbench.fit import gits, search
from diffbench.fit.artefacts import FIT_NFE, FIT_SECONDS
from diffbench.fit.run import fit_all
from diffbench.schedules import EDM
from diffbench.steps import AYS_TABLES, make_sigmas, resolve_span
from tests.helpers.sweeps import sweep_args


def test_cheapest_path_takes_even_jumps_under_a_convex_cost():
    idx = torch.arange(13, dtype=torch.float64)
    cost = (idx[None, :] - idx[:, None]) ** 2
    cost[idx[None, :] <= idx[:, None]] = torch.inf
    assert gits.cheapest_path(cost, 4).tolist() == [0, 3, 6, 9, 12]


def test_cheapest_path_avoids_an_expensive_jump():
    cost = torch.full((4, 4), torch.inf, dtype=torch.float64)
    cost[0, 1], cost[1, 3], cost[0, 2], cost[2, 3] = 1.0, 1.0, 0.1, 5.0
    assert gits.cheapest_path(cost, 2).tolist() == [0, 1, 3]


@pytest.mark.parametrize("table", sorted(AYS_TABLES))
def test_ays_ten_steps_is_the_published_table(table):
    assert make_sigmas("ays", 10, EDM(), table=table).tolist() == list(AYS_TABLES[table])


def test_ays_other_step_counts_interpolate_log_sigma():
    s = make_sigmas("ays", 19, EDM(), table="sd15")
    table = AYS_TABLES["sd15"]
    assert len(s) == 20 and s[-1] == 0 and (s[1:] < s[:-1]).all()
    assert s[:-1][::2].tolist() == pytest.approx(list(table[:-1]), rel=1e-12)  # table levels kept, midpoints between
    assert float(s[1]) == pytest.approx((table[0] * table[1]) ** 0.5, rel=1e-12)
    with pytest.raises(UsageError, match="table"):
        make_sigmas("ays", 10, EDM(), table="sd3")


def test_fitted_without_an_artefact_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="diffbench fit"):
        prepare(sweep_args(tmp_path, tmp_path / "cache", "solver=euler", "nfe=3", "steps=fitted"))


@pytest.fixture
def small_gits(monkeypatch):
    monkeypatch.setattr(gits, "FINE_STEPS", 12)
    monkeypatch.setattr(gits, "TEACHER_SUBSTEPS", 2)


def test_fit_is_cached_reproducible_and_used_by_sweeps(tmp_path, small_gits, one_thread):
    args = sweep_args(tmp_path, tmp_path / "cache", "solver=dpmpp_2m", "nfe=4", "steps.calibration_n=4")
    first, = fit_all(args, progress=False)
    stored = json.loads(first.path.read_text())
    assert not first.reused and first.path.parent.name == "fitted"
    assert len(stored["sigmas"]) == 5 and stored["sigmas"][-1] == 0 and stored[FIT_NFE] > 0
    assert stored["request"]["calibration"] == {"seed": 1000, "n": 4}
    again, = fit_all(args, progress=False)
    assert again.reused and again.artefact == stored
    refit, = fit_all(args, progress=False, refit=True)
    assert refit.artefact["sigmas"] == stored["sigmas"]  # bit for bit: same calibration noise, same grid
    other, = fit_all([*args, "steps.calibration_seed=7"], progress=False)
    assert other.key != first.key

    point, = prepare([*args, "steps=fitted"])
    assert point.config["steps"]["sigmas"] == stored["sigmas"]
    assert point.config["steps"]["artefact"] == first.key
    summary = run_sweep([*args, "steps=fitted"], progress=False)
    row = summary.frame().iloc[0]
    assert row["status"] == "ok" and row[FIT_NFE] == stored[FIT_NFE] and row[FIT_SECONDS] == refit.artefact[FIT_SECONDS]
    assert row["steps.artefact"] == first.key


def test_evaluating_on_the_calibration_seed_is_refused(tmp_path, small_gits, one_thread):
    args = sweep_args(tmp_path, tmp_path / "cache", "solver=euler", "nfe=3", "steps.calibration_n=2",
                      "steps.calibration_seed=5")
    fit_all(args, progress=False)
    prepare([*args, "steps=fitted", "seed=0"])
    with pytest.raises(UsageError, match="calibration"):
        prepare([*args, "steps=fitted", "seed=5"])


def test_search_left_at_its_start_is_the_karras_grid(monkeypatch):
    monkeypatch.setattr(search, "ROUNDS", 0)
    for final_zero in (True, False):
        span = resolve_span(EDM(), 0.002, 80.0, final_zero)
        karras = make_sigmas("karras", 6, EDM(), sigma_min=0.002, sigma_max=80.0, final_zero=final_zero)
        assert torch.equal(search.fit(lambda s: 0.0, span, 6), karras)


def test_search_only_accepts_lower_errors():
    span = resolve_span(EDM(), 0.002, 80.0, True)
    target = torch.tensor([80.0, 20.0, 5.0, 1.0, 0.002, 0.0], dtype=torch.float64)
    calls: list[float] = []

    def error(s):
        calls.append(float((s[:-1].log() - target[:-1].log()).abs().sum()))
        return calls[-1]

    fitted = search.fit(error, span, 5)
    assert calls[-1] >= min(calls) and error(fitted) == min(calls) < calls[0]
    assert (fitted[1:] < fitted[:-1]).all() and fitted[0] == 80.0 and fitted[-2] == pytest.approx(0.002)


def test_search_fit_beats_karras_on_its_calibration_samples(tmp_path, one_thread):
    args = sweep_args(tmp_path, tmp_path / "cache", "solver=ipndm", "nfe=4", "steps.calibration_n=8",
                      "steps.method=search")
    fitted, = fit_all(args, progress=False)
    rmse = fitted.artefact["calibration_rmse"]
    assert rmse["fitted"] < rmse["karras"] and fitted.artefact[FIT_NFE] > 0


def test_cli_fit_prints_where_the_grid_went_and_refuses_other_schedules(tmp_path, small_gits, capsys):
    args = sweep_args(tmp_path, tmp_path / "cache", "solver=euler", "nfe=3", "steps.calibration_n=2")
    assert main(["fit", *args, "-q"]) == 0
    assert str(tmp_path / "cache" / "fitted") in capsys.readouterr().out
    assert main(["fit", *args[:-1], "steps=karras"]) == 2
    assert "steps=fitted" in capsys.readouterr().err
    assert main(["fit", *args, "steps.method=amed"]) == 2


def test_guided_fits_are_fitted_on_the_guided_field_and_keyed_by_it(tmp_path, one_thread):
    """A fit of a conditional model samples what the sweep samples (labels and guidance bound to the calibration
    indices): its Karras calibration RMSE is the guided sweep's rmse_ref on those samples; each guidance has its
    own artefact, and a sweep under a guidance that was not fitted finds none."""
    model = sweep_args(tmp_path, tmp_path / "cache", "model=class_gmm", "solver=dpmpp_2m", "nfe=4")
    fit = ["steps.calibration_n=8", "steps.method=search"]
    guided = [*model, "conditions=balanced", "guidance=cfg"]
    w2, = fit_all([*guided, *fit, "guidance.scale=2"], progress=False)
    w4, = fit_all([*guided, *fit, "guidance.scale=4"], progress=False)
    plain, = fit_all([*model, *fit], progress=False)
    assert len({w2.key, w4.key, plain.key}) == 3 and w2.artefact["request"]["guidance"]["scale"] == 2
    for fitted, scale in ((w2, 2), (w4, 4)):
        row = run_sweep([*guided, f"guidance.scale={scale}", "seed=1000", "n_samples=8", "metrics.error_samples=8"],
                        progress=False).frame().iloc[0]
        assert row["rmse_ref"] == pytest.approx(fitted.artefact["calibration_rmse"]["karras"], rel=1e-9)
    assert w2.artefact["calibration_rmse"]["karras"] != pytest.approx(w4.artefact["calibration_rmse"]["karras"])
    with pytest.raises(UsageError, match="diffbench fit"):
        prepare([*guided, *fit, "guidance.scale=8", "steps=fitted"])
