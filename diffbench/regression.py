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

Same-seed rule. A point re-run on the baseline's own seed (same config_hash: same config and noise
stream, DESIGN.md "Noise is common") on the same CPU model, thread count and torch, numpy and
Python versions (ENVIRONMENT) reproduces the baseline's numbers, deterministic and stochastic
solvers alike (SDE noise is a function of (seed, i) too). Its tolerance is therefore not the
statistical one but SAME_SEED_RTOL * |baseline| (1e-6; `same_seed_rtol=None` turns the rule off),
so a change far inside the statistical tolerance is still flagged. Measured on the default sweep:
identical re-runs are bit-identical; another batch size moves fd_random_conv by 3e-8 relative
(float32 feature sums in another order), rmse_ref by 0 (float64); 1e-6 leaves room for that and
for float32 rounding only, while the statistical tolerances are ~1e-2 relative. GPU runs
(autotuned cuDNN kernels, TF32, atomics) are not bit-identical run to run, and runs on another
seed or environment differ by noise: they get the statistical tolerance (over-covering for the
same seed elsewhere: shared noise makes the difference's variance smaller, not larger). A metric
stored without an interval is compared exactly (plus rtol).

Coverage. Points of the baseline that the results do not hold are skipped and counted ("not in
the run"), so a run of part of the baseline's grid checks what it ran; `require_all` makes each
of them a regression instead. A point that is present but failed, or without a value, is always a
regression.

Only metric columns and their intervals enter a verdict: timings, memory, device, paths and other
provenance columns never do, and the keys leave out batch size, device, out and cache folders.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import pandas as pd

from diffbench import columns as col
from diffbench.errors import check
from diffbench.results import HIGHER_IS_BETTER, KEY, metric_columns

POINT = "point_hash"  # the config hash without the seed (config.point_hash)
ALPHA = 0.05
DEFAULT_LEVEL = 0.95
SAME_SEED_RTOL = 1e-6
ENVIRONMENT = (col.DEVICE_NAME, "version.torch", "version.numpy", "version.python")
NOT_IN_RUN = "not in the run"


def match_key(current: pd.DataFrame, baseline: pd.DataFrame) -> str:
    """point_hash when each table holds one row per point (one seed each), else the full config hash.

    Matching on point_hash pairs a re-run on another seed with the baseline's point; tables holding
    several seeds of a point, or written before point_hash existed, are matched seed by seed.
    """
    if all(POINT in df.columns and df[POINT].notna().all() and df[POINT].is_unique for df in (current, baseline)):
        return POINT
    return KEY


def compare(current: pd.DataFrame, baseline: pd.DataFrame, metrics: Sequence[str] | None = None,
            rtol: float = 0.0, alpha: float = ALPHA, *, require_all: bool = False,
            same_seed_rtol: float | None = SAME_SEED_RTOL) -> pd.DataFrame:
    """One row per baseline point and metric: values, tolerance, rule, verdict and why.

    Verdicts: ok, improved, regression, or skipped (a baseline point not in the results, unless
    require_all). Lower is better, except for metrics in results.HIGHER_IS_BETTER. See the module
    docstring for the tolerances.
    """
    check(rtol >= 0 and math.isfinite(rtol), f"--rtol must be a number >= 0 (got {rtol})")
    check(0 < alpha < 1, f"--alpha must be in (0, 1) (got {alpha})")
    for name, df in (("results", current), ("baseline", baseline)):
        check(col.STATUS in df.columns, f"the {name} table has no 'status' column; give a diffbench results table")
    names = _metric_names(current, baseline, metrics)
    key = match_key(current, baseline)
    base = baseline[baseline[col.STATUS] == col.OK].set_index(key, drop=False)
    cur = current.set_index(key, drop=False)
    shared = base.index.isin(cur.index)
    check(bool(shared.any()),
          "no point of the results matches the baseline (configs differ); rerun the baseline's sweep command")
    compared = len(base) if require_all else int(shared.sum())
    z = NormalDist().inv_cdf(1 - alpha / (compared * len(names)))
    rules = _Rules(z, rtol, same_seed_rtol, require_all)
    rows = [rules.verdict(b, cur.loc[k] if k in cur.index else None, m)
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


def same_environment(b: pd.Series, c: pd.Series) -> bool:
    """Whether two rows ran where same-seed results reproduce: equal ENVIRONMENT columns, on a CPU."""
    return str(b.get(col.DEVICE_NAME)).startswith("cpu") and all(str(b.get(name)) == str(c.get(name))
                                                                 for name in ENVIRONMENT)


@dataclass(frozen=True)
class _Rules:
    """The tolerances of one check: z for the statistical rule, rtol, the same-seed rule, coverage."""

    z: float
    rtol: float
    same_seed_rtol: float | None
    require_all: bool

    def tolerance(self, b: pd.Series, c: pd.Series, metric: str) -> tuple[float, str]:
        """(tolerance, rule name): the same-seed rule when it applies, else the statistical one."""
        slack = self.rtol * abs(b[metric])
        if self.same_seed_rtol is not None and b[KEY] == c[KEY] and same_environment(b, c):
            return self.same_seed_rtol * abs(b[metric]) + slack, "same seed"
        return self.z * math.hypot(std_error(b, metric), std_error(c, metric)) + slack, "statistical"

    def verdict(self, b: pd.Series, c: pd.Series | None, metric: str) -> dict[str, Any]:
        """One comparison of a baseline row b with the matching results row c (None: not in the run)."""
        row = {KEY: b[KEY], "model": b.get(col.MODEL_CHOICE), "solver": b.get(col.SOLVER),
               "steps": b.get(col.STEPS), "nfe": b.get(col.NFE_MEASURED), "metric": metric,
               "baseline": b[metric]}
        if c is None or c[col.STATUS] != col.OK or pd.isna(c[metric]):
            why = NOT_IN_RUN if c is None else (f"failed: {c.get('reason')}" if c[col.STATUS] != col.OK else "no value")
            verdict = "skipped" if c is None and not self.require_all else "regression"
            return {**row, "current": None, "tolerance": None, "rule": None, "verdict": verdict, "why": why}
        tol, rule = self.tolerance(b, c, metric)
        worse = (b[metric] - c[metric]) if metric in HIGHER_IS_BETTER else (c[metric] - b[metric])
        verdict = "regression" if worse > tol else ("improved" if worse < -tol else "ok")
        why = {"regression": f"worse by {worse:.3g} > {rule} tolerance {tol:.3g}",
               "improved": f"better by {-worse:.3g} > {rule} tolerance {tol:.3g}", "ok": ""}[verdict]
        return {**row, "current": c[metric], "tolerance": tol, "rule": rule, "verdict": verdict, "why": why}
