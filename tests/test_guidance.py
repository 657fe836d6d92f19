"""Guidance on the exact class-conditional mixture: CFG's limits bit for bit, the doubled batch, the variants'
identities, and network evaluations counted as the passes the model really makes, per solver family."""
from __future__ import annotations

import math

import pytest
import torch

from diffbench.errors import UsageError
from diffbench.models.analytic import MixtureDenoiser
from diffbench.models.base import NO_LABEL, ConditionalDenoiser
from diffbench.models.conditions import ConditionSet, make_conditions
from diffbench.models.guidance import GuidedModel, make_guidance
from diffbench.models.mixtures import ClassMixtureDenoiser, class_gmm
from diffbench.sampling import make_plan, sample_batch
from diffbench.solvers import SOLVERS
from tests.helpers.convergence import DETERMINISTIC, ZERO_END, fitted_slope, order_options

N = 12


class RowCounter(ConditionalDenoiser):
    """Counts the rows a conditional model really evaluates (the network's forward passes)."""

    def __init__(self, inner: ClassMixtureDenoiser):
        self.inner, self.rows, self.calls = inner, 0, []
        self.schedule, self.shape, self.classes, self.dtype = inner.schedule, inner.shape, inner.classes, inner.dtype

    def denoise_cond(self, x, sigma, labels):
        self.rows += x.shape[0]
        self.calls.append(sigma[labels != NO_LABEL].clone())
        return self.inner.denoise_cond(x, sigma, labels)


@pytest.fixture
def model() -> ClassMixtureDenoiser:
    return class_gmm(classes=3, per_class=2)


def guided(model, guidance: dict, guide=None) -> GuidedModel:
    return GuidedModel(model, make_conditions({"name": "balanced"}, N, model.classes), make_guidance(guidance), guide)


def probe(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 2, generator=g, dtype=torch.float64) * 2
    sigma = torch.exp(torch.linspace(-3, 3, N, dtype=torch.float64))
    return x, sigma, torch.arange(N) % model.classes


def test_mixture_conditionals_are_exact(model):
    """Given label c, D is the denoiser of class c's own mixture; unconditional, the whole mixture's."""
    x, sigma, labels = probe(model)
    for c in range(model.classes):
        own = model.mixture.means[model.component_class == c]
        part = MixtureDenoiser(own, stds=0.2)
        torch.testing.assert_close(model.denoise_cond(x, sigma, torch.full((N,), c)), part(x, sigma))
    torch.testing.assert_close(model(x, sigma), model.mixture(x, sigma), rtol=0, atol=0)


def test_cfg_limits_are_bitwise(model):
    """w = 1 is the conditional model and w = 0 the unconditional one, bit for bit."""
    x, sigma, labels = probe(model)
    for scale, want in ((1.0, model.denoise_cond(x, sigma, labels)), (0.0, model(x, sigma))):
        out = guided(model, {"name": "cfg", "scale": scale}).bind(range(N))(x, sigma)
        assert torch.equal(out, want)


def test_doubled_batch_equals_two_calls(model):
    """One doubled batch gives what two separate calls and the CFG formula give."""
    x, sigma, labels = probe(model)
    out = guided(model, {"name": "cfg", "scale": 3.0}).bind(range(N))(x, sigma)
    cond, uncond = model.denoise_cond(x, sigma, labels), model(x, sigma)
    assert torch.equal(out, torch.lerp(uncond, cond, 3.0))
    torch.testing.assert_close(out, uncond + 3.0 * (cond - uncond))


