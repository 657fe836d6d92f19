"""Arguments of fast sweeps in tests."""
from __future__ import annotations

from pathlib import Path

# Sweeps in tests: the tiny debug config and error-only metrics (the full metric path runs in test_cli).
FAST_SWEEP = ["debug=default", "metrics=error_only"]


def sweep_args(root: Path, cache: Path, *extra: str) -> list[str]:
    """Overrides of a fast sweep writing to root/out with reference solutions cached in `cache`."""
    return [*FAST_SWEEP, f"out={root / 'out'}", f"cache_dir={cache}", *extra]
