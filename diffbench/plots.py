"""Figures from a results table: metric vs NFE, metric vs wall time (Pareto front), sample grids.

Only the table (and the per-point sample files it points to) is read, so plots can be redrawn
from any finished or partial sweep. Matplotlib runs headless (Agg).
"""
from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from diffbench import columns as col  # noqa: E402
from diffbench import results  # noqa: E402
from diffbench.atomicio import write_all  # noqa: E402
from diffbench.errors import check  # noqa: E402

LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DPI = 110
LABEL_GAP_PX = 3  # the least room between two tick labels
PLOT_COLUMNS = (col.SOLVER, col.STEPS, col.NFE_MEASURED)
STOCHASTIC_MARK = "\N{DAGGER}"  # marks stochastic solvers, whose rmse_ref is not a convergence error
UNGUIDED = ("none", "nan", "None")  # guidance.name of rows sampled without guidance (or from before it existed)
PANELS_PER_ROW = 3


@dataclass(frozen=True)
class Chart:
    """One drawn figure: its file name, a caption saying what it shows, and the PNG bytes."""

    name: str
    caption: str
    png: bytes


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Successful rows with a measured NFE; metric columns as numbers (a missing interval is NaN)."""
    if df.empty or col.STATUS not in df.columns:
        return df.iloc[0:0]
    df = df[(df[col.STATUS] == col.OK) & df[col.NFE_MEASURED].notna()]
    numeric = [c for m in results.metric_columns(df) for c in (m, f"{m}_lo", f"{m}_hi") if c in df.columns]
    numeric += [c for c in (col.NFE_MEASURED, col.NFE_BUDGET, col.TIME_SAMPLING) if c in df.columns]
    return df.assign(**{c: pd.to_numeric(df[c], errors="coerce") for c in numeric})


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _model_label(df: pd.DataFrame) -> pd.Series:
    """The model's config choice (e.g. image_mixture_32), else its kind."""
    name = col.MODEL_CHOICE if col.MODEL_CHOICE in df.columns else col.MODEL_KIND
    return df[name].astype(str) if name in df.columns else pd.Series("model", index=df.index)


def _panel_label(df: pd.DataFrame) -> pd.Series:
    """The model's label, plus the guidance rule and scale on guided rows: points of different guidance never share
    a line (averaging over scales would hide what guidance does)."""
    label = _model_label(df)
    if col.GUIDANCE not in df.columns:
        return label
    rule = df[col.GUIDANCE].astype(str)
    guided = ~rule.isin(UNGUIDED)
    scale = df[col.GUIDANCE_SCALE].map(lambda v: f"{float(v):g}") if col.GUIDANCE_SCALE in df.columns else ""
    return label.where(~guided, label + " · " + rule + " w=" + scale)


def _aggregate(df: pd.DataFrame, x: str, metric: str) -> pd.DataFrame:
    """Mean over repeated points (e.g. seeds) at one x, with the widest CI among them."""
    cols = {metric: "mean"}
    for end in ("_lo", "_hi"):
        if f"{metric}{end}" in df.columns:
            cols[f"{metric}{end}"] = "min" if end == "_lo" else "max"
    return df.groupby(x, as_index=False).agg(cols).sort_values(x)


def _errorbars(agg: pd.DataFrame, metric: str) -> np.ndarray | None:
    if f"{metric}_lo" not in agg.columns or agg[f"{metric}_lo"].isna().all():
        return None
    lo = (agg[metric] - agg[f"{metric}_lo"]).clip(lower=0).fillna(0)
    hi = (agg[f"{metric}_hi"] - agg[metric]).clip(lower=0).fillna(0)
    return np.vstack([lo.to_numpy(), hi.to_numpy()])


def _style_maps(df: pd.DataFrame) -> tuple[dict[str, object], dict[str, str]]:
    """Colour per solver, line style per step schedule (stable across figures)."""
    cmap = plt.get_cmap("tab10")
    solvers = sorted(df[col.SOLVER].astype(str).unique())
    schedules = sorted(df[col.STEPS].astype(str).unique())
    return ({s: cmap(i % 10) for i, s in enumerate(solvers)},
            {s: LINESTYLES[i % len(LINESTYLES)] for i, s in enumerate(schedules)})


