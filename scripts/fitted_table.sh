#!/usr/bin/env bash
# Fitted (GITS, search) vs hand-made step grids on held-out noise: fit on calibration seed 1000 (32 samples),
# evaluate on seed 0 (N samples) against the RK45 reference; writes results/fitted/table.md.
#   bash scripts/fitted_table.sh            (DIFFBENCH=..., N=..., OUT=... override)
set -euo pipefail
DIFFBENCH=${DIFFBENCH:-diffbench}
OUT=${OUT:-results/fitted/run}
COMMON="model=image_mixture solver=dpmpp_2m,ipndm nfe=4,5,6,8 n_samples=${N:-256} device=cpu
        metrics.names=[solver_error] metrics.error_samples=${N:-256}"
$DIFFBENCH fit $COMMON steps.method=gits,search -q
$DIFFBENCH sweep $COMMON steps=karras,uniform_logsnr,quadratic out=$OUT --quiet --no-report
$DIFFBENCH sweep $COMMON steps=fitted steps.method=gits,search out=$OUT --quiet --no-report
python3 - "$OUT" <<'PY'
import sys

from diffbench import results

df = results.load(sys.argv[1])
fitted = df["steps.name"] == "fitted"
df["grid"] = df["steps.name"].where(~fitted, "fitted_" + df["steps.method"].astype(str))
table = df.pivot_table(index=["solver.name", "nfe"], columns="grid", values="rmse_ref")
cost = df[fitted].pivot_table(index=["solver.name", "nfe"], columns="grid", values=["fit_seconds", "fit_nfe"])
cost.columns = [f"{grid} {what}" for what, grid in cost.columns]
full = table.join(cost).reset_index()
cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
lines = ["| " + " | ".join(map(str, full.columns)) + " |", "|" + "---|" * len(full.columns)]
lines += ["| " + " | ".join(map(cell, row)) + " |" for row in full.itertuples(index=False)]
open("results/fitted/table.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
