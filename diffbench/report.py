"""`diffbench report`: a self-contained HTML page (figures inlined as base64) and a markdown page.

Both list every point of the table (failed ones with their reason), the figures from plots.py with
captions, one line per metric saying what it measures, and the provenance (commands, git SHAs,
package versions, devices). The pages and figures are written together, atomically (temporary
files renamed only when all are written): a full disk leaves the previous report as it was.
"""
from __future__ import annotations

import base64
import html
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from diffbench import columns as col
from diffbench import plots, results
from diffbench.atomicio import write_all

IDENTITY = (col.CONFIG_HASH, col.MODEL_CHOICE, col.SOLVER, col.STEPS, col.NFE_BUDGET, "nfe_declared",
            col.NFE_MEASURED, "seed", "n_samples")
TAIL = (col.TIME_SAMPLING, col.TIME_METRICS, col.STATUS, col.REASON)
PROVENANCE = ("command", "git_sha", col.DEVICE_NAME, "version.diffbench", "version.torch", "version.python")
# What each metric measures, one line each; looked up by exact name, then by suffix ("_per_class_mean"), then by
# prefix ("fd_", "kid_").
METRIC_NOTES = {
    "fid": "Frechet Inception distance between the Inception features of the samples and of the reference data "
           "(lower is better).",
    "fd_": "Frechet distance between the samples' and the reference data's features from the named extractor; "
           "fd_random_conv uses a fixed random convolutional network (offline, fast): comparable between diffbench "
           "runs with the same extractor, not with published FIDs (lower is better).",
    "kid": "kernel Inception distance (unbiased MMD^2 of the features, polynomial kernel; lower is better).",
    "kid_": "kernel distance (MMD^2) on the named extractor's features (lower is better).",
    "is": "Inception score: confident and varied class predictions (higher is better).",
    "precision": "share of samples inside the reference data's feature manifold (fidelity; higher is better).",
    "recall": "share of reference data inside the samples' feature manifold (diversity; higher is better).",
    "density": "how many reference neighbourhoods contain each sample, on average (fidelity; higher is better).",
    "coverage": "share of reference points with a sample in their neighbourhood (diversity; higher is better).",
    "rmse_ref": "root-mean-square difference between each sample and the solution from the same noise by a tight "
                "RK45 reference solver: the solver's error in solving the sampling ODE (lower is better). "
                f"{plots.STOCHASTIC_MARK} stochastic solver: its distance to the ODE solution, not a convergence "
                "error.",
    "lpips_ref": "LPIPS between each sample and its same-noise reference solution (lower is better).",
    "_per_class_mean": "mean over the classes of the Frechet distance between one class's samples and that class's "
                       "dataset images (intra-FID, fd_per_class; lower is better).",
    "_per_class_max": "largest over the classes of the Frechet distance between one class's samples and that "
                      "class's dataset images: the worst class (fd_per_class; lower is better).",
    "class_accuracy": "share of class-conditional samples that metrics.classifier assigns to their own label, with "
                      "a Wilson interval (higher is better).",
}


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """One line per point: identity, NFE, timings, status, and each metric as 'value [lo, hi]'.

    rmse_ref of a stochastic solver carries plots.STOCHASTIC_MARK (not a convergence error).
    """
    out = df[[c for c in IDENTITY if c in df.columns]].copy()
    marked = plots.stochastic(df)
    for metric in results.metric_columns(df):
        lo, hi = df.get(f"{metric}_lo"), df.get(f"{metric}_hi")
        cells = [_fmt(v) for v in df[metric]]
        if lo is not None and hi is not None:
            cells = [f"{c} [{_fmt(a)}, {_fmt(b)}]" if c and _fmt(a) else c for c, a, b in zip(cells, lo, hi)]
        if metric == "rmse_ref":
            cells = [f"{c} {plots.STOCHASTIC_MARK}" if c and m else c for c, m in zip(cells, marked)]
        out[metric] = cells
    for name in TAIL:
        if name in df.columns:
            out[name] = df[name]
    sort = [c for c in (col.MODEL_CHOICE, col.SOLVER, col.STEPS, col.NFE_MEASURED) if c in out.columns]
    return out.sort_values(sort, kind="stable") if sort else out


