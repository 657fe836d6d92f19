#!/usr/bin/env bash
# Fitted (GITS) vs hand-made step grids on held-out noise: fit on calibration seed 1000 (32 samples),
# evaluate on seed 0 (128 samples) against the RK45 reference; writes results/fitted/table.md.
set -euo pipefail
OUT=${OUT:-results/fitted/run}
COMMON="model=image_mixture solver=dpmpp_2m,ipndm nfe=4,5,6,8 n_samples=128 metrics.names=[solver_error] metrics.error_samples=128"
diffbench fit $COMMON schedule.method=gits -q
diffbench sweep $COMMON schedule=karras,uniform_logsnr,quadratic out=$OUT --quiet --no-report
diffbench sweep $COMMON schedule=fitted schedule.method=gits out=$OUT --quiet --no-report
python3 - "$OUT" <<'PY'
import sys
import pandas as pd
from diffbench import results
df = results.load(sys.argv[1])
table = df.pivot_table(index=["solver.name", "nfe"], columns="schedule.name", values="rmse_ref").round(4)
fit = df[df["schedule.name"] == "fitted"].set_index(["solver.name", "nfe"])[["fit_seconds", "fit_nfe"]].round(1)
full = table.join(fit).reset_index()
lines = ["| " + " | ".join(map(str, full.columns)) + " |", "|" + "---|" * len(full.columns)]
lines += ["| " + " | ".join(map(str, row)) + " |" for row in full.itertuples(index=False)]
open("results/fitted/table.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
