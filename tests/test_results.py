"""The results table: atomic, locked read-merge-write; keys never duplicated; baseline comparison."""
from __future__ import annotations

import json
import multiprocessing as mp

import pandas as pd
import pytest

from diffbench import results
from diffbench.errors import UsageError
from diffbench.results import MetricValue, append, load, metric_row, table_paths


def _row(key: str, value: float = 1.0, lo: float | None = None, hi: float | None = None, **extra) -> dict:
    return {"config_hash": key, "status": "ok", "solver.name": "euler", "steps.name": "karras",
            "nfe_measured": 4, **extra, **metric_row({"fd": MetricValue(value, lo, hi)})}


def test_append_writes_parquet_and_csv_and_keeps_keys_unique(tmp_path):
    append(tmp_path, [_row("a"), _row("b")])
    df = append(tmp_path, [_row("b", 5.0), _row("c")])
    assert list(df["config_hash"]) == ["a", "b", "c"]
    assert df.set_index("config_hash").loc["b", "fd"] == 1.0  # a stored key is never overwritten
    paths = table_paths(tmp_path)
    assert paths.parquet.is_file() and paths.csv.is_file()
    assert list(pd.read_csv(paths.csv)["config_hash"]) == ["a", "b", "c"]
    assert results.done_keys(tmp_path) == {"a", "b", "c"}
    assert results.metric_columns(load(tmp_path)) == ["fd"]


def test_replace_supersedes_stored_rows(tmp_path):
    append(tmp_path, [_row("a"), {**_row("b"), "status": "failed", "reason": "NaN"}])
    assert results.done_keys(tmp_path, ok_only=True) == {"a"}
    df = append(tmp_path, [_row("b", 2.0)], replace=True)
    assert len(df) == 2 and df.set_index("config_hash").loc["b", "fd"] == 2.0


def test_mixed_types_in_a_column_become_text(tmp_path):
    append(tmp_path, [_row("a", extra_opt=0.5)])
    df = append(tmp_path, [_row("b", extra_opt="cosine"), _row("c", extra_opt=None)])
    assert list(df["extra_opt"])[:2] == ["0.5", "cosine"]
    assert load(tmp_path)["fd"].dtype == float


def test_stale_temporary_files_do_not_harm_the_table(tmp_path):
    append(tmp_path, [_row("a")])
    stale = tmp_path / ".results.parquet.999999.tmp"
    stale.write_bytes(b"half-written")
    df = append(tmp_path, [_row("b")])
    assert list(df["config_hash"]) == ["a", "b"] and not stale.exists()


def _writer(path: str, prefix: str, n: int) -> None:
    for i in range(n):
        append(path, [_row(f"{prefix}{i}", float(i))])


def test_concurrent_writers_keep_every_row(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), p, 8)) for p in ("x", "y")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    df = load(tmp_path)
    assert len(df) == 16 and df["config_hash"].is_unique


def test_missing_or_foreign_table_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no results table"):
        results.read_table(tmp_path / "nothing")
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(UsageError, match="not a diffbench results table"):
        results.read_table(tmp_path / "other.csv")


def test_provenance_names_versions_git_and_command():
    import torch

    prov = results.provenance(torch.device("cpu"), ["diffbench", "sweep", "nfe=4"])
    assert prov["command"] == "diffbench sweep nfe=4"
    assert prov["version.torch"] == torch.__version__ and prov["git_sha"]
    assert json.dumps(prov)


def test_row_schema_names_every_fixed_column_once_with_a_meaning():
    from diffbench import columns

    fixed = {v for k, v in vars(columns).items() if k.isupper() and isinstance(v, str) and v in columns.FIXED}
    assert {columns.CONFIG_HASH, columns.STATUS, columns.NFE_BUDGET,
            columns.NFE_DECLARED, columns.NFE_MEASURED} <= fixed
    assert all(len(text) > 10 for text in columns.meanings().values())
    assert set(results.FIRST) - {columns.MODEL_KIND, columns.SOLVER, columns.STEPS, columns.SEED,
                                 columns.N_SAMPLES} <= columns.FIXED
    with pytest.raises(TypeError, match="not ResultRow columns: nfe_budgett"):
        columns.ResultRow().update(nfe_budgett=3)
