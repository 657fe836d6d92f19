"""Solvers, one family per module; importing this package registers every module's solvers.

To add a solver: write ``diffbench/solvers/<family>.py`` with a function decorated by
``@register(name, order=..., nfe=...)``; its keyword options are the config node ``solver=<name>``
(diffbench.config.typed_nodes). The generic tests (convergence order, measured NFE, moments of
stochastic solvers) pick it up automatically.
"""
from __future__ import annotations

import importlib
import pkgutil

from diffbench.solvers.registry import SOLVERS, SolverSpec, get_solver, register

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_") and _mod.name != "registry":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["SOLVERS", "SolverSpec", "get_solver", "register"]
