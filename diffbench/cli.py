"""The `diffbench` command line (Typer): sweep, sample, eval, ref, fit, plot, report, check, reproduce, list, doctor.

Bad input of any kind ends in one line on stderr naming the field and the fix, exit code 2, no
traceback and nothing written (DESIGN.md "Errors"). A file that cannot be written (disk full) is one
line too, exit code 1, the old file intact; SIGTERM stops a command cleanly with exit code 143
(Ctrl-C: 130), and a rerun of the same sweep resumes.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table

from diffbench import assetstore
from diffbench import columns as col
from diffbench.config import MAX_SAMPLES
from diffbench.errors import StorageError, UsageError, check, warn

app = typer.Typer(name="diffbench", no_args_is_help=True, add_completion=False, rich_markup_mode="markdown",
                  pretty_exceptions_enable=False,
                  help="Benchmark the speed/quality trade-off of diffusion and flow-model samplers.\n\n"
                       "Configs are Hydra configs (packaged in `diffbench/configs/`, plus `--config-dir` folders); "
                       "give overrides as `key=value`, e.g. "
                       "`diffbench sample solver=heun nfe=9`.")
# click's base error for bad command lines (typer >= 0.20 vendors click, so found through typer)
_CLICK_ERROR: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_ARGV: list[str] = ["diffbench"]

Overrides = Annotated[list[str] | None, typer.Argument(help="Hydra overrides, e.g. `solver=heun nfe=9 steps.rho=5`.",
                                                        show_default=False)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables, only the essentials.")]


@app.callback()
def options(config_dir: Annotated[list[Path] | None, typer.Option(
        "--config-dir", metavar="DIR", help="A folder of your own configs (`<group>/<name>.yaml`) that add to "
                                            "or override the packaged ones; repeatable, the first wins "
                                            "(also $DIFFBENCH_CONFIG_PATH).",
        show_default=False)] = None) -> None:
    """Benchmark the speed/quality trade-off of diffusion and flow-model samplers."""
    if config_dir:
        import os

        from diffbench.config import CONFIG_PATH_ENV

        given = [str(p.expanduser().resolve()) for p in config_dir]
        os.environ[CONFIG_PATH_ENV] = os.pathsep.join([*given, *filter(None, [os.environ.get(CONFIG_PATH_ENV)])])


# sweep ----------------------------------------------------------------------------------------------

@app.command()
def sweep(overrides: Overrides = None, quiet: Quiet = False,
          shard: Annotated[str, typer.Option(help="Run share I of N of the points (I/N, 0-based), "
                                                  "for several jobs.")] = "0/1",
          jobs: Annotated[int, typer.Option(help="With hydra/launcher=...: N jobs of shards "
                                                 "(0: one job per point).")] = 0,
          retry_failed: Annotated[bool, typer.Option(help="Run again the points stored as failed.")] = False,
          dry_run: Annotated[bool, typer.Option(help="List the grid points and exit.")] = False,
          report: Annotated[bool, typer.Option(help="Write plots and "
                                                    "the HTML/markdown report at the end.")] = True) -> None:
    """Run a grid of solvers x step grids x NFE budgets (x models x seeds) into a results table.

    With no arguments: the embedded default (an analytic image-shaped Gaussian mixture, CPU, no
    downloads). Comma lists sweep, a rerun skips the points already in the table (resume):

    ```
    diffbench sweep
    diffbench sweep solver=euler,heun,dpmpp_2m nfe=5,10,20 out=runs/mine
    diffbench sweep debug=default out=runs/smoke   # tiny, for a smoke test
    torchrun --nproc_per_node=4 -m diffbench.cli sweep out=runs/mine   # 4 GPUs share each point's samples
    diffbench sweep hydra/launcher=slurm hydra.launcher.partition=gpu out=runs/mine   # one SLURM job per point
    ```
    """
    from diffbench import distributed
    from diffbench.engine.points import prepare
    from diffbench.engine.sweep import run_sweep

    index, count = _parse_shard(shard)
    overrides, launcher = _split_launcher(overrides or [], shard, jobs)
    if dry_run:
        points = prepare(overrides)
        if not distributed.is_main():
            return
        for p in points:
            out.print(f"{p.key}  {p.label}" + (f"  (budget {p.nfe_budget})" if p.nfe_budget != p.nfe else ""))
        out.print(f"{len(points)} points")
        return
    if launcher:
        summary, incomplete = _launch_jobs(overrides, launcher, jobs, retry_failed)
    else:
        summary, incomplete = run_sweep(overrides, progress=not quiet, shard=(index, count),
                                        retry_failed=retry_failed, command=_ARGV,
                                        on_row=(lambda row: None) if quiet else _print_row_status), 0
    if not distributed.is_main():
        return  # under torchrun rank 0 prints and writes the report
    df = summary.frame()
    out.print(f"{summary.ran} points run, {summary.skipped} already in the table, {summary.failed} failed")
    if not quiet:
        _print_results(df)
    out.print(f"results: {summary.table} (+ .csv)")
    if report and not df.empty and (df[col.STATUS] == col.OK).any():
        from diffbench.report import write_report

        html, md = write_report(df, summary.table.parent, summary.table.parent / "report")
        out.print(f"plots:   {html.parent / 'figures'}")
        out.print(f"report:  {html}  and  {md}")
    if incomplete:
        raise typer.Exit(1)  # points without a row: their jobs died (or still run); a rerun resumes


def _split_launcher(overrides: list[str], shard: str, jobs: int) -> tuple[list[str], list[str]]:
    """(sweep overrides, Hydra launcher overrides); --jobs needs a launcher, which replaces --shard."""
    from diffbench.launch import split_overrides

    overrides, launcher = split_overrides(overrides)
    if launcher:
        check(shard == "0/1", f"--shard {shard}: {launcher[0]} submits every shard itself; give --jobs N instead")
    else:
        check(jobs == 0, f"--jobs {jobs} needs a launcher: add hydra/launcher=local (or slurm), "
                         "or split by hand with --shard I/N")
    return overrides, launcher


def _launch_jobs(overrides: list[str], launcher: list[str], jobs: int, retry_failed: bool) -> tuple[Any, int]:
    """Run the points as jobs of a Hydra launcher (diffbench.launch), one line per failure on stderr."""
    from rich.markup import escape

    from diffbench.launch import launch_sweep

    launched = launch_sweep(overrides, launcher, jobs=jobs, retry_failed=retry_failed, command=_ARGV,
                            echo=out.print)
    for line in launched.failures:
        err.print(f"[yellow]{escape(line)}[/]", highlight=False)
    return launched.summary, launched.incomplete


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text}: expected I/N, e.g. 0/4") from None
    check(count >= 1 and 0 <= index < count, f"--shard {text}: need 0 <= I < N")
    return index, count


def _print_row_status(row: dict[str, Any]) -> None:
    if row[col.STATUS] != col.OK:
        err.print(f"[yellow]point {row[col.CONFIG_HASH]} failed:[/] {row[col.REASON]}", highlight=False)


def _print_results(df: Any) -> None:
    """A compact terminal view: one line per point, metric values without their intervals."""
    from diffbench import results

    if df.empty:
        return
    df = df.sort_values([c for c in (col.MODEL_CHOICE, col.SOLVER, col.STEPS, col.NFE_MEASURED, col.NFE_BUDGET,
                                     col.SEED) if c in df.columns])
    columns = {col.SOLVER: "solver", col.STEPS: "steps", col.NFE_MEASURED: "NFE"}
    for optional, label in ((col.SEED, "seed"), (col.MODEL_CHOICE, "model")):
        if optional in df.columns and df[optional].nunique() > 1:
            columns = {optional: label, **columns}
    columns.update({m: m for m in results.metric_columns(df)})
    columns.update({col.TIME_SAMPLING: "sample s", col.STATUS: "status"})
    view = Table(header_style="bold", caption="intervals and figures: see the report")
    for label in columns.values():
        view.add_column(label, no_wrap=True)
    for _, row in df.iterrows():
        view.add_row(*(_cell(row.get(name)) for name in columns))
    out.print(view)


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# sample ---------------------------------------------------------------------------------------------

@app.command()
def sample(overrides: Overrides = None, quiet: Quiet = False,
           seeds: Annotated[str | None, typer.Option(help="Sample indices, e.g. 0-63 or 0,5,9 "
                                                          "(default: 0..n_samples-1).")] = None,
           output: Annotated[Path | None, typer.Option("--output", "-o", help="The .npz to write (a PNG grid "
                                                                              "goes next to it).")] = None,
           json_out: Annotated[Path | None, typer.Option("--json", help="Also write NFE, time and paths (discrete: "
                                                                        "exact entropy and NLL) to this JSON "
                                                                        "file.")] = None,
           lm: Annotated[str | None, typer.Option("--lm", help="Discrete samplers: also report the samples' "
                                                               "generative perplexity under this causal LM (a "
                                                               "local folder or a hub id; offline by "
                                                               "default).")] = None) -> None:
    """Draw samples with one model + solver + step grid + NFE, save them (.npz) and a PNG grid.

    Prints the measured NFE and the time. Sample i's noise depends only on (seed, i). Discrete samplers
    save tokens (.npz key `tokens`) and print their exact unigram entropy and NLL under the model:

    ```
    diffbench sample solver=heun nfe=9 --seeds 0-15
    diffbench sample model=image_mixture_32 solver=euler nfe=20 steps=uniform_logsnr -o euler.npz
    diffbench sample experiment=discrete_markov solver=first_hitting nfe=5 --json fhs.json --lm gpt2
    ```
    """
    from diffbench.atomicio import check_output_file, check_writable
    from diffbench.config import compose
    from diffbench.engine.discrete import is_discrete
    from diffbench.engine.points import ModelCache, resolve_point

    cfg = compose(overrides or [])
    models = ModelCache()
    point = resolve_point(cfg, models, policy="exact")
    indices = _parse_seeds(seeds) if seeds else list(range(point.run.n_samples))
    path = output or Path(cfg.out) / "samples" / (f"{cfg.solver.name}_{cfg.steps.name}"
                                                  f"_nfe{cfg.nfe}_seed{cfg.seed}.npz")
    check(path.suffix == ".npz", f"--output {path}: give a .npz path")
    if json_out:
        check_output_file(json_out, "--json")
    check_writable(path.parent, "--output")
    check(lm is None or is_discrete(point), "--lm scores token samples: use it with a discrete sampler")
    fields = (_sample_tokens(cfg, point, models, indices, path, lm) if is_discrete(point)
              else _sample_images(cfg, point, models, indices, path, quiet))
    summary = {"samples": str(path), "n": len(indices), "solver": str(cfg.solver.name),
               "steps": str(cfg.steps.name), "seed": cfg.seed, **fields}
    if json_out:
        _write_json(json_out, summary)


def _sample_images(cfg: Any, point: Any, models: Any, indices: list[int], path: Path, quiet: bool) -> dict[str, Any]:
    """`diffbench sample` with a continuous solver: samples .npz and PNG grid; returns the JSON summary's fields."""
    import numpy as np
    import torch

    from diffbench import plots, results
    from diffbench.engine.progress import Reporter
    from diffbench.sampling import Plan, first_nonfinite, sample_points

    model = models.for_point(cfg, max(indices) + 1)  # labels bound by index (as far as --seeds reaches), if any
    assert isinstance(point.plan, Plan)  # policy "exact" always gives a plan or raises
    xs, seconds, nfe = [], 0.0, None
    with assetstore.cache_root(cfg.cache_dir), Reporter(not quiet) as reporter, \
            reporter.task(point.label, len(indices)) as advance:
        for batch, dt in sample_points(model, point.plan, point.run, indices, advance):
            xs.append(model.decode(batch.x).cpu())  # latent models: images from their VAE
            seconds, nfe = seconds + dt, batch.nfe_measured
    x = torch.cat(xs)
    reason = first_nonfinite(x)
    check(reason is None, f"samples: {reason}; try more NFE (nfe=...) or another step grid (steps=...)")
    results.save_npz(path, x=x.float().numpy(), indices=np.asarray(indices), seed=cfg.seed, nfe=nfe,
                     solver=str(cfg.solver.name), steps=str(cfg.steps.name))
    png = path.with_suffix(".png")
    if x.ndim == 4:
        import matplotlib.pyplot as plt

        plt.imsave(png, plots.tile(x.float().numpy()[:64], columns=8), cmap="gray", vmin=0, vmax=1)
    out.print(f"{len(indices)} samples, NFE measured {nfe} (declared {point.plan.nfe_declared}), "
              f"{seconds:.3f} s sampling ({seconds / max(nfe or 1, 1):.4f} s per NFE)")
    out.print(f"samples: {path}" + (f"\ngrid:    {png}" if x.ndim == 4 else ""))
    return {"nfe_measured": nfe, "nfe_declared": point.plan.nfe_declared, "seconds": seconds,
            "grid": str(png) if x.ndim == 4 else None}


