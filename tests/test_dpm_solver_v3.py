"""DPM-Solver-v3 and its empirical model statistics (EMS) on analytic models with exact answers."""
from __future__ import annotations

import math

import pytest
import torch

from diffbench.errors import UsageError
from diffbench.models.analytic import GaussianDenoiser
from diffbench.models.base import Denoiser
from diffbench.models.conditions import ConditionSet
from diffbench.models.edm import edm, edm_coefficients
from diffbench.models.guidance import GuidedModel, cfg
from diffbench.noise import NoiseSource
from diffbench.sampling import make_plan, sample_batch
from diffbench.solvers import SOLVERS
from diffbench.solvers import ems as ems_mod
from diffbench.solvers.ems import EMS, cached_ems, compute_ems, lambda_grid, samples_for_ems

V3 = SOLVERS["dpm_solver_v3"].fn
DDIM = SOLVERS["ddim"].fn
SMALL = {"ems_points": 32, "ems_samples": 32}  # small EMS keep the tests fast


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Every test gets its own EMS cache."""
    monkeypatch.setenv("DIFFBENCH_CACHE", str(tmp_path / "cache"))


class CountedGaussian(GaussianDenoiser):
    """The exact Gaussian denoiser, counting every call (the EMS code must not bypass it)."""

    calls = 0

    def denoise(self, x, sigma):
        self.calls += 1
        return super().denoise(x, sigma)


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def _grid(model, nfe: int, final_zero: bool = False, step_grid: str = "uniform_logsnr") -> torch.Tensor:
    return make_plan("dpm_solver_v3", nfe, model.schedule, step_grid=step_grid, final_zero=final_zero).sigmas


def test_ems_are_exact_for_a_gaussian(gauss):
    """D linear and diagonal: l = sigma^2/(s^2+sigma^2) exactly, f is deterministic (s = 0), b = f'."""
    lams = lambda_grid(-math.log(80.0), -math.log(0.002), 41)
    stats = compute_ems(gauss, samples_for_ems(gauss, (4,), 32, seed=0), lams)
    sig2, var, mu = torch.exp(-2 * lams)[:, None], gauss.std**2, gauss.mean
    assert torch.allclose(stats.l, sig2 / (var + sig2), rtol=0, atol=1e-12)
    assert float(stats.s.abs().max()) < 1e-6
    # b = d/dlambda of f = -mu sigma^2/(s^2+sigma^2); l' is a finite difference on the (coarse) grid.
    assert torch.allclose(stats.b, 2 * mu * sig2 * var / (var + sig2) ** 2, rtol=0, atol=0.03)


def test_finite_difference_jvp_matches_autodiff(mixture):
    lams = lambda_grid(-math.log(80.0), -math.log(0.002), 7)
    x0 = samples_for_ems(mixture, (1, 4, 4), 32, seed=0)
    auto, fd = (compute_ems(mixture, x0, lams, jvp=m) for m in ("autodiff", "fd"))
    for name in ("l", "s", "b"):
        assert torch.allclose(getattr(auto, name), getattr(fd, name), rtol=1e-4, atol=1e-5), name


def test_chunked_statistics_match_one_batch(mixture):
    lams = lambda_grid(-math.log(80.0), -math.log(0.002), 5)
    x0 = samples_for_ems(mixture, (1, 4, 4), 20, seed=0)
    one, chunked = compute_ems(mixture, x0, lams, batch_size=20), compute_ems(mixture, x0, lams, batch_size=7)
    for name in ("l", "s", "b"):
        assert torch.allclose(getattr(one, name), getattr(chunked, name), rtol=1e-9, atol=1e-12), name