def test_rescale_zero_and_apg_one_are_cfg(model):
    """CFG rescale with phi = 0 is plain CFG (bitwise); APG with eta = 1 and no threshold is CFG."""
    x, sigma, _ = probe(model)
    plain = guided(model, {"name": "cfg", "scale": 4.0}).bind(range(N))(x, sigma)
    zero = guided(model, {"name": "rescale", "scale": 4.0, "phi": 0.0}).bind(range(N))(x, sigma)
    apg = guided(model, {"name": "apg", "scale": 4.0, "eta": 1.0, "threshold": 0.0}).bind(range(N))(x, sigma)
    full = guided(model, {"name": "rescale", "scale": 4.0, "phi": 1.0}).bind(range(N))(x, sigma)
    assert torch.equal(zero, plain)
    torch.testing.assert_close(apg, plain)
    cond = model.denoise_cond(x, sigma, probe(model)[2])
    torch.testing.assert_close(full.std(dim=1), cond.std(dim=1))  # phi = 1 matches D_c's per-sample std


def test_interval_guides_only_inside(model):
    """Outside (sigma_lo, sigma_hi] the guided model is the conditional one; inside it is CFG."""
    x, sigma, labels = probe(model)
    out = guided(model, {"name": "interval", "scale": 3.0, "sigma_lo": 0.5, "sigma_hi": 5.0}).bind(range(N))(x, sigma)
    cfg = guided(model, {"name": "cfg", "scale": 3.0}).bind(range(N))(x, sigma)
    inside = (sigma > 0.5) & (sigma <= 5.0)
    assert 0 < int(inside.sum()) < N
    assert torch.equal(out[~inside], model.denoise_cond(x, sigma, labels)[~inside])
    assert torch.equal(out[inside], cfg[inside])


def test_guidance_without_an_interval_skips_the_row_mask_and_matches_it(model):
    """CFG indexes every row without a mask (no host read-back per call) and equals the masked path bit for bit."""
    x, sigma, _ = probe(model)
    cfg, wide = (guided(model, options).bind(range(N)) for options in (
        {"name": "cfg", "scale": 3.0}, {"name": "interval", "scale": 3.0, "sigma_lo": 1e-9, "sigma_hi": 1e9}))
    assert isinstance(cfg.parent.guidance.active(sigma), slice)
    assert not isinstance(wide.parent.guidance.active(sigma), slice)
    assert torch.equal(cfg(x, sigma), wide(x, sigma))
    assert cfg.network_rows(x, sigma) == wide.network_rows(x, sigma) == 2 * N


def test_autoguidance_with_itself_is_conditional(model):
    """Autoguidance D_g + w (D_c - D_g) with the model as its own guide is D_c; a weaker guide pushes away from it."""
    x, sigma, labels = probe(model)
    same = guided(model, {"name": "autoguidance", "scale": 3.0, "guide": "x"}, guide=model).bind(range(N))(x, sigma)
    torch.testing.assert_close(same, model.denoise_cond(x, sigma, labels), rtol=0, atol=1e-12)
    weak = class_gmm(classes=3, per_class=2, std=0.6)
    out = guided(model, {"name": "autoguidance", "scale": 3.0, "guide": "x"}, guide=weak).bind(range(N))(x, sigma)
    torch.testing.assert_close(out, model.denoise_cond(x, sigma, labels) + 2 * (
        model.denoise_cond(x, sigma, labels) - weak.denoise_cond(x, sigma, labels)))


# One solver of each family (file of diffbench/solvers/): cheap representatives of the known families, and the
# first registered solver of any family added later (so a new solver file is covered with no test change).
REPRESENTATIVES = ["ddim", "deis_2", "dpm_solver_adaptive", "dpmpp_2m", "dpm_solver_v3", "euler", "heun", "evodiff",
                   "si_euler_maruyama", "dpmpp_2m_hb", "ipndm", "rk45", "restart", "sa_solver", "euler_maruyama",
                   "teleport_heun", "ts_dpmpp_2m", "unipc_bh2"]
_FIRST_OF_MODULE = {s.fn.__module__: n for n, s in reversed(list(SOLVERS.items()))}
FAMILIES = REPRESENTATIVES + sorted(n for m, n in _FIRST_OF_MODULE.items()
                                    if m not in {SOLVERS[r].fn.__module__ for r in REPRESENTATIVES})
