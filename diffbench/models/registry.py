"""Model registry: a config's ``kind`` names a factory returning a Denoiser bound to its schedule."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from diffbench.errors import UsageError
from diffbench.models.base import Denoiser
from diffbench.registries import registrar

ModelFactory = Callable[..., Denoiser]
MODELS: dict[str, ModelFactory] = {}


# @register_model(kind): a factory under a stable kind name used by diffbench/configs/model/*.yaml.
register_model = registrar(MODELS, "model kind")


def make_model(kind: str, options: Mapping[str, Any] | None = None) -> Denoiser:
    """Build a model by kind; unknown kinds or options are a UsageError naming the valid ones."""
    if kind not in MODELS:
        raise UsageError(f"model kind '{kind}' is unknown; choose one of: {', '.join(sorted(MODELS))}")
    factory, options = MODELS[kind], dict(options or {})
    params = inspect.signature(factory).parameters
    unknown = sorted(k for k in options if k not in params)
    if unknown:
        raise UsageError(f"model '{kind}' has no option {', '.join(unknown)}; its options: {', '.join(params)}")
    return factory(**options)