def test_ems_cache_is_reused_written_atomically_and_keyed(gauss, tmp_path):
    model = CountedGaussian(gauss.mean, gauss.std)
    lams = lambda_grid(-math.log(80.0), -math.log(0.002), 16)
    first = cached_ems(model, (4,), lams, samples=16, seed=0)
    computed = model.calls
    assert computed > 2 * 16
    files = list(ems_mod.cache_dir().iterdir())
    assert [f.suffix for f in files] == [".pt"]  # no temporary file left behind
    ems_mod._LOADED.clear()  # forget this process's copy: the second call must read the disk cache
    second = cached_ems(model, (4,), lams, samples=16, seed=0)
    assert model.calls == computed and torch.equal(first.l, second.l) and torch.equal(first.b, second.b)
    prov = EMS.load(files[0]).provenance
    assert prov["samples"] == 16 and prov["source"] == "data" and prov["model"]["model_kind"] == "gaussian"
    # Another seed, N or a model that merely describes itself alike are other entries.
    cached_ems(model, (4,), lams, samples=16, seed=1)
    cached_ems(model, (4,), lams, samples=17, seed=0)
    cached_ems(CountedGaussian(gauss.mean + 1, gauss.std), (4,), lams, samples=16, seed=0)
    assert len(list(ems_mod.cache_dir().iterdir())) == 4


class NoData(GaussianDenoiser):
    """A model without sample_data: EMS samples then come from a reference solve."""

    sample_data = property()  # hasattr() is False


def test_models_without_data_use_reference_solver_samples(gauss):
    model = NoData(gauss.mean, gauss.std)
    assert ems_mod.sample_source(model) == "heun64-karras"
    x0 = samples_for_ems(model, (4,), 8, seed=2)
    x_T = NoiseSource(2, range(8)).randn((4,), torch.float64) * 80.0
    assert torch.allclose(x0, gauss.exact_ode(x_T, 80.0, 0.0), rtol=0, atol=2e-2)  # 64 Heun steps


def test_first_order_without_corrector_is_ddim(gauss):
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    sigmas = _grid(gauss, 7, final_zero=True, step_grid="karras")
    a = V3(gauss, x, sigmas, order=1, use_corrector=False, ems="none")
    assert torch.allclose(a, DDIM(gauss, x, sigmas), rtol=0, atol=1e-10)


def test_model_ems_make_v3_far_more_accurate_on_a_gaussian(gauss):
    """With the Gaussian's EMS the linear part is exact: v3's error is set by the EMS grid, not by NFE."""
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    for nfe in (5, 8, 10):
        sigmas = _grid(gauss, nfe)
        exact = gauss.exact_ode(x, float(sigmas[0]), float(sigmas[-1]))
        err = _rms(V3(gauss, x, sigmas, ems="auto", ems_points=64, ems_samples=32), exact)
        assert err < 0.01 * _rms(DDIM(gauss, x, sigmas), exact), nfe
        assert err < 0.1 * _rms(V3(gauss, x, sigmas, ems="none"), exact), nfe  # degenerate EMS: DPM-Solver++-like
    finer = _rms(V3(gauss, x, sigmas, ems="auto", ems_points=256, ems_samples=32), exact)
    assert finer < err / 4


def test_model_ems_beat_baselines_on_a_mixture(mixture):
    x = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80
    ref_plan = make_plan("rk45", 1, mixture.schedule, solver_options={"rtol": 1e-7, "atol": 1e-7}, final_zero=False)
    ref = ref_plan.solver.fn(mixture, x, ref_plan.sigmas, **ref_plan.options)
    for nfe in (6, 10):
        sigmas = _grid(mixture, nfe)
        err = _rms(V3(mixture, x, sigmas, ems="auto", **SMALL), ref)
        assert err < 0.5 * min(_rms(DDIM(mixture, x, sigmas), ref), _rms(V3(mixture, x, sigmas, ems="none"), ref)), nfe


