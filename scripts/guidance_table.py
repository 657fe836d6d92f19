"""Solver error under guidance on the exact class-conditional mixture: RMSE vs the guided RK45 reference.

Runs `diffbench sweep` on model=class_gmm with balanced labels for CFG at several scales and the guidance
interval, and writes results/guidance/stability.{md,json} (RMSE per solver x NFE x rule, and the network
evaluations per sample each rule cost). Usage: python scripts/guidance_table.py [--out DIR] [--n N]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from diffbench import columns as col
from diffbench.engine.sweep import run_sweep

SOLVERS = "ddim,heun,dpmpp_2m,unipc_bh2_o2,dpmpp_3m,ipndm"
RULES = (["guidance=cfg", "guidance.scale=1,4,8"],
         ["guidance=interval", "guidance.scale=4,8", "guidance.sigma_lo=0.1", "guidance.sigma_hi=2.0"])


def table(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    """value per (solver, nfe) row and guidance rule column."""
    rule = frame["guidance.name"] + frame["guidance.scale"].map(lambda w: f" w={w:g}")
    return frame.assign(rule=rule).pivot_table(index=[col.SOLVER, col.NFE], columns="rule", values=value)


def markdown(frame: pd.DataFrame, digits: int) -> str:
    """A pivot table as a markdown table."""
    head = ["solver", "nfe", *frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (solver, nfe), row in frame.iterrows():
        lines.append("| " + " | ".join([solver, str(nfe), *(f"{v:.{digits}g}" for v in row)]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/guidance"))
    parser.add_argument("--n", type=int, default=256)
    args = parser.parse_args()
    base = ["model=class_gmm", "metrics=error_only", "conditions=balanced", f"solver={SOLVERS}", "nfe=10,20",
            f"n_samples={args.n}", "out=runs/guidance"]
    frame = pd.concat([run_sweep([*base, *rule], progress=False).frame() for rule in RULES])
    rmse, network = table(frame, "rmse_ref"), table(frame, col.NFE_NETWORK)
    args.out.mkdir(parents=True, exist_ok=True)
    text = (f"# Solver error under guidance (class_gmm, N={args.n})\n\nRMSE vs the guided RK45 reference "
            f"(same noise, same labels):\n\n{markdown(rmse, 3)}\n\nNetwork evaluations per sample:\n\n"
            f"{markdown(network, 4)}\n\nCommand: python scripts/guidance_table.py --n {args.n}\n")
    (args.out / "stability.md").write_text(text)
    (args.out / "stability.json").write_text(json.dumps(
        {"rmse_ref": json.loads(rmse.to_json(orient="split")),
         "nfe_network": json.loads(network.to_json(orient="split"))},
        indent=1))
    print(text)


if __name__ == "__main__":
    main()