def _log_scale_fits(values: pd.Series) -> bool:
    v = values.dropna()
    return bool(len(v) and (v > 0).all() and v.max() / v.min() > 20)


def _label_axes(ax: plt.Axes, values: pd.Series, xlabel: str, ylabel: str, title: str) -> None:
    """Log y when the values span more than a factor 20; labels, grid, legend."""
    if _log_scale_fits(values):
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def stochastic(df: pd.DataFrame) -> pd.Series:
    """Rows whose solver ran stochastically (SDE noise), from the row's `solver_stochastic`."""
    if "solver_stochastic" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["solver_stochastic"].map(lambda v: str(v).lower() in ("true", "1", "1.0"))


def nfe_plot(df: pd.DataFrame, metric: str) -> plt.Figure:
    """Metric vs measured NFE (log x), one line per solver, step schedule as line style, one panel per model and
    guidance setting (PANELS_PER_ROW to a row).

    Stochastic solvers carry STOCHASTIC_MARK in the legend.
    """
    df = ok_rows(df).dropna(subset=[metric])
    check(not df.empty, f"no successful rows with metric '{metric}' to plot")
    colours, styles = _style_maps(df)
    models = _panel_label(df)
    names = sorted(models.unique())
    marked = stochastic(df)
    ncols = min(len(names), PANELS_PER_ROW)
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.4 * nrows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, model in zip(axes.flat, names):
        part = df[models == model]
        for (solver, schedule), group in part.groupby([col.SOLVER, col.STEPS]):
            agg = _aggregate(group, col.NFE_MEASURED, metric)
            mark = f" {STOCHASTIC_MARK}" if marked[group.index].any() else ""
            ax.errorbar(agg[col.NFE_MEASURED], agg[metric], yerr=_errorbars(agg, metric), color=colours[str(solver)],
                        linestyle=styles[str(schedule)], marker="o", ms=4, capsize=2,
                        label=f"{solver} ({schedule}){mark}")
        ax.set_xscale("log")
        nfes = sorted(part[col.NFE_MEASURED].astype(int).unique())
        ax.set_xticks(nfes, labels=[str(n) for n in nfes])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        _label_axes(ax, part[metric], "NFE (measured)", metric, f"{metric} vs NFE: {model}")
    return fig


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats in both x and y (lower is better), sorted by x."""
    order = np.lexsort((y, x))
    front, best = [], np.inf
    for i in order:
        if y[i] < best:
            front.append(i)
            best = y[i]
    return np.asarray(front, dtype=int)


def pareto_plot(df: pd.DataFrame, metric: str, time_col: str = col.TIME_SAMPLING) -> plt.Figure:
    """Metric vs sampling wall time per point, with the Pareto front (lower-left is better)."""
    df = ok_rows(df).dropna(subset=[metric, time_col])
    check(not df.empty, f"no successful rows with '{metric}' and '{time_col}' to plot")
    colours, _ = _style_maps(df)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (solver, group) in enumerate(df.groupby(col.SOLVER)):
        ax.scatter(group[time_col], group[metric], color=colours[str(solver)], marker=MARKERS[i % len(MARKERS)],
                   s=22, label=str(solver))
    x, y = df[time_col].to_numpy(float), df[metric].to_numpy(float)
    front = pareto_front(x, y)
    ax.step(x[front], y[front], where="post", color="black", lw=1, alpha=0.6, label="Pareto front")
    for i in front:
        row = df.iloc[i]
        ax.annotate(f"{row['solver.name']}@{int(row['nfe_measured'])}", (x[i], y[i]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    _label_axes(ax, df[metric], "sampling wall time per point (s)", metric, f"{metric} vs wall time")
    return fig


def to_image(x: np.ndarray) -> np.ndarray:
    """A [C, H, W] sample in data range [-1, 1] as an [H, W, C] (or [H, W]) image in [0, 1]."""
    img = np.clip((x + 1.0) / 2.0, 0.0, 1.0)
    return img[0] if img.shape[0] == 1 else np.transpose(img[:3], (1, 2, 0))


def tile(samples: np.ndarray, columns: int) -> np.ndarray:
    """Image samples [N, C, H, W] tiled into one image with `columns` per row (1-pixel gaps)."""
    imgs = [to_image(s) for s in samples]
    h, w = imgs[0].shape[:2]
    rows = -(-len(imgs) // columns)
    canvas = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1, *imgs[0].shape[2:]))
    for k, img in enumerate(imgs):
        r, c = divmod(k, columns)
        canvas[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = img
    return canvas


def _load_samples(root: Path, rel: object) -> np.ndarray | None:
    if not isinstance(rel, str) or not (root / rel).is_file():
        return None
    with np.load(root / rel) as f:
        return f["x"]


def grid_plot(df: pd.DataFrame, root: Path, per_cell: int = 4) -> plt.Figure:
    """Samples from the same noise: one row per (model,) solver and schedule, one column per NFE budget.

    Image samples show the first `per_cell` per cell; vector samples all stored ones as a scatter.
    Several seeds of a point: the lowest one is drawn. A cell whose solver ran below the budget
    (nfe_policy=nearest_below) names its measured NFE.
    """
    df = ok_rows(df)
    check(col.SAMPLES_PATH in df.columns and not df.empty, "no successful rows with stored samples to draw")
    seed = None
    if "seed" in df.columns and df["seed"].nunique() > 1:
        seed = df["seed"].min()
        df = df[df["seed"] == seed]
    budget = col.NFE_BUDGET if col.NFE_BUDGET in df.columns else col.NFE_MEASURED
    df = df.assign(_row=_grid_row_labels(df), _col=df[budget].astype(int))
    rows, cols = sorted(df["_row"].unique()), sorted(df["_col"].unique())
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.5 * len(cols) + 2.2, 1.5 * len(rows) + 0.6),
                             squeeze=False)
    for i, name in enumerate(rows):
        for j, nfe in enumerate(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            match = df[(df["_row"] == name) & (df["_col"] == nfe)]
            x = _load_samples(root, match[col.SAMPLES_PATH].iloc[0]) if len(match) else None
            if x is not None:
                _draw_cell(ax, x[:per_cell] if x.ndim == 4 else x)
                measured = int(match[col.NFE_MEASURED].iloc[0])
                if measured != nfe:
                    ax.text(0.03, 0.97, f"ran NFE {measured}", transform=ax.transAxes, fontsize=6, va="top",
                            bbox={"facecolor": "white", "alpha": 0.8, "pad": 1, "linewidth": 0})
            if i == 0:
                ax.set_title(f"NFE {nfe}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    seeds = "" if seed is None else f", seed {seed}"
    fig.suptitle(f"samples from the same noise{seeds} (rows: solver (step schedule); columns: NFE budget)", fontsize=9)
    return fig


def _grid_row_labels(df: pd.DataFrame) -> pd.Series:
    """'solver (schedule)', prefixed by the model and guidance when the table holds several; stochastic marked."""
    label = df[col.SOLVER].astype(str) + " (" + df[col.STEPS].astype(str) + ")"
    models = _panel_label(df)
    if models.nunique() > 1:
        label = models + ":\n" + label
    return label + stochastic(df).map({True: f" {STOCHASTIC_MARK}", False: ""})


def _draw_cell(ax: plt.Axes, x: np.ndarray) -> None:
    """Images as a small tile; vectors as a scatter of their first two coordinates."""
    if x.ndim == 4:
        ax.imshow(tile(x, columns=int(np.ceil(np.sqrt(len(x))))), cmap="gray", vmin=0, vmax=1)
    else:
        flat = x.reshape(len(x), -1)
        ax.scatter(flat[:, 0], flat[:, 1] if flat.shape[1] > 1 else np.zeros(len(flat)), s=3)


def png_bytes(fig: plt.Figure) -> bytes:
    """Lay out, hide overlapping tick labels, and render a figure as PNG bytes (then close it)."""
    fig.tight_layout()
    hide_overlapping_tick_labels(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def hide_overlapping_tick_labels(fig: plt.Figure) -> None:
    """Along each axis, hide every tick label that would overlap the last one kept (major and minor)."""
    fig.canvas.draw()
    renderer = cast(Any, fig.canvas).get_renderer()  # the Agg canvas has one
    for ax in fig.axes:
        for axis, start in ((ax.xaxis, "x0"), (ax.yaxis, "y0")):
            labels = [t for t in axis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
            boxes = sorted(((t.get_window_extent(renderer), t) for t in labels), key=lambda bt: getattr(bt[0], start))
            kept = None
            for box, label in boxes:
                if kept is not None and box.overlaps(kept.padded(LABEL_GAP_PX)):
                    label.set_visible(False)
                else:
                    kept = box


def charts(df: pd.DataFrame, root: Path, metrics: Sequence[str] | None = None) -> list[Chart]:
    """Every figure for a table, with captions: NFE and Pareto plots per metric, plus the sample grid."""
    metrics = list(metrics or results.metric_columns(df))
    lacking = [c for c in PLOT_COLUMNS if c not in df.columns]
    check(not lacking, f"the results table lacks the column(s) {', '.join(lacking)} that plots need; "
                       "give a table written by `diffbench sweep`")
    check(ok_rows(df)[col.NFE_MEASURED].notna().all(), "the results table's nfe_measured holds non-numbers; "
                                                      "give a table written by `diffbench sweep`")
    check(not ok_rows(df).empty, "the results table has no successful rows to plot")
    missing = [m for m in metrics if m not in df.columns]
    check(not missing, f"metric {', '.join(missing)} is not in the table; "
                       f"it has: {', '.join(results.metric_columns(df))}")
    out = []
    for metric in metrics:
        if ok_rows(df)[metric].notna().any():
            out.append(Chart(f"nfe_{_slug(metric)}.png", nfe_caption(df, metric), png_bytes(nfe_plot(df, metric))))
            if col.TIME_SAMPLING in df.columns:
                out.append(Chart(f"pareto_{_slug(metric)}.png", PARETO_CAPTION.format(metric=metric),
                                 png_bytes(pareto_plot(df, metric))))
    if col.SAMPLES_PATH in df.columns:
        out.append(Chart("samples_grid.png", GRID_CAPTION, png_bytes(grid_plot(df, root))))
    return out


PARETO_CAPTION = ("{metric} (lower is better) against the sampling wall time of each point (log scale), one marker "
                  "per solver; the black steps are the Pareto front, the points no other point beats in both time "
                  "and {metric}, labelled solver@NFE.")
GRID_CAPTION = ("The first samples of every point, drawn from the same noise: one row per solver (step schedule), "
                "one column per NFE budget, so a row shows one solver converging as NFE grows. "
                f"{STOCHASTIC_MARK}: stochastic solver (its own noise on top of the shared start).")


def nfe_caption(df: pd.DataFrame, metric: str) -> str:
    """What an NFE plot shows, with its interval level and the stochastic-solver mark when it applies."""
    text = (f"{metric} against the measured number of network evaluations (NFE, log scale): one colour per solver, "
            "one line style per step schedule, one panel per model.")
    if f"{metric}_lo" in df.columns and pd.to_numeric(df[f"{metric}_lo"], errors="coerce").notna().any():
        text += f" Bars: {ci_level(df)} bootstrap confidence intervals."
    if metric == "rmse_ref" and stochastic(ok_rows(df)).any():
        text += (f" {STOCHASTIC_MARK} stochastic solver: its rmse_ref is the distance to the deterministic "
                 "reference (ODE) solution, not a convergence error, and need not fall with NFE.")
    return text


def ci_level(df: pd.DataFrame) -> str:
    """The table's interval level as a percentage (metrics.ci_level), or 'per-row level' when rows differ."""
    levels = pd.to_numeric(df.get("metrics.ci_level", pd.Series(dtype=float)), errors="coerce").dropna().unique()
    if len(levels) == 0:
        return "95%"  # regression.DEFAULT_LEVEL: tables written before the level was recorded
    return f"{levels[0]:.0%}" if len(levels) == 1 else "per-row level"


def plot_all(df: pd.DataFrame, root: Path, out_dir: Path, metrics: Sequence[str] | None = None) -> list[Path]:
    """Draw every figure (see `charts`) and write them into out_dir together (all or none: atomicio.write_all)."""
    drawn = charts(df, root, metrics)
    write_all({out_dir / c.name: c.png for c in drawn})
    return [out_dir / c.name for c in drawn]
