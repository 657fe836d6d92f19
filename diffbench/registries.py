"""Name -> factory tables filled by `@register(name)` decorators (models, extractors, conditions, guidance)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def registrar(table: dict[str, F], what: str) -> Callable[[str], Callable[[F], F]]:
    """A `register(name)` decorator storing functions in `table`; a name registered twice is a RuntimeError."""

    def register(name: str) -> Callable[[F], F]:
        def wrap(fn: F) -> F:
            if name in table:
                raise RuntimeError(f"{what} '{name}' registered twice")
            table[name] = fn
            return fn

        return wrap

    return register
