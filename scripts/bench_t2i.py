"""Text-to-image throughput without weights: a random-weight Stable Diffusion pipeline through one sweep point.

Builds (once, into --folder) a random pipeline of SD 1.5's sizes (860M-param UNet, 512 px) or the tests'
tiny one, samples the shipped smoke prompts with CFG through `diffbench sweep`, and reports samples/s and
the share of the point's time spent sampling (UNet + solver), decoding (VAE) and in metrics, from the row's
time_sampling_s, time_decode_s and time_metrics_s. Prints a table and writes JSON (with this command) to --out.

    PYTHONPATH=. python scripts/bench_t2i.py --size sd15 --device cuda --dtype bfloat16 --compile \\
        --n-samples 512 --out results/bench/t2i_sd15_h200.json
    PYTHONPATH=. python scripts/bench_t2i.py --size tiny --device cpu --dtype float32 --n-samples 8 \\
        --batch-size 4 --out results/bench/t2i_tiny_cpu.json
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import pandas as pd

from diffbench import columns as col
from diffbench.cli import main
from tests.helpers.tiny_sd import save_random_sd15, save_tiny_pipeline

BUILDERS = {"sd15": save_random_sd15, "tiny": save_tiny_pipeline}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(BUILDERS), default="sd15")
    parser.add_argument("--folder", type=Path, help="where the random pipeline is (built there if missing)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", help="the UNet's precision")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument("--n-samples", type=int, default=512)
    parser.add_argument("--batch-size", default="auto")
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--solver", default="dpmpp_2m")
    parser.add_argument("--metrics", default="[]", help="metrics.names, e.g. [solver_error]")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def run_point(args: argparse.Namespace, folder: Path, work: Path) -> pd.Series:
    """One sweep point on the random pipeline; its row."""
    overrides = ["model=stable-diffusion-v1-5", f"model.path={folder}", f"model.dtype={args.dtype}",
                 f"model.compile={str(args.compile).lower()}", "conditions=prompts", "guidance=cfg",
                 "guidance.scale=7.5", f"metrics.names={args.metrics}", f"n_samples={args.n_samples}",
                 f"batch_size={args.batch_size}", f"device={args.device}", "dtype=float32",
                 f"sweep.params.solver={args.solver}", f"sweep.params.nfe={args.nfe}", "sweep.params.steps=karras",
                 "sweep.params.seed=0", f"out={work / 'out'}", f"cache_dir={work / 'cache'}"]
    code = main(["sweep", *overrides, "--quiet", "--no-report"])
    if code != 0:
        raise SystemExit(f"diffbench sweep failed (exit {code})")
    return pd.read_parquet(work / "out" / "results.parquet").iloc[0]


def summary(row: pd.Series, args: argparse.Namespace) -> dict[str, object]:
    """samples/s and the time shares of one row."""
    total = float(row[col.TIME_TOTAL])
    parts = {"sampling (UNet + solver)": row[col.TIME_SAMPLING], "decode (VAE)": row[col.TIME_DECODE],
             "metrics": row[col.TIME_METRICS] or 0.0}
    return {"command": shlex.join([sys.executable, *sys.argv]), "device": row[col.DEVICE_NAME],
            "size": args.size, "dtype": args.dtype, "compile": args.compile, "n_samples": args.n_samples,
            "nfe": args.nfe, "nfe_network": float(row[col.NFE_NETWORK]), "batch_size_used": int(row["batch_size_used"]),
            "samples_per_s": args.n_samples / total, "time_total_s": total,
            "time_text_encoder_s": float(row[col.TIME_TEXT_ENCODER]),
            "time_warmup_s": float(row["time_warmup_s"] or 0.0),  # compiling graphs at new shapes (in the total)
            "shares": {name: float(seconds) / total for name, seconds in parts.items()}}


def main_bench() -> None:
    args = parse()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or Path(scratch) / "pipeline"
        if not (folder / "model_index.json").is_file():
            BUILDERS[args.size](folder)
        result = summary(run_point(args, folder, Path(scratch)), args)
    print(f"{result['device']}: {result['samples_per_s']:.3f} samples/s ({args.size}, {args.dtype}, NFE {args.nfe} "
          f"with CFG, batch {result['batch_size_used']})")
    for name, share in result["shares"].items():  # type: ignore[attr-defined]
        print(f"  {name:<26} {100 * share:5.1f} %")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main_bench()
