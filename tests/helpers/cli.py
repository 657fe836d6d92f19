"""Run the `diffbench` command in-process: (exit code, stdout, stderr) from pytest's capsys."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffbench.cli import main


def run_cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """`diffbench ARGS` with its exit code and what it printed."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def prompt_sweep_row(capsys: Any, root: Path, *overrides: str) -> pd.Series:
    """One text-to-image point on the smoke prompts with CFG (4 samples, batch 2, no metrics), run by the CLI.

    Checks what every such row holds (status, prompt set and hash, decode and text-encoder times, decoded
    3x16x16 samples) and returns the row for the model-specific checks.
    """
    from diffbench import columns as col

    code, _, err = run_cli(capsys, "sweep", "debug=default", "model.dtype=float32", "conditions=prompts",
                           "guidance=cfg", "metrics.names=[]", "n_samples=4", "batch_size=2", *overrides,
                           f"out={root / 'out'}", f"cache_dir={root / 'cache'}")
    assert code == 0, err
    row = pd.read_parquet(root / "out" / "results.parquet").iloc[0]
    assert row[col.STATUS] == col.OK
    assert row["condition_set"] == "prompts:prompts_smoke.txt" and len(row["condition_hash"]) == 16
    assert row[col.TIME_DECODE] > 0 and row[col.TIME_TEXT_ENCODER] >= 0
    assert np.load(root / "out" / row[col.SAMPLES_PATH])["x"].shape == (4, 3, 16, 16)  # decoded images
    return row
