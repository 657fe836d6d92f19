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


def test_autoguidance_with_itself_is_conditional(model):
    """Autoguidance D_g + w (D_c - D_g) with the model as its own guide is D_c; a weaker guide pushes away from it."""
    x, sigma, labels = probe(model)
    same = guided(model, {"name": "autoguidance", "scale": 3.0, "guide": "x"}, guide=model).bind(range(N))(x, sigma)
    torch.testing.assert_close(same, model.denoise_cond(x, sigma, labels), rtol=0, atol=1e-12)
    weak = class_gmm(classes=3, per_class=2, std=0.6)
    out = guided(model, {"name": "autoguidance", "scale": 3.0, "guide": "x"}, guide=weak).bind(range(N))(x, sigma)
    torch.testing.assert_close(out, model.denoise_cond(x, sigma, labels) + 2 * (
        model.denoise_cond(x, sigma, labels) - weak.denoise_cond(x, sigma, labels)))


FAMILIES = ["euler", "heun", "dpmpp_2m", "unipc_bh2", "ipndm", "dpm_solver_adaptive"]


@pytest.mark.parametrize("solver", FAMILIES)
@pytest.mark.parametrize("rule", [{"name": "cfg", "scale": 2.0},
                                  {"name": "interval", "scale": 2.0, "sigma_lo": 0.3, "sigma_hi": 3.0},
                                  {"name": "autoguidance", "scale": 2.0, "guide": "weak"}])
def test_network_evaluations_are_the_passes_made(model, solver, rule):
    """nfe_network = the rows the networks really evaluate, per sample: 2 x calls for CFG, calls plus the
    calls inside the interval for the guidance interval, per solver family (adaptive included)."""
    counter = RowCounter(model)
    guide = RowCounter(class_gmm(classes=3, per_class=2, std=0.5)) if rule["name"] == "autoguidance" else None
    plan = make_plan(solver, 9, model.schedule, sigma_min=0.05, sigma_max=20.0)
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
    """The CFG (w = 3) denoiser of the exact mixture, starting points, and a tight RK45 solution over SPAN."""
    mixture = class_gmm(classes=3, per_class=2)
    m = guided(mixture, {"name": "cfg", "scale": 3.0}).bind(range(N))
    x_T = torch.randn(N, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 10.0
    tight = make_plan("rk45", 1, mixture.schedule, solver_options={"rtol": 1e-9, "atol": 1e-9}, **SPAN)
    return m, x_T, tight.solver.fn(m, x_T, tight.sigmas, noise=None, **tight.options)


@pytest.mark.parametrize("solver", ["euler", "ddim", "heun", "dpmpp_2m", "unipc_bh2_o2"])
def test_order_on_the_guided_mixture(guided_ode, solver):
    """On the exact CFG field each solver converges at its registered order against the tight RK45 solution."""
    m, x_T, exact = guided_ode
    errors = []
    for steps in (32, 64):
        plan = make_plan(solver, SOLVERS[solver].nfe_for(steps, False), m.schedule, **SPAN)
        out = plan.solver.fn(m, x_T, plan.sigmas, noise=None, **plan.options)
        errors.append(float((out - exact).pow(2).mean().sqrt()))
    assert math.log2(errors[0] / errors[1]) == pytest.approx(SOLVERS[solver].order, abs=0.35)
