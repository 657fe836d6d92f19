"""`diffbench report`: a self-contained HTML page (figures inlined as base64) and a markdown page.

Both list every point of the table (failed ones with their reason), the figures from plots.py
and the provenance (commands, git SHAs, package versions, devices).
"""
from __future__ import annotations

import base64
import html
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from diffbench import plots, results
from diffbench import columns as col

IDENTITY = (col.CONFIG_HASH, col.MODEL_CHOICE, col.SOLVER, col.SCHEDULE, col.NFE_BUDGET, col.NFE_DECLARED,
            col.NFE_MEASURED, col.SEED, col.N_SAMPLES)
TAIL = (col.TIME_SAMPLING, col.TIME_METRICS, col.STATUS, col.REASON)
PROVENANCE = (col.COMMAND, col.GIT_SHA, col.DEVICE_NAME, *(col.VERSION_PREFIX + p for p in ("diffbench", "torch", "python")))


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """One line per point: identity, NFE, timings, status, and each metric as 'value [lo, hi]'."""
    out = df[[c for c in IDENTITY if c in df.columns]].copy()
    for metric in results.metric_columns(df):
        lo, hi = df.get(f"{metric}_lo"), df.get(f"{metric}_hi")
        cells = [_fmt(v) for v in df[metric]]
        if lo is not None and hi is not None:
            cells = [f"{c} [{_fmt(a)}, {_fmt(b)}]" if c and _fmt(a) else c for c, a, b in zip(cells, lo, hi)]
        out[metric] = cells
    for name in TAIL:
        if name in df.columns:
            out[name] = df[name]
    sort = [c for c in (col.MODEL_CHOICE, col.SOLVER, col.SCHEDULE, col.NFE_MEASURED) if c in out.columns]
    return out.sort_values(sort, kind="stable") if sort else out


def provenance(df: pd.DataFrame) -> dict[str, list[str]]:
    """Distinct values of each provenance column across the table."""
    return {c: sorted({str(v) for v in df[c].dropna()}) for c in PROVENANCE if c in df.columns}


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
    """Draw the figures and write report.html (self-contained) and report.md into out_dir.

    A folder this call creates is removed again if drawing or writing fails (nothing half-written).
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
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = plots.plot_all(df, root, out_dir / "figures", metrics)
    table = summary_table(df)
    prov = provenance(df)
    n_ok = int((df[col.STATUS] == col.OK).sum()) if col.STATUS in df.columns else len(df)
    intro = f"{len(df)} points ({n_ok} ok, {len(df) - n_ok} failed)."

    imgs = "".join(f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
                   f'{base64.b64encode(p.read_bytes()).decode()}"/><figcaption>{html.escape(p.stem)}</figcaption></figure>'
                   for p in figures)
    prov_html = "".join(f"<li><b>{html.escape(k)}</b>: " + "; ".join(f"<code>{html.escape(v)}</code>" for v in vs) + "</li>"
                        for k, vs in prov.items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{intro}</p>"
            f"<h2>Figures</h2>{imgs}<h2>Points</h2>{_html_table(table)}<h2>Provenance</h2><ul>{prov_html}</ul>"
            "</body></html>")
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")

    md = [f"# {title}", "", intro, "", "## Figures", ""]
    md += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in figures]
    md += ["", "## Points", "", markdown_table(table), "", "## Provenance", ""]
    md += [f"- **{k}**: " + "; ".join(f"`{v}`" for v in vs) for k, vs in prov.items()]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return html_path, md_path
