"""Grid -> resolved points: every sweep point validated and resolved once, before anything runs.

A `Point` is frozen: its solver spec (looked up once), solver options, step plan, NFE budget and the
NFE it runs, model identity and config hash are computed here and only read afterwards. The config
stays as composed (`cfg.nfe` is the budget); the config as run, whose hash is the resume key, has
`nfe` set to the NFE the point runs.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from diffbench import assetstore, discrete
from diffbench.config import (
    RunSettings,
    compose_points,
    config_hash,
    expand_grid,
    inputs_of,
    parse_overrides,
    settings,
    to_dict,
    typed_options,
    with_guide_model,
)
from diffbench.errors import UsageError, check
from diffbench.fit.artefacts import fill_fitted
from diffbench.fit.pas import point_plan
from diffbench.metrics.checks import check_metrics
from diffbench.models import Denoiser, make_model
from diffbench.models.conditions import make_conditions
from diffbench.models.guidance import NONE, GuidedModel, conditional, make_guidance, max_passes
from diffbench.models.text import with_conditions
from diffbench.sampling import Plan, make_plan
from diffbench.solvers import SolverSpec, get_solver

NFE_POLICIES = ("exact", "nearest_below")
NFE_COUNTS = ("calls", "network")  # what an nfe budget bounds: denoiser calls, or network forward passes per sample
POINT_ERRORS = (UsageError, RuntimeError, ValueError, FloatingPointError)  # a point that raises one is a failed row


@dataclass(frozen=True)
class Point:
    """One validated grid point: config, run settings, solver, plan and NFE (or why it cannot run)."""

    cfg: DictConfig  # as composed: cfg.nfe is the budget
    run: RunSettings
    spec: SolverSpec | discrete.DiscreteSpec
    solver_options: dict[str, Any]  # as configured (the plan holds them bound to the function's defaults)
    nfe_policy: str
    nfe_budget: int
    nfe: int  # the NFE the point runs: the budget, or the largest valid one below it (nearest_below)
    plan: Plan | discrete.DiscretePlan | None
    model_key: str  # the model's identity: kind and options
    config: dict[str, Any]  # the config as run (nfe = the NFE the point runs): what the row records
    key: str  # config_hash of `config`: the resume key
    reason: str | None = None
    overrides: tuple[str, ...] = ()  # the override list that composes this point alone
    fit: dict[str, Any] = field(default_factory=dict)  # a fitted grid's cost columns (diffbench.fit.artefacts)
    nfe_counts: str = "calls"  # what nfe_budget bounds: calls or network (sweep.nfe_counts)
    condition_set: str | None = None  # the condition set's name and content hash (conditional points)
    condition_hash: str | None = None

    @property
    def label(self) -> str:
        return f"{self.spec.name} / {self.cfg.steps.name} / nfe {self.nfe}"


def model_identity(model_cfg: DictConfig | dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    """(kind, options, key) of a model config; the key is the same for configs that build the same model."""
    options = to_dict(model_cfg)
    kind = options.pop("kind", None)
    check(isinstance(kind, str), "model.kind is missing; pick a model with model=<name>")
    return kind, options, json.dumps([kind, options], sort_keys=True)


class ModelCache:
    """Builds each distinct model config (and each conditioned, guided model) once per process."""

    def __init__(self) -> None:
        self._models: dict[str, Denoiser] = {}

    def get(self, model_cfg: DictConfig | dict[str, Any]) -> Denoiser:
        kind, options, key = model_identity(model_cfg)
        if key not in self._models:
            build = discrete.make_model if kind in discrete.MODELS else make_model
            self._models[key] = build(kind, options)
        return self._models[key]

    def for_point(self, cfg: DictConfig, n_samples: int) -> Denoiser:
        """The model a point samples: with its conditions and guidance bound when either is on (UsageError if unfit)."""
        conditions, guidance = inputs_of(cfg)
        if conditions["name"] == NONE and guidance["name"] == NONE:
            return self.get(cfg.model)
        key = json.dumps([model_identity(cfg.model)[2], conditions, guidance, n_samples], sort_keys=True)
        if key not in self._models:
            model, rule = self.get(cfg.model), make_guidance(guidance)
            guide = self.get(guidance["guide_model"]) if rule.autoguide else None
            labels = make_conditions(conditions, n_samples, conditional(model).classes)
            self._models[key] = GuidedModel(with_conditions(model, labels), labels, rule, guide)
        return self._models[key]


def feasible_nfe(spec: SolverSpec, budget: int, final_zero: bool, policy: str) -> int | None:
    """The NFE a solver runs under a budget: the budget itself (exact), or the largest valid one below."""
    check(policy in NFE_POLICIES, f"sweep.nfe_policy={policy} is unknown; use one of: {', '.join(NFE_POLICIES)}")
    if policy == "exact" or spec.adaptive:
        return budget
    for nfe in range(budget, 0, -1):
        try:
            spec.steps_for_nfe(nfe, final_zero)
            return nfe
        except UsageError:
            continue
    return None


def step_options(cfg: DictConfig) -> dict[str, Any]:
    """A step-grid config's own options (everything but its name and span)."""
    return {k: v for k, v in to_dict(cfg.steps).items() if k not in ("name", "sigma_min", "sigma_max", "final_zero")}


