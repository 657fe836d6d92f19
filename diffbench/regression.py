"""`diffbench check`: is a results table worse than a baseline by more than the two runs' noise allows?

Tolerance. Each row's metric carries a bootstrap interval at level L (its `metrics.ci_level`) from that
run's own samples: half-width h = z_{(1+L)/2} * se. Two runs are compared through their difference,
and for independent runs (another seed, so another noise stream) its standard error is
sqrt(se_b^2 + se_c^2): one run's interval alone understates it, the sum of the two half-widths
overstates it. A check makes m comparisons (points x metrics) at once; flagging each at level L
would make an unchanged re-run of the 25-point default sweep fail most of the time. So a
comparison is a regression only when the current value is worse by more than
z_{1-alpha/m} * sqrt(se_b^2 + se_c^2) (+ rtol * |baseline|): one-sided, Bonferroni-corrected, so an
unchanged re-run on another seed fails the whole check with probability at most alpha.

Runs on the same seed share their noise (DESIGN.md "Noise is common"): the variance of their
difference is var_b + var_c - 2 cov with cov > 0, so this tolerance over-covers them. It is
conservative, never too tight; a tighter paired test needs per-sample values
(metrics.uncertainty.paired_mean_difference), which the table does not keep. A metric stored
without an interval is compared exactly (plus rtol).

Only metric columns and their intervals enter a verdict: timings, memory, device, paths and other
provenance columns never do, and the keys leave out batch size, device, out and cache folders.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import pandas as pd

from diffbench import columns as col
from diffbench.errors import check
from diffbench.results import HIGHER_IS_BETTER, KEY, metric_columns

POINT = col.POINT_HASH  # the config hash without the seed (config.point_hash)
ALPHA = 0.05
DEFAULT_LEVEL = 0.95


def match_key(current: pd.DataFrame, baseline: pd.DataFrame) -> str:
    """point_hash when each table holds one row per point (one seed each), else the full config hash.

    Matching on point_hash pairs a re-run on another seed with the baseline's point; tables holding
    several seeds of a point, or written before point_hash existed, are matched seed by seed.
    """
    if all(POINT in df.columns and df[POINT].notna().all() and df[POINT].is_unique for df in (current, baseline)):
        return POINT
    return KEY


def compare(current: pd.DataFrame, baseline: pd.DataFrame, metrics: Sequence[str] | None = None,
            rtol: float = 0.0, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per baseline point and metric: values, tolerance, verdict (ok/improved/regression) and why.

    Lower is better, except for metrics in results.HIGHER_IS_BETTER. A baseline point that is missing,
    failed or without a value in the current table is a regression. See the module docstring for
    the tolerance.
    """
    check(rtol >= 0 and math.isfinite(rtol), f"--rtol must be a number >= 0 (got {rtol})")
    check(0 < alpha < 1, f"--alpha must be in (0, 1) (got {alpha})")
    for name, df in (("results", current), ("baseline", baseline)):
        check(col.STATUS in df.columns, f"the {name} table has no '{col.STATUS}' column; give a diffbench results table")
    names = _metric_names(current, baseline, metrics)
    key = match_key(current, baseline)
    base = baseline[baseline[col.STATUS] == col.OK].set_index(key, drop=False)
    cur = current.set_index(key, drop=False)
    check(bool(set(base.index) & set(cur.index)),
          "no point of the results matches the baseline (configs differ); rerun the baseline's sweep command")
    z = NormalDist().inv_cdf(1 - alpha / (len(base) * len(names)))
    rows = [_verdict(b, cur.loc[k] if k in cur.index else None, m, z, rtol)
            for k, b in base.iterrows() for m in names if not pd.isna(b[m])]
    return pd.DataFrame(rows)


def _metric_names(current: pd.DataFrame, baseline: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    """The metrics to compare: those named, else every metric of the baseline (all must be in the results)."""
    if metrics:
        for m in metrics:
            check(m in baseline.columns and m in current.columns, f"--metric {m}: not in both tables")
        return list(metrics)
    names = metric_columns(baseline)
    check(bool(names), "the baseline reports no metric; give a baseline made by `diffbench sweep`")
    missing = [m for m in names if m not in metric_columns(current)]
    check(not missing, f"the results lack the baseline's metric(s) {', '.join(missing)}; rerun with the baseline's "
                       "metrics config, or compare the shared ones with --metric")
    return names


def std_error(row: pd.Series, metric: str) -> float:
    """A row's standard error of a metric, from its interval's half-width and level (0 without one)."""
    lo, hi = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return 0.0
    level = row.get("metrics.ci_level")
    level = DEFAULT_LEVEL if level is None or pd.isna(level) else float(level)
    return max(float(hi) - float(lo), 0.0) / 2 / NormalDist().inv_cdf((1 + level) / 2)


def _verdict(b: pd.Series, c: pd.Series | None, metric: str, z: float, rtol: float) -> dict[str, Any]:
    row = {KEY: b[KEY], "model": b.get(col.MODEL_CHOICE), "solver": b.get(col.SOLVER),
           "schedule": b.get(col.SCHEDULE), "nfe": b.get(col.NFE_MEASURED), "metric": metric,
           "baseline": b[metric]}
    if c is None or c[col.STATUS] != col.OK or pd.isna(c[metric]):
        why = "missing" if c is None else (f"failed: {c.get(col.REASON)}" if c[col.STATUS] != col.OK else "no value")
        return {**row, "current": None, "tolerance": None, "verdict": "regression", "why": why}
    tol = z * math.hypot(std_error(b, metric), std_error(c, metric)) + rtol * abs(b[metric])
    worse = (b[metric] - c[metric]) if metric in HIGHER_IS_BETTER else (c[metric] - b[metric])
    verdict = "regression" if worse > tol else ("improved" if worse < -tol else "ok")
    why = {"regression": f"worse by {worse:.3g} > tolerance {tol:.3g}",
           "improved": f"better by {-worse:.3g} > tolerance {tol:.3g}", "ok": ""}[verdict]
    return {**row, "current": c[metric], "tolerance": tol, "verdict": verdict, "why": why}
