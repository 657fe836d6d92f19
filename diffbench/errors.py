"""User-facing errors: one line, exit code 2, no traceback (DESIGN.md "Errors")."""
from __future__ import annotations


class UsageError(ValueError):
    """Bad user input: the message names the field and the fix; the CLI exits 2."""

    exit_code = 2


class AssetMissing(UsageError):
    """A weight file, checkpoint or data set that could not be resolved offline."""


def check(condition: bool, message: str) -> None:
    """Raise UsageError(message) unless condition holds (assert's job for user input)."""
    if not condition:
        raise UsageError(message)