def make_point_plan(cfg: DictConfig, spec: SolverSpec, options: dict[str, Any], model: Denoiser, nfe: int) -> Plan:
    """The solver plan of a composed config at a given NFE (UsageError on bad input)."""
    return make_plan(spec, nfe, model.schedule, step_grid=str(cfg.steps.name),
                     step_options=step_options(cfg), solver_options=options,
                     sigma_min=cfg.steps.sigma_min, sigma_max=cfg.steps.sigma_max,
                     final_zero=bool(cfg.steps.final_zero), shape=getattr(model, "shape", None))


def resolve_point(cfg: DictConfig, models: ModelCache, overrides: Sequence[str] = (),
                  policy: str | None = None) -> Point:
    """Validate one composed config into a Point; raises UsageError on bad input.

    `policy` overrides the config's sweep.nfe_policy (`diffbench sample` runs the budget exactly).
    """
    run = settings(cfg)
    kind, _, model_key = model_identity(cfg.model)
    with assetstore.cache_root(cfg.cache_dir):  # model weights resolve in the config's cache_dir
        model = models.get(cfg.model)
        if kind in discrete.MODELS:
            return resolve_discrete_point(cfg, run, model, overrides, policy)
        sampled = models.for_point(cfg, run.n_samples)
    labels = getattr(sampled, "conditions", None)
    check_metrics(cfg, model, run, labels)
    check_reference_options(cfg)
    spec = get_solver(str(cfg.solver.name))
    options = {k: v for k, v in to_dict(cfg.solver).items() if k != "name"}
    policy = policy or str(cfg.sweep.nfe_policy)
    counts = str(cfg.sweep.nfe_counts)
    check(counts in NFE_COUNTS, f"sweep.nfe_counts={counts} is unknown; use one of: {', '.join(NFE_COUNTS)}")
    final_zero = bool(cfg.steps.final_zero)
    calls = run.nfe // per_call(sampled) if counts == "network" else run.nfe
    nfe = feasible_nfe(spec, calls, final_zero, policy) if calls > 0 else None
    fit: dict[str, Any] = {}
    if cfg.steps.name == "fitted":  # its grid and artefact key come from `diffbench fit`'s cache
        cfg, fit = fill_fitted(cfg, model_key, nfe or spec.min_nfe(final_zero), model.schedule)
    fixed: dict[str, Any] = dict(cfg=cfg, run=run, spec=spec, solver_options=options, nfe_policy=policy,
                                 nfe_budget=run.nfe, model_key=model_key, overrides=tuple(overrides), fit=fit,
                                 nfe_counts=counts, condition_set=labels and labels.name,
                                 condition_hash=labels and labels.content_hash)
    if nfe is None:
        minimum = spec.min_nfe(final_zero)
        make_point_plan(cfg, spec, options, model, minimum)  # validates the rest of the point
        return Point(**fixed, nfe=calls, plan=None, **_as_run(cfg, calls),
                     reason=f"nfe budget {run.nfe} ({counts}) is below solver '{spec.name}''s minimum of "
                            f"{minimum} calls")
    plan = point_plan(make_point_plan(cfg, spec, options, model, nfe), cfg)  # PAS: the solver corrected
    return Point(**fixed, nfe=nfe, plan=plan, **_as_run(cfg, nfe))