FAMILY_OPTIONS = {"dpm_solver_v3": {"ems": "none"}}


def family_plan(solver: str, schedule):
    """A plan of about 9 calls that the solver's NFE rule accepts (adaptive ones: their own step count)."""
    spec = SOLVERS[solver]
    steps = next(s for s in range(spec.min_steps, 40) if (spec.nfe_for(s, True, FAMILY_OPTIONS.get(solver)) or 9) >= 9)
    return make_plan(solver, spec.nfe_for(steps, True, FAMILY_OPTIONS.get(solver)) or 9, schedule, sigma_min=0.05,
                     sigma_max=20.0, solver_options=FAMILY_OPTIONS.get(solver))


@pytest.mark.parametrize("solver", FAMILIES)
@pytest.mark.parametrize("rule", [{"name": "cfg", "scale": 2.0},
                                  {"name": "interval", "scale": 2.0, "sigma_lo": 0.3, "sigma_hi": 3.0},
                                  {"name": "autoguidance", "scale": 2.0, "guide": "weak"}])
def test_network_evaluations_are_the_passes_made(model, solver, rule):
    """nfe_network = the rows the networks really evaluate, per sample: 2 x calls for CFG, calls plus the
    calls inside the interval for the guidance interval, per solver family (adaptive included)."""
    counter = RowCounter(model)
    guide = RowCounter(class_gmm(classes=3, per_class=2, std=0.5)) if rule["name"] == "autoguidance" else None
    plan = family_plan(solver, model.schedule)
    batch = sample_batch(guided(counter, rule, guide), plan, range(N), seed=0, shape=(2,))
    rows = counter.rows + (guide.rows if guide else 0)
    assert batch.nfe_network == pytest.approx(rows / N, rel=1e-12)
    calls = torch.cat(counter.calls)
    if rule["name"] == "interval":
        inside = int(((calls > 0.3) & (calls <= 3.0)).sum())
        assert 0 < inside < len(calls) and batch.nfe_network == pytest.approx((len(calls) + inside) / N)
    else:
        assert batch.nfe_network == pytest.approx(2 * batch.nfe_measured)


def test_conditions_follow_the_sample_index(model):
    """Sample i's label and result do not depend on the batch it is in (bound by index, like noise)."""
    m = guided(model, {"name": "cfg", "scale": 3.0})
    plan = make_plan("dpm_solver_adaptive", 1, model.schedule, sigma_min=0.05, sigma_max=20.0)
    whole = sample_batch(m, plan, range(N), seed=0, shape=(2,)).x
    parts = torch.cat([sample_batch(m, plan, idx, seed=0, shape=(2,)).x
                       for idx in ([0, 1, 2, 3, 4], list(range(5, N)))])
    torch.testing.assert_close(whole, parts, rtol=0, atol=1e-12)


def test_guided_samples_land_in_their_class(model):
    """Strong CFG on the exact mixture sends every sample to a component of its own label."""
    m = guided(model, {"name": "cfg", "scale": 4.0})
    plan = make_plan("heun", 39, model.schedule, sigma_min=0.002, sigma_max=80.0)
    x = sample_batch(m, plan, range(N), seed=0, shape=(2,)).x
    nearest = torch.cdist(x.double(), model.mixture.means).argmin(dim=1)
    assert torch.equal(model.component_class[nearest], torch.arange(N) % 3)


def test_bad_guidance_values_are_usage_errors():
    for bad in ({"name": "interval", "sigma_lo": 2.0, "sigma_hi": 1.0}, {"name": "rescale", "phi": 1.5},
                {"name": "cfg", "scale": math.inf}, {"name": "autoguidance"}, {"name": "nope"}):
        with pytest.raises(UsageError):
            make_guidance(bad)


def test_guidance_needs_a_conditional_model(gauss):
    with pytest.raises(UsageError, match="class-conditional"):
        GuidedModel(gauss, ConditionSet("x", torch.zeros(4, dtype=torch.long)), make_guidance({"name": "cfg"}))


