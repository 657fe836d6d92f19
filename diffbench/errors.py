"""User-facing errors: one line, exit code 2, no traceback (DESIGN.md "Errors"); warnings: one line too."""
from __future__ import annotations

import sys


class UsageError(ValueError):
    """Bad user input: the message names the field and the fix; the CLI exits 2."""

    exit_code = 2


class AssetMissing(UsageError):
    """A weight file, checkpoint or data set that could not be resolved offline."""


class StorageError(OSError):
    """A results, samples or cache file could not be written (disk full, read-only, no permission).

    Raised as StorageError(errno, strerror, path); the target keeps its old content; the CLI exits 1.
    """

    exit_code = 1


def check(condition: bool, message: str) -> None:
    """Raise UsageError(message) unless condition holds (assert's job for user input)."""
    if not condition:
        raise UsageError(message)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its class name if empty): errors stay one line."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def warn(message: str) -> None:
    """One warning line on stderr (e.g. a corrupt cache file that is being rebuilt)."""
    print(f"warning: {message}", file=sys.stderr)
