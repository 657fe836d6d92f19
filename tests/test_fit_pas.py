"""PAS (diffbench.fit.pas): the base solver untouched at the initial coordinates, refits bit for bit, better than the
base solver on held-out samples of the tiny mixture at NFE 5, and its basis."""
from __future__ import annotations

import pytest
import torch

from diffbench.engine.points import prepare
from diffbench.engine.sweep import run_sweep
from diffbench.errors import UsageError
from diffbench.fit import pas
from diffbench.fit.artefacts import FIT_NFE, FIT_SECONDS
from diffbench.fit.run import fit_all
from diffbench.sampling import make_plan, sample_batch
from tests.helpers.sweeps import sweep_args


def test_initial_coordinates_reproduce_the_base_solver(mixture):
    plan = make_plan("ipndm", 5, mixture.schedule)
    run = lambda p: sample_batch(mixture, p, range(6), 3, mixture.shape).x  # noqa: E731
    base = run(plan)
    assert torch.equal(run(pas.corrected_plan(plan, {"pas": {}})), base)  # no corrected step: bit for bit
    unit = {i: [1.0] + [0.0] * (size - 1) for i, size in enumerate(pas.sizes(plan.steps))}
    corrected = run(pas.corrected_plan(plan, {"pas": unit}))  # d' = |d| d/|d| at every step: rounding only
    assert not torch.equal(corrected, base) and torch.allclose(corrected, base, rtol=0, atol=1e-12)


def test_basis_is_orthonormal_starts_at_d_and_points_along_the_path():
    gen = torch.Generator().manual_seed(0)
    d, start, taken, other, travelled = (torch.randn(3, 2, 5, generator=gen, dtype=torch.float64) for _ in range(5))
    u = pas.basis(d, [start, taken, other, d], travelled)
    assert u.shape == (3, pas.PCA_NUM, 10)
    assert torch.allclose(u @ u.transpose(1, 2), torch.eye(pas.PCA_NUM, dtype=torch.float64).expand(3, -1, -1))
    assert torch.allclose(u[:, 0], d.flatten(1) / d.flatten(1).norm(dim=1, keepdim=True))
    assert bool(((u[:, 1:] * travelled.flatten(1)[:, None]).sum(-1) >= 0).all())
    assert pas.basis(d, [start, d], travelled).shape[1] == 2  # two buffer vectors: one principal direction
    dependent = pas.basis(d, [start, taken, taken * 2 + d, d], travelled)  # d in the centred buffer's span
    assert torch.equal(dependent[:, 3], torch.zeros(3, 10, dtype=torch.float64))
    assert torch.allclose(dependent[:, :3] @ dependent[:, :3].transpose(1, 2), torch.eye(3, dtype=torch.float64))
    flat = [t[:, :1, :2] for t in (start, taken, other, d)]  # 2-dimensional data: at most 2 principal directions
    small = pas.basis(flat[-1], flat, travelled[:, :1, :2])
    assert small.shape == (3, 3, 2) and torch.equal(small[:, 2], torch.zeros(3, 2, dtype=torch.float64))


@pytest.mark.slow  # ~2.5 s each: outside the default selection (under 3 minutes); CI runs it with -m slow
@pytest.mark.parametrize("solver", ["ipndm", "dpmpp_2m", "unipc_bh2_o2"])
def test_pas_refits_bit_for_bit_and_beats_its_base_solver_on_held_out_samples(tmp_path, one_thread, solver):
    common = sweep_args(tmp_path, tmp_path / "cache", f"solver={solver}", "nfe=5")
    args = [*common, "steps.calibration_n=8", "steps.method=pas"]
    first, = fit_all(args, progress=False)
    refit, = fit_all(args, progress=False, refit=True)
    assert not refit.reused and refit.artefact["pas"] == first.artefact["pas"] and first.artefact["pas"]
    assert first.artefact["sigmas"] == prepare([*common, "steps=karras"])[0].plan.sigmas.tolist()
    assert first.artefact[FIT_NFE] > 0 and first.artefact[FIT_SECONDS] > 0
    fitted = run_sweep([*args, "steps=fitted"], progress=False).frame().iloc[0]
    karras = run_sweep([*common, "steps=karras"], progress=False).frame().iloc[0]
    assert fitted["status"] == "ok" and fitted["nfe_measured"] == karras["nfe_measured"] == 5
    assert fitted["rmse_ref"] < karras["rmse_ref"]  # held out: evaluated on seed 0, calibrated on seed 1000
    assert fitted[FIT_NFE] == first.artefact[FIT_NFE] and fitted["steps.method"] == "pas"


def test_pas_refuses_solvers_with_more_than_one_evaluation_per_level(tmp_path, one_thread):
    args = sweep_args(tmp_path, tmp_path / "cache", "solver=heun", "nfe=5", "steps.calibration_n=2",
                      "steps.method=pas")
    with pytest.raises(UsageError, match="once per grid level"):
        fit_all(args, progress=False)
