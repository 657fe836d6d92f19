"""The solver registry: each solver is a function ``fn(denoiser, x, sigmas, *, noise, **options)``.

A registered name records the solver's order, whether it is stochastic, how many network
evaluations (NFE) it makes for a grid of n steps, and option defaults that define the variant.
The engine turns an NFE budget into a step count through ``steps_for_nfe`` and checks the measured
count against ``nfe``.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import torch
from torch import Tensor

from diffbench.errors import UsageError, check
from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource


class SolverFn(Protocol):
    def __call__(self, denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
                 **options: Any) -> Tensor: ...


# The multistep families' final-step convention (solvers/_common.py FINAL_STEPS): names may differ in its defaults
# (dpmpp_3m: the authors' code; dpmpp_3m_diffusers: diffusers'), and it stays an option of each.
CONVENTION = ("final_step", "lower_order_below")
NfeFn = Callable[..., int]  # (steps, grid ends at zero, **options it names) -> NFE
Fn = TypeVar("Fn", bound=Callable[..., Tensor])  # a solver function, with its own keyword options


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

    def variants(self) -> list[SolverSpec]:
        """Every registered name on this solver's function (itself included)."""
        return [s for s in SOLVERS.values() if s.fn is self.fn]

    def fixed(self) -> dict[str, Any]:
        """Options this name fixes: non-float options whose value tells it apart from another name on the same function.

        `unipc_bh2` fixes variant, max_order and afs (unipc_bh1, unipc_bh2_o2, unipc_bh2_afs differ there);
        continuous knobs such as eta, and the final-step convention (CONVENTION), stay settable on every name.
        """
        mine = self.options()
        return {k: v for k, v in mine.items() if not isinstance(v, float) and k not in CONVENTION
                and any(s.options()[k] != v for s in self.variants())}

    def bind(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Merge user options over the defaults; unknown or fixed names are a UsageError naming the fix."""
        known = self.options()
        unknown = sorted(set(options) - set(known))
        valid = ", ".join(known) or "none"
        check(not unknown, f"solver '{self.name}' has no option {', '.join(unknown)}; its options: {valid}")
        self._check_fixed(options)
        return {**known, **options}

    def _check_fixed(self, options: Mapping[str, Any]) -> None:
        """An option value that would turn this name into another algorithm is a UsageError naming that solver."""
        fixed = self.fixed()
        changed = {k: v for k, v in options.items() if k in fixed and v != fixed[k]}
        if not changed:
            return
        wanted = {**fixed, **changed}
        match = [s.name for s in self.variants() if all(s.options()[k] == v for k, v in wanted.items())]
        given = ", ".join(f"solver.{k}={v}" for k, v in changed.items())
        hint = (f"use solver={match[0]}" if match else
                f"no registered solver runs that; variants: {', '.join(s.name for s in self.variants())}")
        raise UsageError(f"{given}: solver '{self.name}' fixes {', '.join(changed)} "
                         f"({', '.join(f'{k}={fixed[k]}' for k in changed)}); {hint}")

    def dry_run(self, options: Mapping[str, Any], schedule: Any, sigmas: Tensor, shape: Sequence[int]) -> None:
        """Run the solver's own option checks at plan time, on probes that stop it at its first model call.

        A noise draw stops it too.

        Checks a solver makes before touching the model (anything but its noise schedule) run here, so a bad
        value is a one-line error before a sweep starts rather than a failed row.
        """
        x = torch.zeros((1, *shape), dtype=torch.float64)
        try:
            self.fn(_Probe(schedule), x, sigmas, noise=_Probe(None), **self.bind(options))  # type: ignore[arg-type]
        except _ProbeStop:
            return

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


class _ProbeStop(Exception):
    """Raised by _Probe where a dry run reaches the model."""


class _Probe:
    """A stand-in denoiser (or noise source) holding only the noise schedule: a call stops a dry run."""

    def __init__(self, schedule: Any):
        self.schedule = schedule

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        raise _ProbeStop

    def __getattr__(self, name: str) -> Any:
        raise _ProbeStop


SOLVERS: dict[str, SolverSpec] = {}

# Options added after results were keyed: at these values (the behaviour from before they existed) they are
# left out of the config hash, so points that do not change them keep their resume keys (config.config_hash).
UNHASHED_DEFAULTS: dict[str, Any] = {"final_step": "counted", "lower_order_below": 10}


def register(name: str, *, order: int, nfe: NfeFn | None = per_step(1), stochastic: bool | str = False,
             min_steps: int = 1, **defaults: Any) -> Callable[[Fn], Fn]:
    """Register `fn` under `name`; stack decorators to register variants with other defaults.

    The signature's keyword-only defaults, with `defaults` over them, are the one source of the name's
    options (config node, `diffbench list solvers`, what runs); non-float options that differ between
    names on one function are fixed by each name (SolverSpec.fixed).
    """

    def wrap(fn: Fn) -> Fn:
        if name in SOLVERS:
            raise RuntimeError(f"solver name '{name}' registered twice")
        SOLVERS[name] = SolverSpec(name, cast(SolverFn, fn), order, nfe, stochastic, dict(defaults), min_steps)
        return fn

    return wrap


def get_solver(name: str) -> SolverSpec:
    """Look a solver up by name; unknown names are a UsageError listing the registered ones."""
    if name not in SOLVERS:
        raise UsageError(f"solver '{name}' is unknown; choose one of: {', '.join(sorted(SOLVERS))}")
    return SOLVERS[name]