def _sample_tokens(cfg: Any, point: Any, models: Any, indices: list[int], path: Path, lm: str | None) -> dict[str, Any]:
    """`diffbench sample`, discrete: tokens .npz, exact entropy and NLL, perplexity under `lm`; the summary's fields."""
    import numpy as np

    from diffbench import results
    from diffbench.discrete.metrics import token_quality
    from diffbench.discrete.perplexity import generative_perplexity, load_causal_lm
    from diffbench.engine.discrete import sample_discrete

    scorer = load_causal_lm(lm, point.run.device) if lm else None  # a missing LM fails before sampling
    model = models.get(cfg.model)
    tokens, passes, seconds = sample_discrete(point, model, indices)
    nfe = float(passes.double().mean())
    results.save_npz(path, tokens=tokens.cpu().numpy(), passes=passes.cpu().numpy(), indices=np.asarray(indices),
                     seed=cfg.seed, nfe=nfe, solver=str(cfg.solver.name), steps=str(cfg.steps.name))
    quality = token_quality(model, tokens).extra()
    out.print(f"{len(indices)} sequences, NFE measured {nfe:g} per sample (declared {point.plan.nfe_declared}), "
              f"{seconds:.3f} s sampling", highlight=False)
    out.print(_entropy_line(quality), highlight=False)
    if scorer is not None:
        quality["gen_ppl"] = generative_perplexity(tokens, scorer, point.run.batch_size)
        out.print(f"generative perplexity {quality['gen_ppl']:.4g} under {lm}", highlight=False)
    out.print(f"samples: {path}")
    return {"nfe_measured": nfe, "nfe_declared": point.plan.nfe_declared, "seconds": seconds, **quality}


