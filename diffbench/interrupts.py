"""SIGTERM and SIGINT as exceptions, held back while a table is written.

Python's default SIGTERM kills at once; raising `Terminated` instead lets a command unwind: temporary
files are removed, locks released, progress bars closed. A signal that arrives inside `uninterrupted`
(the Parquet + CSV write of a results table) is raised when that block ends, so the pair never
gets out of step. The CLI maps Terminated to exit code 128 + signal number (143 for SIGTERM).
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Terminated(BaseException):
    """SIGTERM or SIGINT (Ctrl-C) arrived (a BaseException, so handlers of failed points never swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _Held:
    depth = 0
    pending: int | None = None


def _raise(signum: int) -> None:
    raise Terminated(signum)


def _handle(signum: int, frame: FrameType | None) -> None:
    if _Held.depth:
        _Held.pending = signum
    else:
        _raise(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def signals_raise() -> Iterator[None]:
    """While active, SIGTERM and SIGINT raise Terminated (held inside `uninterrupted`).

    Ctrl-C is a Terminated too, not a KeyboardInterrupt: Typer would turn that into a silent exit 130,
    and the user is owed the line that says how to resume.
    """
    if not _main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold SIGTERM / SIGINT until the block ends, then raise them (main thread; elsewhere a no-op)."""
    if not _main_thread():
        yield
        return
    _Held.depth += 1
    try:
        yield
    finally:
        _Held.depth -= 1
        if not _Held.depth and _Held.pending is not None:
            signum, _Held.pending = _Held.pending, None
            _raise(signum)
