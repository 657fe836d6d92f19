"""Registries of discrete (masked-diffusion) models and samplers, apart from the continuous ones.

A sampler is ``fn(denoiser, x, times, *, noise, precision, **options) -> tokens``: `x` all masked
[B, L], `times` the grid in t from 1 to 0 ([steps + 1]), `noise` the batch's NoiseSource. The spec
records how many passes (NFE) a grid of n steps costs, so the engine turns a budget into steps and
checks the count it measures.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from diffbench.errors import UsageError, check

PRECISIONS = ("float64", "float32")


@dataclass(frozen=True)
class DiscreteSpec:
    """One registered discrete sampler: its function, NFE rule and option defaults."""

    name: str
    fn: Callable[..., Any]
    adaptive: bool = False  # passes are skipped at run time (caching): NFE measured, never declared
    one_pass_per_token: bool = False  # exactly L steps of one pass each (first-hitting)
    at_most_length: bool = False  # at most L steps (each step unmasks at least one token)
    order: int = 1
    defaults: Mapping[str, Any] = field(default_factory=dict)
    validate: Callable[[Mapping[str, Any]], None] = lambda options: None  # UsageError on bad option values

    @property
    def summary(self) -> str:
        """First docstring line: the paper and algorithm."""
        return (inspect.getdoc(self.fn) or "").splitlines()[0]

    def options(self) -> dict[str, Any]:
        """Every option with its default (registered defaults over the function's)."""
        params = list(inspect.signature(self.fn).parameters.values())[3:]
        found = {p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY and p.name != "noise"}
        return {**found, **self.defaults}

    def bind(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Options merged over the defaults; an unknown option or precision is a UsageError."""
        known = self.options()
        unknown = sorted(set(options) - set(known))
        check(not unknown, f"sampler '{self.name}' has no option {', '.join(unknown)}; its options: {', '.join(known)}")
        bound = {**known, **options}
        check(bound["precision"] in PRECISIONS,
              f"solver.precision={bound['precision']} is unknown; use one of: {', '.join(PRECISIONS)}")
        self.validate(bound)
        return bound

    def is_stochastic(self, options: Mapping[str, Any]) -> bool:
        """Every discrete sampler draws categorical noise."""
        return True

    def steps_for_nfe(self, nfe: int, length: int) -> int:
        """Steps that cost `nfe` passes per sample on sequences of `length` (UsageError if none do)."""
        check(nfe >= 1, f"nfe must be >= 1 (got {nfe})")
        if self.one_pass_per_token:
            check(nfe == length, f"'{self.name}' makes exactly one pass per token: nfe must be {length} (got {nfe})")
        if self.at_most_length:
            check(nfe <= length, f"'{self.name}' unmasks >= 1 token per pass: nfe must be <= {length} (got {nfe})")
        return nfe

    def nearest_below(self, budget: int, length: int) -> int | None:
        """The largest NFE <= budget this sampler can run on sequences of `length` (None if none)."""
        for nfe in range(budget, 0, -1):
            try:
                return self.steps_for_nfe(nfe, length)
            except UsageError:
                continue
        return None

    def nfe_for(self, steps: int) -> int | None:
        """Declared passes per sample for `steps` steps (None when caching decides at run time)."""
        return None if self.adaptive else steps


SAMPLERS: dict[str, DiscreteSpec] = {}
MODELS: dict[str, Callable[..., Any]] = {}


def register(name: str, **traits: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a sampler function under a stable name (traits: DiscreteSpec fields)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        check_new(name, SAMPLERS)
        SAMPLERS[name] = DiscreteSpec(name, fn, **traits)
        return fn

    return wrap


def register_model(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a discrete model factory under the `kind` its configs name."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        check_new(kind, MODELS)
        MODELS[kind] = fn
        return fn

    return wrap


def check_new(name: str, registry: Mapping[str, Any]) -> None:
    """A name is registered once."""
    if name in registry:
        raise RuntimeError(f"'{name}' registered twice")


def get_sampler(name: str) -> DiscreteSpec:
    """The spec of a registered sampler (UsageError naming the valid ones)."""
    check(name in SAMPLERS, f"discrete sampler '{name}' is unknown; choose one of: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


def make_model(kind: str, options: Mapping[str, Any]) -> Any:
    """Build a discrete model by kind; unknown options are a UsageError naming the valid ones."""
    factory = MODELS[kind]
    params = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise UsageError(f"model '{kind}' has no option {', '.join(unknown)}; its options: {', '.join(params)}")
    return factory(**options)
