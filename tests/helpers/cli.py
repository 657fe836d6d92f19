"""Run the `diffbench` command in-process: (exit code, stdout, stderr) from pytest's capsys."""
from __future__ import annotations

from typing import Any

from diffbench.cli import main


def run_cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """`diffbench ARGS` with its exit code and what it printed."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