def _entropy_line(quality: dict[str, Any]) -> str:
    """The samples' unigram entropy, with the true values and NLL when the model has an exact truth."""
    if "entropy_true" not in quality:
        return f"unigram entropy {quality['unigram_entropy']:.4f} nats (no exact truth for this model)"
    return (f"unigram entropy {quality['unigram_entropy']:.4f} nats (true {quality['unigram_entropy_true']:.4f}), "
            f"NLL {quality['nll']:.4f} (true entropy {quality['entropy_true']:.4f})")


def _parse_seeds(text: str) -> list[int]:
    """'0-63', '0,5,9' or a mix: EDM's seed-range syntax for sample indices."""
    indices: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            start, stop = int(lo), int(hi) + 1 if hi else int(lo) + 1
            if len(indices) + stop - start > MAX_SAMPLES:
                raise UsageError(f"--seeds {text}: more than {MAX_SAMPLES} indices")
            indices += list(range(start, stop))
    except UsageError:
        raise
    except ValueError:
        raise UsageError(f"--seeds {text}: expected ranges like 0-63 or lists like 0,5,9") from None
    check(len(indices) > 0 and min(indices) >= 0, f"--seeds {text}: give at least one index >= 0")
    return indices


# eval / ref ----------------------------------------------------------------------------------------