def resolve_discrete_point(cfg: DictConfig, run: RunSettings, model: Any, overrides: Sequence[str],
                           policy: str | None) -> Point:
    """A masked-diffusion point (diffbench.discrete): sampler, NFE and time grid on the model's sequences."""
    check(cfg.steps.name == discrete.MASK_SCHEDULE,
          f"discrete samplers run the linear mask schedule; use steps={discrete.MASK_SCHEDULE}")
    discrete.check_metric_names(list(cfg.metrics.names), model)
    spec = discrete.get_sampler(str(cfg.solver.name))
    options = {k: v for k, v in to_dict(cfg.solver).items() if k != "name"}
    spec.bind(options)
    policy = policy or str(cfg.sweep.nfe_policy)
    check(policy in NFE_POLICIES, f"sweep.nfe_policy={policy} is unknown; use one of: {', '.join(NFE_POLICIES)}")
    nfe = run.nfe if policy == "exact" else spec.nearest_below(run.nfe, model.length)
    fixed: dict[str, Any] = dict(cfg=cfg, run=run, spec=spec, solver_options=options, nfe_policy=policy,
                                 nfe_budget=run.nfe, model_key=model_identity(cfg.model)[2], overrides=tuple(overrides))
    if nfe is None:
        return Point(**fixed, nfe=run.nfe, plan=None, **_as_run(cfg, run.nfe),
                     reason=f"no valid nfe <= {run.nfe} for sampler '{spec.name}' at length {model.length}")
    return Point(**fixed, nfe=nfe, plan=discrete.make_plan(spec, nfe, model.length, options), **_as_run(cfg, nfe))


def per_call(model: Denoiser) -> int:
    """Network passes per sample of one denoiser call at most: 2 when guided, else 1."""
    return max_passes(model.guidance) if isinstance(model, GuidedModel) else 1


def _as_run(cfg: DictConfig, nfe: int) -> dict[str, Any]:
    """The config as a point runs it (its nfe field the calls it runs; autoguidance's guide resolved) and its hash."""
    config = {**to_dict(cfg), "nfe": nfe}
    if config.get("guidance"):
        config["guidance"] = with_guide_model(config["guidance"])
    return {"config": config, "key": config_hash(config)}


def prepare(overrides: Sequence[str]) -> list[Point]:
    """Compose and validate every grid point (nothing runs or is written before all are valid)."""
    for o in parse_overrides(overrides):
        check(not o.key_or_group.startswith("hydra"),
              f"{o.input_line}: a Hydra launcher option; `diffbench sweep` (diffbench.launch) takes it and runs the "
              "points as jobs")
    grid = expand_grid(overrides)
    cfgs = compose_points(grid)
    outs = {str(c.out) for c in cfgs}
    check(len(outs) == 1, f"out takes one value per sweep (got {', '.join(sorted(outs))}); run one sweep per out")
    models = ModelCache()
    points: dict[str, Point] = {}
    for point_overrides, cfg in zip(grid, cfgs):
        point = resolve_point(cfg, models, point_overrides)
        points.setdefault(point.key, point)  # budgets that resolve to one NFE run once
    return list(points.values())

def check_reference_options(cfg: DictConfig) -> None:
    """The reference solver and its option types (metrics.reference), checked before any point samples."""
    if "solver_error" in list(cfg.metrics.names):
        options = to_dict(cfg.metrics.reference)
        name = str(options.pop("solver"))
        get_solver(name).bind(options)
        typed_options("solver", name, options, "metrics.reference")