def test_ems_are_not_sampling_nfe_and_keep_batches_invariant(mixture):
    """Through the engine: measured NFE equals declared although EMS are computed on first use."""
    plan = make_plan("dpm_solver_v3", 8, mixture.schedule, solver_options={"ems": "auto", "ems_points": 8,
                                                                           "ems_samples": 8})
    full = sample_batch(mixture, plan, range(16), seed=3, shape=(1, 4, 4))
    assert full.nfe_measured == 8 and bool(torch.isfinite(full.x).all())
    parts = torch.cat([sample_batch(mixture, plan, range(i, i + 5), seed=3, shape=(1, 4, 4)).x for i in (0, 5, 10)]
                      + [sample_batch(mixture, plan, [15], seed=3, shape=(1, 4, 4)).x])
    assert torch.equal(parts, full.x)


def test_ems_from_a_file_and_its_errors(gauss, tmp_path):
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    sigmas = _grid(gauss, 6)
    lams = lambda_grid(-math.log(80.0), -math.log(0.002), SMALL["ems_points"])
    path = tmp_path / "gauss.pt"
    compute_ems(gauss, samples_for_ems(gauss, (4,), 32, seed=0), lams).save(path)
    assert torch.equal(V3(gauss, x, sigmas, ems=str(path)), V3(gauss, x, sigmas, ems="auto", **SMALL))
    with pytest.raises(UsageError, match="no EMS file"):
        V3(gauss, x, sigmas, ems=str(tmp_path / "missing.pt"))
    narrow = tmp_path / "narrow.pt"
    compute_ems(gauss, samples_for_ems(gauss, (4,), 8, seed=0), lambda_grid(0.0, 1.0, 4)).save(narrow)
    with pytest.raises(UsageError, match="covers sigma"):
        V3(gauss, x, sigmas, ems=str(narrow))
    with pytest.raises(UsageError, match="solver.order"):
        V3(gauss, x, sigmas, order=4)


@pytest.mark.parametrize("options", [{"c_pseudo": True}, {"p_pseudo": True}, {"order": 2}, {"use_corrector": False}])
def test_variants_converge(gauss, options):
    """The paper's switches all give a consistent solver (error falls with NFE; degenerate EMS, \
as the Gaussian's are exact)."""
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20
    errs = []
    for nfe in (10, 40):
        sigmas = _grid(gauss, nfe)
        errs.append(_rms(V3(gauss, x, sigmas, ems="none", **options),
                         gauss.exact_ode(x, float(sigmas[0]), float(sigmas[-1]))))
    assert errs[1] < errs[0] / 4


def _guided_mnist() -> Denoiser:
    """The shipped class-conditional UNet under CFG w = 2, bound to labels 0, 1, 2 (what a guided sweep samples)."""
    conditions = ConditionSet("test", torch.arange(3))
    return GuidedModel(edm("diffbench-mnist-cond.pt"), conditions, cfg(2.0)).bind(range(3))


@pytest.mark.parametrize("make_model", [pytest.param(lambda: edm("diffbench-mnist.pt"), id="mnist"),
                                        pytest.param(_guided_mnist, id="guided", marks=pytest.mark.slow)])
def test_ems_take_the_derivative_of_a_real_network(make_model):
    """Through the TorchScript MNIST UNets (TorchNet; labels and CFG's doubled batch included): autodiff JVPs
    equal central differences, and they move l.

    Inference mode made torch.func.jvp either refuse the network or treat it as a constant (l from c_skip alone).
    """
    model = make_model()
    x0 = torch.rand((3, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    lams = lambda_grid(-math.log(2.0), -math.log(0.5), 3)
    auto, fd = (compute_ems(model, x0, lams, jvp=m, batch_size=3) for m in ("autodiff", "fd"))
    assert float((auto.l - fd.l).abs().max()) < 0.03 and float((auto.l - fd.l).abs().mean()) < 2e-3
    constant_net_l = 1 - edm_coefficients(torch.exp(-lams), 0.5)[0]  # 1 - c_skip: a network without derivative
    assert float((auto.l.mean((1, 2, 3)) - constant_net_l).abs().max()) > 0.05