@app.command("eval")
def eval_cmd(samples: Annotated[Path, typer.Argument(help="Samples: a .npz/.npy (float in [-1, 1] or uint8 images) "
                                                          "or a folder of images.", show_default=False)],
             overrides: Overrides = None, quiet: Quiet = False,
             key: Annotated[str | None, typer.Option(help="Array name inside the .npz (default: x, "
                                                          "else the first).")] = None,
             json_out: Annotated[Path | None, typer.Option("--json", help="Also write the values "
                                                                          "to this JSON file.")] = None) -> None:
    """Compute the feature metrics (FD/FID, KID, IS, PR) of saved samples against the configured dataset.

    ```
    diffbench eval runs/default/samples/heun_karras_nfe9_seed0.npz   # from: diffbench sample solver=heun nfe=9
    diffbench eval my_samples/ dataset=npz dataset.path=ref.npz metrics.extractor=inception
    ```
    """
    from diffbench.atomicio import check_output_file
    from diffbench.batching import FEATURE_BATCH
    from diffbench.config import compose, settings
    from diffbench.engine.points import ModelCache
    from diffbench.engine.progress import Reporter
    from diffbench.metrics import evaluate, parse_metrics
    from diffbench.metrics.suite import MetricContext, feature_values, metric_options, progress_callback

    cfg = compose(overrides or [])
    run = settings(cfg)
    feature, _ = parse_metrics(list(cfg.metrics.names))
    check(bool(feature), "metrics.names holds no feature metric (fd, kid, is, prdc); eval computes only those")
    if json_out:
        check_output_file(json_out, "--json")
    dataset = _samples_dataset(samples, key)
    model = ModelCache().get(cfg.model) if cfg.dataset.get("kind") == "model_samples" else None
    with assetstore.cache_root(cfg.cache_dir), Reporter(not quiet) as reporter:
        context = MetricContext(reporter)
        extractor = context.extractor(cfg, run.device)
        stats = context.dataset_statistics(cfg, model, extractor, run.batch_size)
        with reporter.task(f"features ({extractor.name})", len(dataset)) as advance:
            res = evaluate(dataset.batches(min(run.batch_size, FEATURE_BATCH)), stats, extractor, feature,
                           metric_options(cfg, run.device), total=len(dataset), progress=progress_callback(advance))
    values, extra = feature_values(res, extractor)
    view = Table(header_style="bold")
    for header in ("metric", "value", "interval"):
        view.add_column(header)
    for name, v in values.items():
        view.add_row(name, _cell(v.value), "" if v.lo is None else f"[{_cell(v.lo)}, {_cell(v.hi)}]")
    out.print(view)
    out.print(f"{res['n_gen']} samples vs {extra['n_ref']} reference images ({extra['ref_id']})"
              + (f"; intervals: {extra['ci']}" if extra["ci"] else ""), highlight=False)
    for note in res["notes"]:  # skipped metrics, clipped bounds, unverified weights (auto's fallback warned already)
        if note != extractor.fallback:
            warn(note)
    if json_out:
        _write_json(json_out, {"samples": str(samples), **{k: vars(v) for k, v in values.items()}, **extra})


def _write_json(path: Path, content: dict[str, Any]) -> None:
    """content as indented JSON, written atomically (parents created)."""
    import json

    from diffbench.atomicio import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(content, indent=1, default=str)))


def _samples_dataset(path: Path, key: str | None) -> Any:
    """Saved samples as an image dataset: float arrays in [-1, 1] are quantised like sweep samples."""
    import numpy as np
    import torch

    from diffbench.data import ArrayDataset, FolderDataset, load_array, make_dataset, to_uint8

    check(path.exists(), f"{path} does not exist; give a .npz/.npy of samples or a folder of images")
    if path.is_dir():
        folder = cast(FolderDataset, make_dataset({"kind": "folder", "path": str(path)}))
        folder.check_headers(len(folder))  # unreadable files and mixed sizes: before the reference is built
        return folder
    check(path.suffix in (".npz", ".npy"), f"{path}: give a .npz/.npy file or a folder of images")
    arr = load_array(path, key, prefer="x", key_field="--key")
    if arr.dtype == np.uint8:
        return make_dataset({"kind": "npz", "path": str(path), "key": key})
    check(np.issubdtype(arr.dtype, np.floating), f"{path}: samples must be float in [-1, 1] or uint8 (got {arr.dtype})")
    check(bool(np.isfinite(arr).all()), f"{path}: samples contain NaN or inf; regenerate them")
    return ArrayDataset(to_uint8(torch.from_numpy(arr)), name=path.stem)


@app.command()
def ref(overrides: Overrides = None, quiet: Quiet = False,
        json_out: Annotated[Path | None, typer.Option("--json", help="Also write the reference's id, size and files "
                                                                     "to this JSON file.")] = None) -> None:
    """Build (or verify) the reference feature statistics of the configured dataset and extractor.

    Sweeps build them on first use; this command does it ahead of time (e.g. once per cluster):

    ```
    diffbench ref
    diffbench ref dataset=folder dataset.path=/data/cifar10/train metrics.extractor=inception
    ```
    """
    from diffbench.atomicio import check_output_file
    from diffbench.config import compose, settings
    from diffbench.engine.points import ModelCache
    from diffbench.engine.progress import Reporter
    from diffbench.metrics.suite import MetricContext

    cfg = compose(overrides or [])
    run = settings(cfg)
    if json_out:
        check_output_file(json_out, "--json")
    model = ModelCache().get(cfg.model) if cfg.dataset.get("kind") == "model_samples" else None
    with assetstore.cache_root(cfg.cache_dir), Reporter(not quiet) as reporter:
        context = MetricContext(reporter)
        extractor = context.extractor(cfg, run.device)
        stats = context.dataset_statistics(cfg, model, extractor, run.batch_size)
    state = "built" if stats.built else "found in the cache"
    out.print(f"reference {stats.id}: {stats.stats.n} images, {extractor.name} features ({stats.stats.dim}-d), {state}")
    out.print(f"files:     {stats.path}.npz / .features.npy / .json")
    if json_out:
        _write_json(json_out, {"ref_id": stats.id, "n": stats.stats.n, "built": stats.built, "files": str(stats.path),
                               **extractor.identity(), "weights_check": extractor.weights_check})