def provenance(df: pd.DataFrame) -> dict[str, list[str]]:
    """Distinct values of each provenance column across the table."""
    return {c: sorted({str(v) for v in df[c].dropna()}) for c in PROVENANCE if c in df.columns}


def metric_notes(df: pd.DataFrame) -> dict[str, str]:
    """One line per metric in the table saying what it measures, and one for the intervals."""
    notes = {}
    for metric in results.metric_columns(df):
        prefix = (next((k for k in METRIC_NOTES if k.startswith("_") and metric.endswith(k)), None)
                  or next((k for k in METRIC_NOTES if k.endswith("_") and metric.startswith(k)), None))
        notes[metric] = METRIC_NOTES.get(metric) or (METRIC_NOTES[prefix] if prefix else "a metric of this table.")
    notes["[lo, hi]"] = ("a bootstrap confidence interval over the samples at the level metrics.ci_level "
                         f"({plots.ci_level(df)}); none shown: not computed (e.g. metrics.n_boot=0).")
    return notes


def markdown_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:12px}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}"
         "img{max-width:100%;border:1px solid #ddd;margin:4px}code{background:#f4f4f4}")


def write_report(df: pd.DataFrame, root: Path, out_dir: Path, title: str = "diffbench report",
                 metrics: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Draw the figures and write report.html (self-contained), report.md and figures/ into out_dir.

    Everything is rendered in memory first and written all at once (atomicio.write_all); a folder
    this call creates is removed again if drawing or writing fails (nothing half-written).
    """
    created = not out_dir.exists()
    try:
        return _write_report(df, root, out_dir, title, metrics)
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _write_report(df: pd.DataFrame, root: Path, out_dir: Path, title: str,
                  metrics: Sequence[str] | None) -> tuple[Path, Path]:
    charts = plots.charts(df, root, metrics)
    table = summary_table(df)
    prov = provenance(df)
    notes = metric_notes(df)
    n_ok = int((df[col.STATUS] == col.OK).sum()) if col.STATUS in df.columns else len(df)
    intro = f"{len(df)} points ({n_ok} ok, {len(df) - n_ok} failed)."
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    write_all({html_path: _html_page(title, intro, charts, notes, table, prov).encode(),
               md_path: _markdown_page(title, intro, charts, notes, table, prov).encode(),
               **{out_dir / "figures" / c.name: c.png for c in charts}})
    return html_path, md_path


def _html_page(title: str, intro: str, charts: list[plots.Chart], notes: dict[str, str], table: pd.DataFrame,
               prov: dict[str, list[str]]) -> str:
    imgs = "".join(f'<figure><img alt="{html.escape(c.name)}" src="data:image/png;base64,'
                   f'{base64.b64encode(c.png).decode()}"/><figcaption>{html.escape(c.caption)}</figcaption></figure>'
                   for c in charts)
    notes_html = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>" for k, v in notes.items())
    prov_html = "".join(f"<li><b>{html.escape(k)}</b>: " +
                        "; ".join(f"<code>{html.escape(v)}</code>" for v in vs) + "</li>"
                        for k, vs in prov.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{intro}</p>"
            f"<h2>Metrics</h2><ul>{notes_html}</ul><h2>Figures</h2>{imgs}<h2>Points</h2>{_html_table(table)}"
            f"<h2>Provenance</h2><ul>{prov_html}</ul></body></html>")


def _markdown_page(title: str, intro: str, charts: list[plots.Chart], notes: dict[str, str], table: pd.DataFrame,
                   prov: dict[str, list[str]]) -> str:
    md = [f"# {title}", "", intro, "", "## Metrics", ""]
    md += [f"- `{k}`: {v}" for k, v in notes.items()]
    md += ["", "## Figures", ""]
    for c in charts:
        md += [f"![{c.name}](figures/{c.name})", "", f"*{c.caption}*", ""]
    md += ["## Points", "", markdown_table(table), "", "## Provenance", ""]
    md += [f"- **{k}**: " + "; ".join(f"`{v}`" for v in vs) for k, vs in prov.items()]
    return "\n".join(md) + "\n"
