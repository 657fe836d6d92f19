"""How many bootstrap replicates make the FD interval's width stable run to run (issue 21).

A small case: random_conv features (224-d) of smooth random 32x32 images, n_gen generated rows
(shifted by 0.1) against n_ref reference rows. For each n_boot the FD interval is computed with
`seeds` bootstrap seeds; the table gives the mean width and its coefficient of variation (CV)
across seeds, next to the standard deviation's theoretical 1 / sqrt(2 (n_boot - 1)).
With --runs R it also checks calibration against R independent generated sets (seeds 100..): the FD's spread
across runs vs the mean bootstrap std, and how often each run's interval covers the mean FD over runs.

    PYTHONPATH=$PWD python3 scripts/interval_width.py --out results/interval_width.json
    PYTHONPATH=$PWD python3 scripts/interval_width.py --n-boot 10 20 50 --seeds 2 --runs 40 \
        --out results/intervals/calibration.json
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffbench.data import to_uint8
from diffbench.metrics import FrechetTarget, fd_interval, make_extractor


def _features(n: int, shift: float, seed: int) -> np.ndarray:
    """random_conv features of n smooth random images (8x8 noise upsampled to 32x32), offset by shift."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(n, 3, 8, 8, generator=g), size=32, mode="bilinear") * 0.5 + shift
    return make_extractor("random_conv")(to_uint8(x.clamp(-1, 1))).features.double().numpy()


def main() -> None:
    """Print (and optionally write) the width table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--n-ref", type=int, default=512)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--n-boot", type=int, nargs="+", default=[20, 50, 100, 200, 400])
    ap.add_argument("--runs", type=int, default=0, help="independent generated sets for the calibration check")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    ref, gen = _features(args.n_ref, 0.0, 1), _features(args.n_gen, 0.1, 2)
    target = FrechetTarget(ref.mean(0), np.cov(ref, rowvar=False))
    rows = []
    print(f"FD = {target.distance_to_rows(gen):.4f}  (n_gen {args.n_gen}, n_ref {args.n_ref}, {args.seeds} seeds)")
    print(f"{'n_boot':>6} {'mean width':>11} {'CV':>6} {'theory':>7} {'s/replicate':>12}")
    for n_boot in args.n_boot:
        start = time.perf_counter()
        widths = np.array([(iv.high - iv.low) for iv in (fd_interval(gen, target, n_boot, 0.95, seed)
                                                           for seed in range(args.seeds))])
        per_rep = (time.perf_counter() - start) / (args.seeds * n_boot)
        cv, theory = widths.std(ddof=1) / widths.mean(), 1 / math.sqrt(2 * (n_boot - 1))
        rows.append({"n_boot": n_boot, "mean_width": widths.mean(), "cv": cv, "theory_cv": theory,
                     "seconds_per_replicate": per_rep})
        print(f"{n_boot:>6} {widths.mean():>11.4f} {cv:>6.3f} {theory:>7.3f} {per_rep:>12.4f}")
    calibration = _calibration(target, args) if args.runs else []
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                        "calibration": calibration}, indent=1))


def _calibration(target: FrechetTarget, args: argparse.Namespace) -> list[dict[str, float]]:
    """Per n_boot: the FD's std over independent runs, the mean bootstrap std, and the intervals' coverage of the
    mean FD over runs (nominal 0.95; the bootstrap keeps the reference fixed, as the runs do)."""
    runs = [_features(args.n_gen, 0.1, 100 + r) for r in range(args.runs)]
    fds = np.array([target.distance_to_rows(gen) for gen in runs])
    print(f"calibration over {args.runs} runs: FD mean {fds.mean():.4f}, std across runs {fds.std(ddof=1):.4f}")
    print(f"{'n_boot':>6} {'boot std':>9} {'ratio':>6} {'coverage':>9}")
    out = []
    for n_boot in args.n_boot:
        ivs = [fd_interval(gen, target, n_boot, 0.95, r) for r, gen in enumerate(runs)]
        std = float(np.mean([iv.std for iv in ivs]))
        coverage = float(np.mean([iv.low <= fds.mean() <= iv.high for iv in ivs]))
        out.append({"n_boot": n_boot, "runs": args.runs, "fd_std_across_runs": float(fds.std(ddof=1)),
                    "mean_bootstrap_std": std, "ratio": std / float(fds.std(ddof=1)), "coverage_95": coverage})
        print(f"{n_boot:>6} {std:>9.4f} {out[-1]['ratio']:>6.2f} {coverage:>9.2f}")
    return out


if __name__ == "__main__":
    main()