@app.command()
def fit(overrides: Overrides = None, quiet: Quiet = False,
        refit: Annotated[bool, typer.Option(help="Fit again even when the cache holds the grid.")] = False) -> None:
    """Fit step grids per (model, solver, NFE) on calibration noise; sweeps use them with `steps=fitted`.

    Takes the sweep's overrides (comma lists fit each point); the grid is stored in the cache, keyed by
    model, solver, NFE, method (gits, oss, ays, ld3, search; pas: per-step solver corrections on the Karras
    grid), calibration set, and conditions and guidance (a guided field gets its own grid), with its fitting
    time and NFE:

    ```
    diffbench fit solver=dpmpp_2m nfe=4,6,8 steps.method=ld3
    diffbench sweep solver=dpmpp_2m nfe=4,6,8 steps=fitted steps.method=ld3 out=runs/fitted
    ```
    """
    from diffbench.fit.run import fit_all

    for fitted in fit_all(overrides or [], progress=not quiet, refit=refit):
        a, request = fitted.artefact, fitted.artefact["request"]
        rmse = a["calibration_rmse"]
        state = "found in the cache" if fitted.reused else f"fitted in {a['fit_seconds']:.1f} s, {a['fit_nfe']} NFE"
        out.print(f"{request['solver']['name']} nfe {request['nfe']} {request['method']}: {state}; calibration RMSE "
                  f"{rmse['fitted']:.4g} (karras {rmse['karras']:.4g})")
        out.print(f"  {fitted.path}")


# plot / report --------------------------------------------------------------------------------------

Results = Annotated[Path, typer.Argument(help="A results table: its folder, .parquet or .csv.", show_default=False)]


@app.command()
def plot(results_path: Results,
         out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for the PNGs "
                                                                    "(default: `<table dir>/figures`).")] = None,
         metric: Annotated[list[str] | None, typer.Option(help="Metric(s) to plot "
                                                               "(default: all in the table).")] = None) -> None:
    """Draw metric-vs-NFE plots, metric-vs-time Pareto fronts and a sample grid from a results table.

    Writes `nfe_<metric>.png` and `pareto_<metric>.png` per metric and `samples_grid.png`:

    ```
    diffbench plot runs/default                     # into runs/default/figures/
    diffbench plot runs/default/results.parquet --metric rmse_ref --out figs/
    ```
    """
    from diffbench import plots, results
    from diffbench.atomicio import check_output_folder

    df = results.read_table(results_path)
    root = results.table_paths(results_path).parquet.parent
    target = out_dir or root / "figures"
    check_output_folder(target, "--out")
    for path in plots.plot_all(df, root, target, metric):
        out.print(str(path))


@app.command()
def report(results_path: Results,
           out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for the report "
                                                                      "(default: `<table dir>/report`).")] = None,
           title: Annotated[str, typer.Option(help="Page title.")] = "diffbench report") -> None:
    """Write a self-contained HTML report (figures inlined) and a markdown page from a results table.

    Writes `report.html`, `report.md` and `figures/` (a sweep writes the same into `<out>/report/`):

    ```
    diffbench report runs/default                   # runs/default/report/report.html
    diffbench report runs/default/results.parquet --out site/ --title "solver shoot-out"
    ```
    """
    from diffbench import results
    from diffbench.atomicio import check_output_folder
    from diffbench.report import write_report

    df = results.read_table(results_path)
    root = results.table_paths(results_path).parquet.parent
    target = out_dir or root / "report"
    check_output_folder(target, "--out")
    html, md = write_report(df, root, target, title)
    out.print(f"report: {html}\n        {md}")


# check ----------------------------------------------------------------------------------------------

