"""Error vs an exact-as-possible reference for every registered solver on an analytic Gaussian mixture.

Every solver starts from the same noise (common random numbers) and is compared with the RK45
solution of the same probability-flow ODE at tight tolerance; the table reports RMSE per NFE.
At NFE 10 it also counts "mode switches": samples that end nearest a different mixture mean than
the reference, whose large errors can dominate the RMSE. Writes results/solver_error_table.{md,json}.

    python scripts/solver_error_table.py --n 256                       # 64-D GMM
    python scripts/solver_error_table.py --n 256 --image 3 8 8 --stds 0.1 0.1   # image-shaped mixture
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from diffbench.errors import UsageError
from diffbench.models.analytic import MixtureDenoiser, image_mixture
from diffbench.sampling import make_plan, sample_batch
from diffbench.solvers import SOLVERS

NFES = (4, 5, 6, 8, 10, 15, 20)


def gmm64(std_lo: float, std_hi: float, seed: int = 0) -> MixtureDenoiser:
    """8 components in 64-D, means ~ N(0, 0.5^2 I), stds uniform in [std_lo, std_hi]: multimodal, nonlinear."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(8, 64, generator=g, dtype=torch.float64) * 0.5
    stds = torch.rand(8, generator=g, dtype=torch.float64) * (std_hi - std_lo) + std_lo
    return MixtureDenoiser(means, stds=stds)


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def mode_switches(model: MixtureDenoiser, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per sample: does x end nearest a different component mean than the reference does?"""
    nearest = [torch.cdist(v.reshape(len(v), -1), model.means).argmin(1) for v in (x, ref)]
    return nearest[0] != nearest[1]


def make_model(args: argparse.Namespace) -> tuple[MixtureDenoiser, str]:
    """The mixture and its description: 64-D GMM, or image_mixture (std = the --stds LO) with --image C H W."""
    if args.image:
        shape = tuple(args.image)
        return image_mixture(shape, args.components, args.stds[0]), \
            f"image_mixture({shape}, {args.components} components, std {args.stds[0]}, seed 0)"
    return gmm64(*args.stds), f"MixtureDenoiser(8 components, 64-D, stds in {list(args.stds)}, seed 0)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512, help="samples (same noise for every solver)")
    ap.add_argument("--schedule", default="karras", help="step schedule for every solver")
    ap.add_argument("--rtol", type=float, default=1e-8, help="reference RK45 tolerance")
    ap.add_argument("--stds", type=float, nargs=2, default=(0.3, 0.6), metavar=("LO", "HI"),
                    help="component std range: small values make the denoiser sharper (harder)")
    ap.add_argument("--image", type=int, nargs=3, metavar=("C", "H", "W"),
                    help="use the image-shaped mixture (diffbench/configs/model/image_mixture.yaml) of this shape")
    ap.add_argument("--components", type=int, default=8, help="components of the image-shaped mixture")
    ap.add_argument("--out", default="results/solver_error_table")
    args = ap.parse_args()
    (model, args.model), idx = make_model(args), range(args.n)
    shape = model.shape
    span = dict(step_grid=args.schedule, final_zero=True)
    ref_plan = make_plan("rk45", 1, model.schedule, solver_options={"rtol": args.rtol, "atol": args.rtol},
                         final_zero=True)
    ref = sample_batch(model, ref_plan, idx, seed=0, shape=shape)
    rows = []
    for name in sorted(n for n, s in SOLVERS.items() if not s.adaptive and not s.is_stochastic()):
        row = {"solver": name, "order": SOLVERS[name].order}
        for nfe in NFES:
            try:
                plan = make_plan(name, nfe, model.schedule, **span)
            except UsageError:
                row[str(nfe)] = None
                continue
            start = time.perf_counter()
            out = sample_batch(model, plan, idx, seed=0, shape=shape)
            row[str(nfe)] = rmse(out.x, ref.x) if torch.isfinite(out.x).all() else math.inf
            row[f"t{nfe}"] = time.perf_counter() - start
            if nfe == 10:
                switched = mode_switches(model, out.x, ref.x)
                row["switches10"] = int(switched.sum())
                row["kept10"] = rmse(out.x[~switched], ref.x[~switched]) if (~switched).any() else None
        rows.append(row)
    write(rows, args, ref.nfe_measured)


def ratio_line(rows: list[dict], key: str, what: str) -> str:
    """How much better than DDIM the best order>=2 solver is at NFE 10, by the given column."""
    ddim = next(r[key] for r in rows if r["solver"] == "ddim")
    best = min((r[key], r["solver"]) for r in rows if r["order"] >= 2 and r.get(key) is not None)
    return (f"NFE 10, {what}: best order>=2 solver {best[1]} {best[0]:.2e} vs ddim {ddim:.2e}: "
            f"{ddim / best[0]:.1f}x better")


def write(rows: list[dict], args: argparse.Namespace, ref_nfe: int) -> None:
    """Print the table and save it as markdown and JSON with the command and set-up."""
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    head = "| solver | order | " + " | ".join(f"NFE {n}" for n in NFES) + " | switches @10 | RMSE @10 w/o switches |"
    lines = [head, "|" + "---|" * (len(NFES) + 4)]
    fmt = lambda v: "—" if v is None else f"{v:.2e}"  # noqa: E731
    for r in rows:
        cells = [fmt(r[str(n)]) for n in NFES] + [str(r.get("switches10", "—")), fmt(r.get("kept10"))]
        lines.append(f"| {r['solver']} | {r['order']} | " + " | ".join(cells) + " |")
    verdict = "\n".join(ratio_line(rows, key, what) for key, what in
                        (("10", "RMSE"), ("kept10", "RMSE without mode-switched samples")))
    table = "\n".join(lines)
    print(table + "\n\n" + verdict)
    meta = {"command": command, "n_samples": args.n, "step_grid": args.schedule, "final_zero": True,
            "model": args.model, "verdict": verdict, "reference": f"rk45 rtol=atol={args.rtol}",
            "reference_nfe": ref_nfe, "torch": torch.__version__, "machine": platform.processor() or platform.machine()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = (f"# Solver error vs RK45 reference (RMSE, same noise)\n\nCommand: `{command}`\n\n"
          f"Model: {meta['model']}; {args.n} samples; step schedule `{args.schedule}`, last step to 0; "
          f"reference {meta['reference']} ({ref_nfe} NFE). '—': the solver cannot use exactly that NFE.\n\n"
          f"{table}\n\n{verdict}\n")
    out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
