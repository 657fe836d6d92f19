"""torchrun sweeps vs one process (issue 17): are the rows identical, and how much faster is it?

Runs the same sweep twice into separate tables sharing one cache: once as a single process, then under
`torchrun --nproc_per_node=K`. The first run builds the reference statistics, so both runs time only
their points (time_sampling_s + time_metrics_s of each row; the command's wall time is recorded too).
Every metric column (value and interval ends), the measured NFE and the config hash must be equal;
the JSON written to --out holds both commands, the per-point seconds, the throughput ratio and any
column that differs. Example (2 GPUs):

    python scripts/bench_multi_gpu.py --nproc 2 --out results/bench/multi_gpu_mnist.json -- \\
        model=diffbench-mnist dataset=mnist solver=dpmpp_2m nfe=10 n_samples=50000 device=cuda

Ranks sharing one GPU (a rows-identity check where only one GPU is lent): add --share-gpu (rank r runs
on cuda:(r mod GPUs)) and --backend gloo or nccl (NCCL refuses two ranks on one GPU).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from diffbench import results
from diffbench.columns import CONFIG_HASH, NFE_MEASURED, TIME_METRICS, TIME_SAMPLING
from diffbench.results import metric_columns


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Run a command; (wall seconds, exit code, the tail of its output)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, proc.returncode, (proc.stdout + proc.stderr)[-3000:]


def compared_columns(df: pd.DataFrame) -> list[str]:
    """The columns that must agree: metrics with their intervals, measured NFE, config hash."""
    ends = [f"{n}{end}" for n in metric_columns(df) for end in ("", "_lo", "_hi")]
    return [CONFIG_HASH, NFE_MEASURED, *(c for c in ends if c in df.columns)]


def differences(one: pd.DataFrame, many: pd.DataFrame) -> dict[str, list[Any]]:
    """Columns whose values differ between the two tables (rows matched by config hash)."""
    a, b = one.set_index(CONFIG_HASH).sort_index(), many.set_index(CONFIG_HASH).sort_index()
    if list(a.index) != list(b.index):
        return {CONFIG_HASH: [list(a.index), list(b.index)]}
    out = {}
    for col in compared_columns(one)[1:]:
        x, y = a.get(col), b.get(col)
        same = x is not None and y is not None and all(
            (isinstance(u, float) and isinstance(v, float) and math.isnan(u) and math.isnan(v)) or u == v
            for u, v in zip(x.tolist(), y.tolist()))
        if not same:
            out[col] = [None if x is None else x.tolist(), None if y is None else y.tolist()]
    return out


def point_seconds(df: pd.DataFrame) -> float:
    return float((df[TIME_SAMPLING] + df[TIME_METRICS]).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--share-gpu", action="store_true", help="let ranks share GPUs (rows-identity check only)")
    ap.add_argument("--backend", choices=["nccl", "gloo"], default="nccl")
    ap.add_argument("overrides", nargs="*", help="sweep overrides (after --)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="multi-gpu-"))
    env = {**os.environ, "DIFFBENCH_CACHE": str(work / "cache"), "DIFFBENCH_DIST_BACKEND": args.backend,
           "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
           # torchrun sets 1 thread per process; CPU kernels round differently with other thread counts
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if args.share_gpu:
        env["DIFFBENCH_SHARE_GPUS"] = "1"
    sweep = ["-m", "diffbench.cli", "sweep", *args.overrides, "--quiet", "--no-report"]
    one_cmd = [sys.executable, *sweep, f"out={work / 'one'}"]
    many_cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                *sweep, f"out={work / 'many'}"]
    report: dict[str, Any] = {"command": shlex.join([sys.executable, *sys.argv]), "nproc": args.nproc,
                              "backend": args.backend, "share_gpu": args.share_gpu}
    for name, cmd in (("one", one_cmd), ("many", many_cmd)):
        wall, code, tail = run(cmd, env)
        report[name] = {"command": shlex.join(cmd), "wall_s": round(wall, 2), "exit": code}
        if code != 0:
            report[name]["output_tail"] = tail
    if report["one"]["exit"] == 0 and report["many"]["exit"] == 0:
        one, many = results.load(work / "one"), results.load(work / "many")
        report["one"]["point_s"], report["many"]["point_s"] = point_seconds(one), point_seconds(many)
        report["throughput_ratio"] = round(report["one"]["point_s"] / report["many"]["point_s"], 3)
        report["compared_columns"] = compared_columns(one)
        report["differences"] = differences(one, many)
        report["rows_identical"] = not report["differences"]
        report["metrics"] = one[[c for c in compared_columns(one) if c in one]].to_dict("records")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k not in ("metrics",)}, indent=2, default=str))


if __name__ == "__main__":
    main()