@app.command("check")
def check_cmd(results_path: Results,
              baseline: Annotated[Path, typer.Option("--baseline", "-b", help="The baseline table: "
                                                                              "its folder, .parquet or .csv.",
                                                     show_default=False)],
              metric: Annotated[list[str] | None, typer.Option(help="Metric(s) to compare "
                                                                    "(default: all of the baseline's).")] = None,
              rtol: Annotated[float, typer.Option(help="Relative slack added to every tolerance.")] = 0.0,
              alpha: Annotated[float, typer.Option(help="Chance that an unchanged re-run "
                                                        "on another seed fails the whole check.")] = 0.05,
              require_all: Annotated[bool, typer.Option(help="Count each baseline point "
                                                             "missing from the results as a regression.")] = False,
              same_seed: Annotated[bool, typer.Option(help="Hold points re-run "
                                                           "on the baseline's own seed and environment "
                                                           "on a CPU to relative 1e-6 (they reproduce it).")] = True,
              update: Annotated[bool, typer.Option(help="Write the results "
                                                        "as the new baseline instead of comparing.")] = False) -> None:
    """Compare a results table with a baseline: exit 0 pass, 1 regression, 2 bad input.

    Points are matched by config without the seed; only the points both tables hold are compared
    (the others are counted; `--require-all` fails on them). A point re-run on the baseline's own
    seed on the same CPU and package versions must reproduce its numbers to relative 1e-6 (same-seed
    CPU runs reproduce); elsewhere a metric regresses when it is worse by more than the two
    runs' noise allows (intervals combined, corrected for the number of comparisons: see
    diffbench/regression.py). Lower is better except for IS, precision, recall, density, coverage;
    timings and other machine-specific columns are never compared.

    ```
    diffbench check runs/ci --baseline results/baseline.parquet
    diffbench check runs/ci --baseline results/baseline.parquet --metric rmse_ref --require-all
    diffbench check runs/new --baseline results/baseline.parquet --update   # accept new numbers
    ```
    """
    from diffbench import regression, results
    from diffbench.atomicio import check_writable

    current = results.read_table(results_path)
    if update:
        check_writable(results.table_paths(baseline).parquet.parent, "--baseline")
        results.write_table(baseline, current)
        out.print(f"baseline {baseline} now holds the {len(current)} rows of {results_path}")
        return
    verdict = regression.compare(current, results.read_table(baseline), metric, rtol, alpha, require_all=require_all,
                                 same_seed_rtol=regression.SAME_SEED_RTOL if same_seed else None)
    bad = verdict[verdict["verdict"] == "regression"]
    skipped = verdict[verdict["verdict"] == "skipped"]
    passed = verdict[~verdict["verdict"].isin(("regression", "skipped"))]
    if len(passed):
        _print_frame(passed.drop(columns="why"))
    summary = f"{len(verdict) - len(skipped)} comparisons, {len(bad)} regressions"
    if len(skipped):
        summary += (f"; {skipped['config_hash'].nunique()} baseline points not in the run, not compared "
                    "(--require-all counts them as regressions)")
    out.print(summary, highlight=False)
    for row in bad.itertuples(index=False):
        out.print(f"REGRESSION {row.solver} / {row.steps} / nfe {row.nfe} ({row.config_hash}) "
                  f"{row.metric}: {row.why}",
                  highlight=False, markup=False)
    if len(bad):
        raise typer.Exit(1)


def _print_frame(df: Any) -> None:
    """A frame as plain aligned text, never cut to the terminal's width (CI logs keep every column)."""
    out.print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep=""), highlight=False, markup=False)


# reproduce ------------------------------------------------------------------------------------------

@app.command()
def reproduce(name: Annotated[str | None, typer.Argument(help="A preset (`--list` shows them) or a preset .yaml path.",
                                                         show_default=False)] = None,
              overrides: Overrides = None, quiet: Quiet = False,
              list_presets: Annotated[bool, typer.Option("--list", help="List the presets and exit.")] = False,
              quick: Annotated[bool, typer.Option(help="N = 5,000 and a wider tolerance: a first look, "
                                                       "not a reproduction.")] = False,
              as_json: Annotated[bool, typer.Option("--json",
                                                    help="Print the list or the comparison as JSON.")] = False) -> None:
    """Run a published table's protocol and compare every point with its published number: exit 0 all within, 1 a miss.

    A preset pins the checkpoint, reference statistics, N, seeds, step grid, final-step and NFE
    conventions and solver options; a point lies within when |measured - published| <= max(2%,
    half the measured interval). Missing files: one line naming each and where to put it, exit 2.

    ```
    diffbench reproduce --list
    diffbench reproduce edm-heun-35 device=cuda batch_size=auto      # model.path= / dataset.path= point at local files
    diffbench reproduce diffbench-baseline                           # this repository's own results/baseline.parquet
    diffbench reproduce dpm-solver-v3-edm-cifar10 --quick            # N = 5,000, tolerance 10%
    ```
    """
    from diffbench import reproduce as rp

    if list_presets:
        rows = rp.listing()
        if as_json:
            print(_json_text(rows))
        else:
            _print_frame(_frame(rows))
        return
    check(name is not None, "reproduce: give a preset NAME, or --list to see them")
    assert name is not None  # check() raised otherwise
    preset = rp.load_preset(name)
    outcome = rp.reproduce(preset, overrides or [], quick=quick, progress=not (quiet or as_json), command=_ARGV)
    rows = [c.row() for c in outcome.comparisons]
    if as_json:
        print(_json_text({"preset": preset.name, "title": preset.title, "source": preset.source, "quick": outcome.quick,
                          "n_samples": outcome.n_samples, "out": outcome.out, "files": outcome.files,
                          "passed": outcome.passed, "points": rows}))
    else:
        _print_outcome(outcome, rows)
    if not outcome.passed:
        raise typer.Exit(1)


def _print_outcome(outcome: Any, rows: list[dict[str, Any]]) -> None:
    """The comparison table with its settings: which files (SHA-256), N, quick mode, where the rows are."""
    preset = outcome.preset
    out.print(f"{preset.title} ({preset.source})", highlight=False, markup=False)
    if outcome.quick:
        out.print(f"QUICK: N = {outcome.n_samples} instead of the protocol's, tolerance {preset.quick_tolerance:.0%}: "
                  "a first look, not a reproduction", highlight=False, markup=False)
    for f in outcome.files:
        out.print(f"{f['what']}: {f['path']} sha256 {f['sha256']} ({f['check']})", highlight=False, markup=False)
    _print_frame(_frame(rows).drop(columns=["reason", "config_hash", "source"]))
    for row in rows:
        if row["reason"]:
            out.print(f"{row['point']}: {row['reason']}", highlight=False, markup=False)
    missed = sum(r["verdict"] != "within" for r in rows)
    out.print(f"{len(rows) - missed} of {len(rows)} points within tolerance; rows in {outcome.out}", highlight=False)