SPAN = dict(step_grid="uniform_logsnr", sigma_min=0.1, sigma_max=10.0, final_zero=False)


@pytest.fixture(scope="module")
def guided_ode():
    """The CFG (w = 3) denoiser of the exact mixture, starting points, and tight RK45 solutions over SPAN
    (`exact`) and over SPAN followed by a last step to 0 (`to_zero`)."""
    mixture = class_gmm(classes=3, per_class=2)
    m = guided(mixture, {"name": "cfg", "scale": 3.0}).bind(range(N))
    x_T = torch.randn(N, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 10.0
    ends = []
    for final_zero in (False, True):
        tight = make_plan("rk45", 1, mixture.schedule, solver_options={"rtol": 1e-11, "atol": 1e-11},
                          **{**SPAN, "final_zero": final_zero})
        ends.append(tight.solver.fn(m, x_T, tight.sigmas, noise=None, **tight.options))
    return m, x_T, *ends


@pytest.mark.parametrize("solver", ["euler", "ddim", "heun", "dpmpp_2m", "unipc_bh2_o2"])
def test_order_on_the_guided_mixture(guided_ode, solver):
    """On the exact CFG field each solver converges at its registered order against the tight RK45 solution."""
    m, x_T, exact, _ = guided_ode
    errors = []
    for steps in (32, 64):
        plan = make_plan(solver, SOLVERS[solver].nfe_for(steps, False), m.schedule, **SPAN)
        out = plan.solver.fn(m, x_T, plan.sigmas, noise=None, **plan.options)
        errors.append(float((out - exact).pow(2).mean().sqrt()))
    assert math.log2(errors[0] / errors[1]) == pytest.approx(SOLVERS[solver].order, abs=0.35)


# Every deterministic solver's order on the guided field (w = 3), fitted over step counts where it is asymptotic
# there: 32..128 x min_steps (measured over 8..32, 21 of the 43 are still pre-asymptotic on this nonlinear field,
# e.g. deis_rhork_4 3.61, ipndm 2.94, pndm 6.19; over 32..128 all but the five below are within 0.3 of their order).
# iPNDM's fixed Adams-Bashforth weights on this non-uniform grid: 1.67 over 32..128, 1.96 over 64..256.
# UniPC-3 (last step lowered, as on the Gaussian) and DPM-Solver-v3 with the degenerate EMS, which also lowers its
# last orders, tend to order 2: v3 3.37 over 8..32, 2.86 over 16..64, 2.06 over 32..128, 2.01 over 48..192.
# UniPC-2 with its corrector shows its p + 1 = 3 early (2.94 bh1 / 2.76 bh2 over 8..32) and drifts toward 2 further
# out (2.36 / 2.48 over 32..128), its lowered last step as UniPC-3's; deis_rhoab_3 (registered 2) is 2.03 over
# 8..32 and faster further out (2.72 over 32..128, 2.71 over 64..256): these three are fitted over 8..32.
GUIDED_WINDOW = {"ipndm": (64, 96, 128, 192, 256), "unipc_bh1": (64, 96, 128, 192, 256),
                 "unipc_bh2": (64, 96, 128, 192, 256), "dpm_solver_v3": (48, 64, 96, 128, 192),
                 **dict.fromkeys(("unipc_bh1_o2", "unipc_bh2_o2", "deis_rhoab_3"), (8, 12, 16, 24, 32))}
GUIDED_ASYMPTOTIC = {"unipc_bh1": 2, "unipc_bh2": 2, "dpm_solver_v3": 2}


@pytest.mark.slow  # 43 solvers x 5 step counts up to 768 steps: ~10 min on the shared 2-core CPU
@pytest.mark.parametrize("solver", DETERMINISTIC)
def test_every_deterministic_solver_has_its_order_on_the_guided_mixture(guided_ode, solver):
    """Fitted order within 0.3 of the registered (asymptotic) order against the tight RK45 solution of the CFG ODE."""
    m, x_T, exact, to_zero = guided_ode
    final_zero = solver in ZERO_END
    steps = [s * SOLVERS[solver].min_steps for s in GUIDED_WINDOW.get(solver, (32, 48, 64, 96, 128))]
    errors = []
    for n in steps:
        plan = make_plan(solver, SOLVERS[solver].nfe_for(n, final_zero), m.schedule,
                         solver_options=order_options(solver, SPAN["sigma_max"]), **{**SPAN, "final_zero": final_zero})
        out = plan.solver.fn(m, x_T, plan.sigmas, noise=None, **plan.options)
        errors.append(float((out - (to_zero if final_zero else exact)).pow(2).mean().sqrt()))
    slope, order = fitted_slope(solver, steps, errors), GUIDED_ASYMPTOTIC.get(solver, SOLVERS[solver].order)
    assert order - 0.3 <= slope <= order + 0.3, f"{solver}: fitted order {slope:.2f}, errors {errors}"


@pytest.mark.slow  # ~15 s: EMS estimation on 1024 samples x 250 levels
def test_dpm_solver_v3_estimates_its_ems_on_the_guided_field(tmp_path, monkeypatch):
    """ems=auto on a guided model: statistics of the guided field (its cache key differs from the unguided one)."""
    from diffbench.solvers import ems

    monkeypatch.setenv("DIFFBENCH_CACHE", str(tmp_path))
    model = class_gmm(dim=4, classes=3)
    cfg = make_guidance({"name": "cfg", "scale": 3.0})
    guided = GuidedModel(model, make_conditions({"name": "balanced"}, 6, 3), cfg)
    plan = make_plan("dpm_solver_v3", 6, model.schedule, solver_options={"ems": "auto"}, shape=(4,))
    batch = sample_batch(guided.bind(range(6)), plan, indices=range(6), seed=0, shape=(4,))
    assert torch.isfinite(batch.x).all()
    grid = ems.lambda_grid(-3.0, 3.0, 8)
    key = {"samples": 16, "seed": 0, "source": "data", "jvp": "autograd"}
    assert ems.cache_key(model, (4,), grid, **key) != ems.cache_key(guided.bind(range(6)), (4,), grid, **key)


def test_guided_ems_follow_each_samples_conditions_not_the_chunking():
    """EMS sample i is evaluated with sample i's label whatever the batch size, and the cache key holds the labels
    the EMS samples take: another condition set gets its own statistics, a larger sweep of the same labels does not."""
    from diffbench.solvers import ems

    model, rule = class_gmm(dim=4, classes=3), make_guidance({"name": "cfg", "scale": 3.0})
    guided = lambda conditions, n: GuidedModel(model, make_conditions(conditions, n, 3), rule).bind(range(n))  # noqa: E731
    cyclic = guided({"name": "balanced"}, 7)
    x0 = ems.samples_for_ems(cyclic, (4,), 7, seed=0, batch_size=7)
    grid = ems.lambda_grid(-2.0, 2.0, 5)
    whole, chunked = (ems.compute_ems(cyclic, x0, grid, batch_size=b) for b in (7, 4))  # 4: chunks off the cycle
    for a, b in zip(whole.tensors().values(), chunked.tensors().values()):  # s of the flat dimensions: ~1e-7 noise
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-6)
    assert torch.allclose(ems.samples_for_ems(cyclic, (4,), 7, seed=0, batch_size=4), x0, rtol=1e-12, atol=1e-12)
    key = lambda m: ems.cache_key(m, (4,), grid, 6, 0, "heun64-karras", "autodiff")  # noqa: E731
    assert key(cyclic) == key(guided({"name": "balanced"}, 60))  # samples 0..5 take the same labels
    assert key(cyclic) != key(guided({"name": "balanced", "order": "shuffled"}, 7))
