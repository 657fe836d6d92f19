"""LD3, AYS and OSS fitted grids: reproducible bit for bit, better than Karras on held-out samples, and their parts."""
from __future__ import annotations

import pytest
import torch

from diffbench.engine.sweep import run_sweep
from diffbench.fit import ays, gits, ld3
from diffbench.fit.artefacts import FIT_NFE, FIT_SECONDS
from diffbench.fit.run import fit_all
from diffbench.models.analytic import GaussianDenoiser
from diffbench.schedules import EDM
from diffbench.steps import make_sigmas, resolve_span
from tests.helpers.sweeps import sweep_args


@pytest.fixture
def small_fits(monkeypatch):
    """Fits of a few seconds: a coarser fine grid for OSS (GITS' teacher), fewer LD3 iterations."""
    monkeypatch.setattr(gits, "FINE_STEPS", 24)
    monkeypatch.setattr(ld3, "ITERATIONS", 6)


@pytest.mark.parametrize("method", [pytest.param("ld3", marks=pytest.mark.slow), "ays",
                                    pytest.param("oss", marks=pytest.mark.slow)])
def test_fit_refits_bit_for_bit_and_beats_karras_on_held_out_samples(tmp_path, small_fits, one_thread, method):
    common = sweep_args(tmp_path, tmp_path / "cache", "solver=ipndm", "nfe=5")
    args = [*common, "steps.calibration_n=8", f"steps.method={method}"]
    first, = fit_all(args, progress=False)
    refit, = fit_all(args, progress=False, refit=True)
    assert not refit.reused and refit.artefact["sigmas"] == first.artefact["sigmas"]
    assert first.artefact[FIT_NFE] > 0 and first.artefact[FIT_SECONDS] > 0
    fitted = run_sweep([*args, "steps=fitted"], progress=False).frame().iloc[0]
    karras = run_sweep([*common, "steps=karras"], progress=False).frame().iloc[0]
    assert fitted["rmse_ref"] < karras["rmse_ref"]  # held out: evaluated on seed 0, calibrated on seed 1000
    assert fitted[FIT_NFE] == first.artefact[FIT_NFE]


def test_ld3_positions_start_even_and_slack_stays_in_its_ball():
    assert ld3.positions(torch.zeros(5, dtype=torch.float64)).tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1])
    u = ld3.positions(torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64))
    assert u[0] == 0 and u[-1] == 1 and (u[1:] > u[:-1]).all()
    offset = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    moved = offset * ld3.project(offset, 1.0)
    assert moved.norm(dim=1).tolist() == pytest.approx([1.0, 0.5])


def test_ays_refinement_spreads_levels_evenly_under_a_convex_cost():
    idx = torch.arange(13, dtype=torch.float64)
    cost = (idx[None, :] - idx[:, None]) ** 2
    cost[idx[None, :] <= idx[:, None]] = torch.inf
    rounds = list(ays.refine(cost, torch.tensor([0, 1, 2, 3, 12])))
    totals = [float(cost[r[:-1], r[1:]].sum()) for r in rounds]
    assert rounds[0].tolist() == [0, 1, 2, 3, 12] and totals == sorted(totals, reverse=True) and totals[-1] < totals[0]
    assert (rounds[-1] - torch.tensor([0, 3, 6, 9, 12])).abs().max() <= 1  # a tie may stop it one fine level short


def test_ays_klub_vanishes_for_a_point_mass_and_grows_with_the_step():
    fine = torch.tensor([80.0, 10.0, 1.0, 0.1], dtype=torch.float64)
    x0, eps = torch.zeros(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    point_mass = GaussianDenoiser(torch.zeros(3), torch.tensor(1e-9), EDM())  # D(x, t) ~ 0: steps cost ~nothing
    assert ays.klub_costs(point_mass, x0, eps, fine).triu(1).nan_to_num(posinf=0).max() < 1e-30
    cost = ays.klub_costs(GaussianDenoiser(torch.zeros(3), torch.tensor(1.0), EDM()), x0, eps, fine)
    assert 0 < cost[1, 2] < cost[1, 3] and cost[0, 1] < cost[0, 2]


def test_ld3_and_ays_left_at_their_start_are_the_karras_grid(monkeypatch):
    """No LD3 iteration, or an AYS stopping error that ties every round (the first, Karras, is kept)."""
    monkeypatch.setattr(ld3, "ITERATIONS", 0)
    model = GaussianDenoiser(torch.zeros(4), torch.tensor(0.5), EDM())
    x, reference = 80.0 * torch.randn(3, 4, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64)
    for final_zero in (True, False):
        span = resolve_span(EDM(), 0.002, 80.0, final_zero)
        karras = make_sigmas("karras", 6, EDM(), sigma_min=0.002, sigma_max=80.0, final_zero=final_zero)
        assert torch.equal(ld3.fit(lambda start, grid: start, x, reference, span, 6), karras)
        assert torch.equal(ays.fit(model, reference, x.shape, 1000, span, 6, lambda grid: 0.0), karras)