def _frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows)


def _json_text(data: Any) -> str:
    import json

    return json.dumps(data, indent=1, default=str)


# list / doctor --------------------------------------------------------------------------------------

@app.command("list")
def list_cmd(what: Annotated[str, typer.Argument(help="solvers | discrete | steps | models | datasets | "
                                                     "metrics | conditions | guidance | all")] = "all",
             as_json: Annotated[bool, typer.Option("--json", help="Print the tables "
                                                                  "as JSON (one object per row).")] = False,
             details: Annotated[bool, typer.Option("--details", help="solvers: paper, reference implementation "
                                                                     "and parity status, one block each.")] = False,
             ) -> None:
    """List what configs can name: solvers (order, stochastic, min NFE, default options), step grids, models, ...

    `discrete` lists the masked-diffusion samplers (solver=... with steps=linear_mask, e.g. experiment=discrete_markov).

    ```
    diffbench list solvers
    diffbench list discrete --json
    diffbench list solvers --json      # options: the typed config defaults; fixed: those the name fixes
    diffbench list solvers --details   # paper, reference implementation, parity (docs/PARITY.md)
    diffbench list            # everything
    ```
    """
    tables = {"solvers": _solver_rows, "discrete": _discrete_rows, "steps": _step_rows, "models": _model_rows,
              "datasets": _dataset_rows, "metrics": _metric_rows,
              "conditions": lambda: _input_rows("conditions"), "guidance": lambda: _input_rows("guidance")}
    check(what in (*tables, "all"), f"list {what}: choose one of: {', '.join(tables)}, all")
    check(not details or (what == "solvers" and not as_json),
          "--details lists solvers only, as text: diffbench list solvers --details (or --json for every field)")
    if details:
        print("\n".join(_solver_details()))
        return
    chosen = {name: rows_fn() for name, rows_fn in tables.items() if what in (name, "all")}
    if as_json:
        import json

        data = {name: [dict(zip(columns, row)) for row in rows] for name, (columns, rows) in chosen.items()}
        print(json.dumps(data[what] if what != "all" else data, indent=1, default=str))
        return
    for name, (columns, rows) in chosen.items():
        view = Table(title=name, header_style="bold", title_justify="left")
        shown = [i for i, col in enumerate(columns) if col not in JSON_ONLY]
        for i in shown:
            view.add_column(columns[i], overflow="fold", no_wrap=i == 0)
        for row in rows:
            view.add_row(*(_options_text(row[i]) if isinstance(row[i], dict) else str(row[i]) for i in shown))
        out.print(view)


JSON_ONLY = ("fixed", "paper", "reference", "parity")  # `list --json` only (the table stays readable in 80 columns)


def _options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "-"


def _summary(fn: Any) -> str:
    import inspect

    return (inspect.getdoc(fn) or "").splitlines()[0] if fn.__doc__ else ""


def _input_rows(group: str) -> tuple[list[str], list[list[Any]]]:
    """Condition sets or guidance rules: name, default options, summary."""
    from diffbench.config import node_defaults
    from diffbench.models.conditions import CONDITIONS
    from diffbench.models.guidance import GUIDANCE

    registry = CONDITIONS if group == "conditions" else GUIDANCE
    return ["name", "options", "summary"], [[n, node_defaults(group, n), _summary(fn)]
                                            for n, fn in sorted(registry.items())]


def _solver_rows() -> tuple[list[str], list[list[Any]]]:
    from diffbench.config import node_defaults
    from diffbench.solvers import SOLVERS
    from diffbench.solvers.upstream import upstream_of

    rows = []
    for name, spec in sorted(SOLVERS.items()):
        stochastic = (("yes" if spec.stochastic else "no") if isinstance(spec.stochastic, bool)
                      else f"{spec.stochastic}>0")
        nfe = "adaptive" if spec.adaptive else ",".join(
            str(spec.nfe_for(n, True)) for n in range(spec.min_steps, spec.min_steps + 4)) + ",…"
        ref = upstream_of(name)
        rows.append([name, spec.order, stochastic, spec.min_nfe(True), nfe, node_defaults("solver", name),
                     sorted(spec.fixed()), spec.summary, ref.implementation, _parity_text(ref)])
    columns = ["solver", "order", "stochastic", "min NFE", "valid NFE (final_zero)", "options", "fixed", "paper",
               "reference", "parity"]
    return columns, rows


def _discrete_rows() -> tuple[list[str], list[list[Any]]]:
    """Masked-diffusion samplers: passes per sample for n steps on sequences of length L, options, paper."""
    from diffbench.discrete import SAMPLERS

    def passes(spec: Any) -> str:
        if spec.adaptive:
            return "adaptive (<= steps: cached passes skipped)"
        if spec.one_pass_per_token:
            return "= L (one per token)"
        return "steps" + (" (<= L)" if spec.at_most_length else "")

    rows = [[name, passes(spec), spec.options(), spec.summary] for name, spec in sorted(SAMPLERS.items())]
    return ["sampler", "NFE", "options", "paper"], rows


def _parity_text(ref: Any) -> str:
    """A reference entry's status in words (the note says what differs, or how correctness is shown)."""
    head = {"parity": "equal to the reference to <= 1e-10 (docs/PARITY.md)", "differs": "differs from the reference",
            "none": "no counterpart"}[ref.status]
    return f"{head}: {ref.note}" if ref.note else head


