"""Progress of a command: rich bars on a terminal, one plain line per finished point elsewhere.

CI logs and batch jobs get no bars (they would fill the log with redraws); they get one line per
point instead, so a log shows how far a sweep got and how long each point took.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Reporter:
    """Progress bars (stderr) for the sweep, each point and the reference work; silent when off."""

    def __init__(self, enabled: bool):
        self.console = Console(stderr=True)
        self.enabled = enabled
        self.bars = enabled and self.console.is_terminal
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 console=self.console, disable=not self.bars, transient=False)

    def __enter__(self) -> Reporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A bar for `total` units; yields advance(n)."""
        task = self.progress.add_task(description, total=total)
        try:
            yield lambda n: self.progress.advance(task, n)
        finally:
            self.progress.remove_task(task)

    def point_done(self, done: int, total: int, label: str, status: str, seconds: float) -> None:
        """One plain line per finished point when stderr is not a terminal (the bars say it otherwise)."""
        if self.enabled and not self.bars:
            self.console.print(f"[{done}/{total}] {escape(label)}: {status} ({seconds:.1f} s)",
                               highlight=False, soft_wrap=True)
