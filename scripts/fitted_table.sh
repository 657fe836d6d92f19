#!/usr/bin/env bash
# Fitted vs hand-made step grids on held-out noise: fit on calibration seed 1000 (32 samples), evaluate on
# seed 0 (N samples) against the RK45 reference; writes $OUT/ (rows) and $TABLE (markdown).
#   bash scripts/fitted_table.sh                                     (the image-shaped mixture)
#   MODEL="model=gmm model.dim=64" OUT=results/fitted/run_gmm64 TABLE=results/fitted/table_gmm64.md bash scripts/fitted_table.sh
# DIFFBENCH, N, MODEL, SOLVERS, NFE, METHODS, OUT, TABLE override the defaults below.
set -euo pipefail
DIFFBENCH=${DIFFBENCH:-diffbench}
OUT=${OUT:-results/fitted/run_image}
TABLE=${TABLE:-results/fitted/table_image.md}
COMMON="${MODEL:-model=image_mixture} solver=${SOLVERS:-dpmpp_2m,ipndm,unipc_bh2_o2} nfe=${NFE:-5,6,8,10}
        n_samples=${N:-128} device=cpu metrics.names=[solver_error] metrics.error_samples=${N:-128}"
METHODS=${METHODS:-gits,search,ld3,ays,oss,pas}
$DIFFBENCH fit $COMMON steps.method=$METHODS -q
$DIFFBENCH sweep $COMMON steps=karras,uniform_logsnr,quadratic out=$OUT --quiet --no-report
$DIFFBENCH sweep $COMMON steps=fitted steps.method=$METHODS out=$OUT --quiet --no-report
python3 - "$OUT" "$TABLE" <<'PY'
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
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