def _solver_details() -> list[str]:
    """One block per solver, wrapped to 80 columns: the paper line, reference implementation, parity status."""
    import textwrap

    columns, rows = _solver_rows()
    lines = []
    for row in rows:
        item = dict(zip(columns, row))
        lines.append(f"{item['solver']}  (order {item['order']}, stochastic {item['stochastic']})")
        for label in ("paper", "reference", "parity"):
            lines += textwrap.wrap(str(item[label]) or "-", 80, initial_indent=f"  {label + ':':<11}",
                                   subsequent_indent=" " * 13)
        lines.append("")
    return lines[:-1]


def _step_rows() -> tuple[list[str], list[list[Any]]]:
    from diffbench.config import group_options
    from diffbench.steps import STEP_GRIDS

    rows = [[name, "yes" if name in group_options("steps") else "-", _summary(fn)]
            for name, fn in sorted(STEP_GRIDS.items())]
    return ["steps", "config", "spacing"], rows


def _model_rows() -> tuple[list[str], list[list[Any]]]:
    from diffbench.config import group_config, group_options
    from diffbench.discrete import MODELS as DISCRETE_MODELS
    from diffbench.models import MODELS

    factories = {**MODELS, **DISCRETE_MODELS}
    rows = []
    for name in group_options("model"):
        kind = group_config("model", name).get("kind", name)
        rows.append([name, kind, _summary(factories[kind]) if kind in factories else "(kind not registered)"])
    return ["model", "kind", "description"], rows


def _dataset_rows() -> tuple[list[str], list[list[Any]]]:
    from diffbench.config import group_options, raw_node

    rows = [[name, _options_text(raw_node("dataset", name))] for name in group_options("dataset")]
    return ["dataset", "fields (??? = give it on the command line)"], rows


METRIC_INFO = {
    "fd": ("feature", "Frechet distance: `fid` on Inception features, else fd_<extractor> (alias: fid)"),
    "kid": ("feature", "kernel Inception distance (kid / kid_<extractor>), with kid_std"),
    "is": ("feature", "Inception score (needs Inception logits)"),
    "prdc": ("feature", "precision, recall, density, coverage"),
    "solver_error": ("paired", "rmse_ref: RMSE vs the same-noise reference solution (any sample shape)"),
    "lpips": ("paired", "lpips_ref: LPIPS vs the same-noise reference solution"),
}


def _metric_rows() -> tuple[list[str], list[list[Any]]]:
    from diffbench.config import group_options

    rows = [[name, kind, text] for name, (kind, text) in METRIC_INFO.items()]
    rows.append(["", "", f"metric sets (metrics=...): {', '.join(group_options('metrics'))}"])
    return ["metric", "kind", "result columns"], rows


@app.command()
def doctor() -> None:
    """Report installed packages, which assets resolve offline, config and cache folders, and devices.

    ```
    diffbench doctor
    ```
    """
    for section, items in _doctor().items():
        out.print(f"[bold]{section}[/]")
        for key, value in items.items():
            out.print(f"  {key}: {value}", highlight=False)


def _doctor() -> dict[str, dict[str, str]]:
    import torch

    from diffbench import results
    from diffbench.assetstore import cache_dir, resolve
    from diffbench.config import config_dirs
    from diffbench.errors import AssetMissing
    from diffbench.metrics.features import INCEPTION_WEIGHTS
    from diffbench.metrics.lpips import BACKBONES, backbone_asset

    report: dict[str, dict[str, str]] = {"packages": dict(results.versions()), "paths": {}, "devices": {}, "assets": {}}
    report["packages"]["git_sha"] = results.git_sha()
    try:
        report["paths"]["configs"] = ", ".join(str(d) for d in config_dirs())
    except UsageError as e:
        report["paths"]["configs"] = f"MISSING: {e}"
    report["paths"]["cache"] = str(cache_dir())
    assets = {"inception (FID)": INCEPTION_WEIGHTS, **{f"lpips {net}": backbone_asset(net) for net in BACKBONES}}
    for name, asset in assets.items():
        try:
            report["assets"][name] = str(resolve(asset))
        except AssetMissing as e:
            report["assets"][name] = f"missing: {e}"
    report["devices"]["host"] = results.device_name(torch.device("cpu"))
    report["devices"]["cuda"] = (", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
                                 if torch.cuda.is_available() else "not available")
    return report


# entry point ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs a command, turning every bad-input error into one line and exit 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from diffbench.interrupts import Terminated, signals_raise

    args = list(sys.argv[1:] if argv is None else argv)
    _ARGV[:] = ["diffbench", *args]
    try:
        with signals_raise():
            rv = app(args=args, prog_name="diffbench", standalone_mode=False)
    except Terminated as e:
        print(f"terminated by {e}: stopped without partial files; rerun the same command to resume "
              "(a sweep skips the points already in its table)", file=sys.stderr)
        return e.exit_code
    except StorageError as e:
        print(f"error: cannot write {e.filename}: {e.strerror}; free space or choose a writable out= / cache_dir=",
              file=sys.stderr)
        return e.exit_code
    except typer.Exit as e:
        return int(e.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except _CLICK_ERROR as e:
        return _fail(e.format_message())
    except UsageError as e:
        return _fail(str(e))
    except (HydraException, OmegaConfBaseException) as e:
        return _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    return rv if isinstance(rv, int) else 0


def _fail(message: str) -> int:
    """One line on stderr, exit code 2."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return UsageError.exit_code


if __name__ == "__main__":
    sys.exit(main())
