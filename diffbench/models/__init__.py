"""Model adapters; importing this package registers every module's model kinds.

Each adapter returns a Denoiser D(x, sigma) -> x0_hat bound to its NoiseSchedule (models/base.py).
Adapters whose optional dependency is missing (e.g. diffusers) skip registration silently here and
raise a clear error when their kind is asked for.
"""
from __future__ import annotations

import importlib
import pkgutil

from diffbench.models.base import CountingDenoiser, Denoiser
from diffbench.models.registry import MODELS, make_model, register_model

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_") and _mod.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["MODELS", "CountingDenoiser", "Denoiser", "make_model", "register_model"]
