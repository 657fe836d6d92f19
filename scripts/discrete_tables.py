"""Discrete samplers on the exact Markov-chain model: convergence in steps, and float32 vs float64 sampling.

convergence: every sampler x steps on an enumerable chain (e.g. V=3, L=4: 81 sequences): exact TV /
KL(empirical || true), per-position marginal TV, |NLL - H|, chi-square p-values
against the true distribution and against first-hitting samples (disjoint sample indices), and the
passes per sample (the cached ancestral sampler gives the ancestral sampler's very samples).
precision: the cached ancestral and first-hitting samplers with float32 vs float64 Gumbel-max
categorical sampling on the same noise (a Dirichlet(0.1) chain over V=32): unigram entropy and NLL as steps grow,
how many samples float32 changes (same noise, so only the truncation changes one) and the mean log p gained by them.
Writes results/discrete/<table>.{md,json} with the command.

    python scripts/discrete_tables.py convergence --vocab 3 --length 4 --n 20000 --steps 2 4 8 16 32 64 128 256
    python scripts/discrete_tables.py precision --vocab 32 --length 1 --n 4096 --steps 100 1000 3000
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from diffbench.discrete import SAMPLERS, make_model
from diffbench.discrete.markov import MarkovChain
from diffbench.discrete.metrics import METRICS, TokenQuality, chi_square_fit, chi_square_two_sample
from diffbench.discrete.sampling import make_plan, sample_tokens

RARE = 1e-3  # a token this unlikely is revealed with probability < 6e-8 per step at 10^4 steps: fp32 truncates it
CONVERGENCE = ("mdlm_ancestral_cache", "tau_leaping", "remdm", "llada_confidence", "entropy_unmask", "first_hitting")


def point(model: MarkovChain, name: str, steps: int, n: int, offset: int, options: dict[str, Any]) -> dict[str, Any]:
    """Sample n sequences (indices offset..offset+n-1) and measure them; None fields where not applicable."""
    plan = make_plan(SAMPLERS[name], steps, model.length, options)
    start = time.perf_counter()
    batch = sample_tokens(model, plan, range(offset, offset + n), seed=0)
    seconds = time.perf_counter() - start
    quality = TokenQuality(model, batch.tokens)
    names = METRICS if model.enumerable else [m for m in METRICS if m not in ("tv", "kl")]
    row = {"sampler": name, **options, "steps": steps, "nfe_per_sample": float(batch.passes.double().mean()),
           "seconds": round(seconds, 2), **{k: v.value for k, v in quality.values(names, 0, 0.95).items()},
           **quality.extra()}
    return row | {"_tokens": batch.tokens}


def convergence(args: argparse.Namespace) -> list[dict[str, Any]]:
    model = make_model("markov_chain", {"vocab": args.vocab, "length": args.length}).to(args.device)
    p = model.probabilities()
    reference = model.sequence_index(point(model, "first_hitting", model.length, args.n, args.n, {})["_tokens"])
    rows = []
    for name in CONVERGENCE:
        for steps in sorted({*args.steps, model.length}):
            spec = SAMPLERS[name]
            if (spec.one_pass_per_token and steps != model.length) or (spec.at_most_length and steps > model.length):
                continue
            row = point(model, name, steps, args.n, 0, {})
            seq = model.sequence_index(row.pop("_tokens"))
            rows.append(row | {"p_fit": chi_square_fit(seq.cpu(), p.cpu()),
                               "p_vs_first_hitting": chi_square_two_sample(seq.cpu(), reference.cpu(), len(p))})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def precision(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows also count rare tokens (true unigram probability < RARE) against their expected count."""
    model = make_model("markov_chain", {"vocab": args.vocab, "length": args.length, "concentration": 0.1})
    model = model.to(args.device)
    rare = model.marginals().mean(0) < RARE
    expected = float(model.marginals()[:, rare].sum()) * args.n
    rows = []
    for name, steps_list in (("first_hitting", (model.length,)), ("mdlm_ancestral_cache", args.steps)):
        for steps in steps_list:
            exact = point(model, name, steps, args.n, 0, {"precision": "float64"})
            truncated = point(model, name, steps, args.n, 0, {"precision": "float32"})
            changed = (exact["_tokens"] != truncated["_tokens"]).any(1)  # same noise: only truncation changes a sample
            gain = model.log_prob(truncated["_tokens"][changed]) - model.log_prob(exact["_tokens"][changed])
            for row in (exact, truncated):
                tokens = row.pop("_tokens")
                rows.append(row | {"rare_tokens": int(rare[tokens].sum()), "rare_expected": expected,
                                   "changed_vs_float64": int(changed.sum()),
                                   "logp_gain_of_changed": float(gain.mean()) if len(gain) else 0.0})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], command: str, device: str) -> str:
    """The rows as a markdown table, with the command that made them."""
    keys = [k for k in rows[0] if k not in ("entropy_true", "unigram_entropy_true")]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"Command: `{command}` (device: {device}); true sequence entropy {rows[0]['entropy_true']:.4f} nats, "
             f"true unigram entropy {rows[0]['unigram_entropy_true']:.4f} nats.", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=("convergence", "precision"))
    parser.add_argument("--n", type=int, default=20_000, help="samples per point")
    parser.add_argument("--vocab", type=int, default=3)
    parser.add_argument("--length", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64, 128, 256])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("results/discrete"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (small tensors: 1 avoids contention)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {"convergence": convergence, "precision": precision}[args.table](args)
    command = "python " + shlex.join(sys.argv)
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "device": device, "rows": rows}
    (args.out / f"{args.table}.json").write_text(json.dumps(record, indent=1))
    (args.out / f"{args.table}.md").write_text(markdown(rows, command, device))


if __name__ == "__main__":
    main()
