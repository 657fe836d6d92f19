"""The solver registry: each solver is a function ``fn(denoiser, x, sigmas, *, noise, **options)``.

A registered name records the solver's order, whether it is stochastic, how many network
evaluations (NFE) it makes for a grid of n steps, and option defaults that define the variant.
The engine turns an NFE budget into a step count through ``steps_for_nfe`` and checks the measured
count against ``nfe``.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor

from diffbench.errors import UsageError, check
from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource


class SolverFn(Protocol):
    def __call__(self, denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
                 **options: Any) -> Tensor: ...


NfeFn = Callable[..., int]  # (steps, grid ends at zero, **options it names) -> NFE


def per_step(k: int) -> NfeFn:
    """k evaluations per step (Euler, multistep methods: k=1)."""
    return lambda steps, final_zero: k * steps


def last_step_single(k: int) -> NfeFn:
    """k evaluations per step, but a final step to sigma=0 is a single denoise (EDM's Heun: 2n-1)."""
    return lambda steps, final_zero: k * steps - (k - 1) * int(final_zero)


@dataclass(frozen=True)
class SolverSpec:
    """What the registry knows of one solver variant."""

    name: str
    fn: SolverFn
    order: int
    nfe: NfeFn | None  # None: adaptive, the NFE is whatever the solver measures
    stochastic: bool | str = False  # or the option whose nonzero value makes it stochastic
    defaults: Mapping[str, Any] = field(default_factory=dict)
    min_steps: int = 1

    @property
    def adaptive(self) -> bool:
        return self.nfe is None

    @property
    def summary(self) -> str:
        """First docstring line: the paper and algorithm."""
        return (inspect.getdoc(self.fn) or "").splitlines()[0] if self.fn.__doc__ else ""

    def options(self) -> dict[str, Any]:
        """Every option with its default for this variant (keyword-only parameters of fn)."""
        params = inspect.signature(self.fn).parameters.values()
        opts = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name != "noise"}
        return {**opts, **self.defaults}

    def bind(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Merge user options over the defaults; unknown names are a UsageError listing the valid ones."""
        known = self.options()
        unknown = sorted(set(options) - set(known))
        valid = ", ".join(known) or "none"
        check(not unknown, f"solver '{self.name}' has no option {', '.join(unknown)}; its options: {valid}")
        return {**known, **options}

    def is_stochastic(self, options: Mapping[str, Any] | None = None) -> bool:
        if isinstance(self.stochastic, bool):
            return self.stochastic
        return bool(self.bind(options or {})[self.stochastic])

    def nfe_for(self, steps: int, final_zero: bool, options: Mapping[str, Any] | None = None) -> int | None:
        """Declared NFE of a grid of `steps` steps; NFE rules may also name options they depend on."""
        if self.nfe is None:
            return None
        params = inspect.signature(self.nfe).parameters
        used = {k: v for k, v in self.bind(options or {}).items() if k in params}
        return self.nfe(steps, final_zero, **used)

    def min_nfe(self, final_zero: bool = True, options: Mapping[str, Any] | None = None) -> int:
        return 1 if self.nfe is None else int(self.nfe_for(self.min_steps, final_zero, options) or 1)

    def steps_for_nfe(self, nfe: int, final_zero: bool, options: Mapping[str, Any] | None = None) -> int:
        """The step count whose NFE is exactly `nfe`, or a UsageError naming the nearest valid budgets."""
        check(isinstance(nfe, int) and nfe >= 1, f"nfe must be a positive integer (got {nfe!r})")
        if self.nfe is None:  # adaptive: a grid of the span's ends, [sigma_max, sigma_min(, 0)]
            return 1 + int(final_zero)
        valid: dict[int, int] = {}
        for n in range(self.min_steps, nfe + self.min_steps + 4):
            valid.setdefault(int(self.nfe_for(n, final_zero, options) or 0), n)
        if nfe in valid:
            return valid[nfe]
        below = [b for b in valid if b < nfe]
        above = [b for b in valid if b > nfe]
        near = " or ".join(str(b) for b in ([max(below)] if below else []) + ([min(above)] if above else []))
        raise UsageError(f"solver '{self.name}' cannot use exactly nfe={nfe}"
                         f"{' with final_zero' if final_zero else ''}; nearest valid: {near}")


SOLVERS: dict[str, SolverSpec] = {}


def register(name: str, *, order: int, nfe: NfeFn | None = per_step(1), stochastic: bool | str = False,
             min_steps: int = 1, **defaults: Any) -> Callable[[SolverFn], SolverFn]:
    """Register `fn` under `name`; stack decorators to register variants with other defaults."""

    def wrap(fn: SolverFn) -> SolverFn:
        if name in SOLVERS:
            raise RuntimeError(f"solver name '{name}' registered twice")
        SOLVERS[name] = SolverSpec(name, fn, order, nfe, stochastic, dict(defaults), min_steps)
        return fn

    return wrap


def get_solver(name: str) -> SolverSpec:
    """Look a solver up by name; unknown names are a UsageError listing the registered ones."""
    if name not in SOLVERS:
        raise UsageError(f"solver '{name}' is unknown; choose one of: {', '.join(sorted(SOLVERS))}")
    return SOLVERS[name]
