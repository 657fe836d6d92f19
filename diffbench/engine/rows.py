"""Row assembly: a point's ResultRow (diffbench.columns), then its config, versions and metric columns.

A row starts from what the resolved point fixes (hashes, NFE budget and declared NFE, grid, solver
traits, provenance), gains what running it measured, and is written as one dict: the fixed
columns, the flattened config as run, `version.<package>` and the metric columns.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torch import Tensor

from diffbench import columns as col
from diffbench import distributed, results
from diffbench.columns import FIXED, MetricValue, ResultRow
from diffbench.config import flatten, point_hash
from diffbench.engine.points import Point


def start_row(point: Point, command: Sequence[str] | None) -> ResultRow:
    """The columns every row of this point has, successful or not."""
    row = ResultRow(config_hash=point.key, point_hash=point_hash(point.config), nfe_policy=point.nfe_policy,
                    nfe_budget=point.nfe_budget, nfe_counts=point.nfe_counts, condition_set=point.condition_set,
                    condition_hash=point.condition_hash, solver_order=point.spec.order,
                    solver_stochastic=point.spec.is_stochastic(point.solver_options),
                    timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
                    world_size=distributed.world_size())
    provenance = results.provenance(point.run.device, command)
    row.update(**{k: v for k, v in provenance.items() if k in FIXED})
    if point.plan is not None:
        levels = point.plan.sigmas[point.plan.sigmas > 0]
        row.update(nfe_declared=point.plan.nfe_declared, n_steps=point.plan.steps, sigma_max_used=float(levels[0]),
                   sigma_min_used=float(levels[-1]))
    return row


def split_fixed(columns: Mapping[str, Any], row: ResultRow) -> dict[str, Any]:
    """Set the schema's columns of `columns` on the row; return the others (metric spreads such as kid_std)."""
    row.update(**{k: v for k, v in columns.items() if k in FIXED})
    return {k: v for k, v in columns.items() if k not in FIXED}


def record(point: Point, row: ResultRow, extra: Mapping[str, Any] | None = None,
           values: Mapping[str, MetricValue] | None = None) -> dict[str, Any]:
    """The row as the table stores it: fixed columns, config as run, versions, extra and metric columns."""
    config = flatten({k: v for k, v in point.config.items() if k != "sweep"})
    versions = {f"{col.VERSION_PREFIX}{k}": v for k, v in results.versions().items()}
    metrics = results.metric_row(values) if values is not None else {}
    if values is not None:
        row.update(metric_names=metrics.pop(col.METRIC_NAMES))
    return {col.CONFIG_HASH: row.config_hash, col.POINT_HASH: row.point_hash, **config, **row.columns(), **point.fit,
            **versions, **(extra or {}), **metrics}


def save_grid_samples(out: str, key: str, x: Tensor) -> str:
    """Keep the first samples of a point (same noise across points) for the sample-grid figures."""
    rel = Path("samples") / f"{key}.npz"
    results.save_npz(Path(out) / rel, x=x.float().numpy())
    return str(rel)
