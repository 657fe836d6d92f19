"""FID's network three ways (TorchScript graph, nn.Module, compiled module) and the FD interval's cost.

- speed: Inception's pure forward time per image (preprocessed 299 px input, best of --sizes) for each
  variant: implementation x precision (fp32, tf32, fp16/bf16 channels-last); compiled variants (with
  --compile) under a wall-clock cap (--compile-cap s), their warm-up/compile seconds reported apart.
- fid: each variant's features of 2n real images (MNIST test digits by default); FID of the first n
  vs the next n, its difference from the TorchScript float32 FID, and the max abs feature difference.
- interval: seconds per FD bootstrap replicate at d = --dim (synthetic rows), the direct path
  (FrechetTarget.distance_to_rows on the resampled rows) vs FrechetTarget.resampled_distances, and
  their largest difference.

Prints one table per section and writes JSON (with this command) to --out. Examples:

    python scripts/bench_inception.py --device cuda --compile --out results/bench/inception_h200.json
    python scripts/bench_inception.py --device cpu --sizes 2 --fid-n 4 --variants torchscript-fp32 \\
        module-fp32 module-bf16-cl --boot-n 1024 4096 --n-boot 3 --out results/bench/inception_cpu.json
"""
from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffbench import results
from diffbench.data import NpzDataset
from diffbench.metrics.features import FeatureExtractor, make_extractor
from diffbench.metrics.fid import FrechetTarget, frechet_distance
from diffbench.metrics.stats import FeatureStats
from diffbench.sampling import set_tf32

VARIANTS = {  # name -> (extractor, dtype, channels_last, tf32)
    "torchscript-fp32": ("inception", "float32", False, False),
    "torchscript-tf32": ("inception", "float32", False, True),
    "torchscript-fp16-cl": ("inception", "float16", True, False),
    "module-fp32": ("inception_module", "float32", False, False),
    "module-tf32": ("inception_module", "float32", False, True),
    "module-fp16-cl": ("inception_module", "float16", True, False),
    "module-bf16-cl": ("inception_module", "bfloat16", True, False),
    "compiled-tf32": ("inception_compiled", "float32", False, True),
    "compiled-fp16-cl": ("inception_compiled", "float16", True, False),
    "compiled-bf16-cl": ("inception_compiled", "bfloat16", True, False),
}
REFERENCE = "torchscript-fp32"


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@contextmanager
def time_cap(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in the main thread after `seconds` (0: no cap); compilation stops at its next Python step."""
    def expire(*_: Any) -> None:
        raise TimeoutError(f"over the {seconds} s cap")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def build(name: str, args: argparse.Namespace) -> FeatureExtractor:
    """The variant's extractor (TF32 set as the variant says)."""
    extractor, dtype, channels_last, tf32 = VARIANTS[name]
    set_tf32(tf32)
    return make_extractor(extractor, weights=args.weights, resize_mode="clean", device=args.device, dtype=dtype,
                          channels_last=channels_last)


def per_image(run: Callable[[int], Any], sizes: list[int], device: str, repeats: int) -> tuple[int, float, float]:
    """(best batch size, seconds per image, seconds of the first call of every size: warm-up/compilation)."""
    best, warmup = (0, float("inf")), 0.0
    for size in sizes:
        start = time.perf_counter()
        run(size)
        sync(device)
        warmup += time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(repeats):
            run(size)
        sync(device)
        best = min(best, (size, (time.perf_counter() - start) / (repeats * size)), key=lambda b: b[1])
    return best[0], best[1], warmup


def speed(args: argparse.Namespace, variants: list[str]) -> list[dict[str, Any]]:
    """Forward time per image of each variant on random preprocessed pixels."""
    pixels = torch.rand(max(args.sizes), 3, 299, 299, device=args.device) * 255
    rows = []
    for name in variants:
        row: dict[str, Any] = {"variant": name}
        try:
            with time_cap(args.compile_cap if "compiled" in name else 0), torch.inference_mode():
                forward = build(name, args).forward
                size, seconds, warmup = per_image(lambda n, f=forward: f(pixels[:n]), args.sizes, args.device,
                                                  args.repeats)
            row.update(best_batch=size, us_per_image=seconds * 1e6, warmup_s=warmup)
        except (TimeoutError, RuntimeError) as err:
            row["error"] = str(err).splitlines()[0]
        rows.append(row)
        print(f"{name:>20} " + (f"{row['us_per_image']:>12.1f} us/image  batch {row['best_batch']:>4}  "
                                f"warm-up {row['warmup_s']:.1f} s" if "error" not in row else row["error"]), flush=True)
    return rows


def _stats(features: torch.Tensor) -> FeatureStats:
    x = features.double().cpu().numpy()
    return FeatureStats(len(x), x.mean(0), np.cov(x.T), x)


def fid_effect(args: argparse.Namespace, variants: list[str]) -> list[dict[str, Any]]:
    """FID of images [0, n) vs [n, 2n) with each variant's features, against the TorchScript float32 one."""
    images = next(NpzDataset(args.npz, key=args.key).batches(2 * args.fid_n))
    features, rows = {}, []
    for name in [REFERENCE, *(v for v in variants if v != REFERENCE)]:
        try:
            with time_cap(args.compile_cap if "compiled" in name else 0):
                extractor = build(name, args)
                features[name] = torch.cat([extractor(part).features.cpu() for part in images.split(args.batch)])
        except (TimeoutError, RuntimeError) as err:
            rows.append({"variant": name, "error": str(err).splitlines()[0]})
            continue
        f = features[name]
        fid = frechet_distance(_stats(f[:args.fid_n]), _stats(f[args.fid_n:]))
        rows.append({"variant": name, "fid": fid, "max_abs_feature_diff": float((f - features[REFERENCE]).abs().max())})
    base = rows[0]["fid"]
    for row in rows:
        if "fid" in row:
            row["fid_diff"] = row["fid"] - base
            print(f"{row['variant']:>20} FID {row['fid']:>12.6f}  diff {row['fid_diff']:>+10.2e}  "
                  f"max |feature diff| {row['max_abs_feature_diff']:.2e}", flush=True)
    return rows


def interval_cost(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Seconds per FD bootstrap replicate, direct vs through the reference's root factor, at d = args.dim."""
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((args.dim, args.dim)) / np.sqrt(args.dim)
    ref = rng.standard_normal((2 * args.dim, args.dim)) @ mix
    target = FrechetTarget(ref.mean(0), np.cov(ref.T), args.device)
    _ = target.sqrt, target.root  # the reference's eigh, paid once per statistics (not timed per replicate)
    out = []
    for n in args.boot_n:
        rows = torch.as_tensor(rng.standard_normal((n, args.dim)) @ mix * 1.1 + 0.05, device=args.device)
        draws = [rng.integers(0, n, n) for _ in range(args.n_boot)]
        start = time.perf_counter()
        direct = [target.distance_to_rows(rows[torch.as_tensor(idx, device=rows.device)]) for idx in draws]
        sync(args.device)
        direct_s = (time.perf_counter() - start) / args.n_boot
        start = time.perf_counter()
        fast = target.resampled_distances(rows, draws)
        sync(args.device)
        fast_s = (time.perf_counter() - start) / args.n_boot
        out.append({"n": n, "d": args.dim, "n_boot": args.n_boot, "direct_s_per_replicate": direct_s,
                    "fast_s_per_replicate": fast_s, "speedup": direct_s / fast_s,
                    "max_abs_diff": float(np.abs(np.array(direct) - fast).max()), "fd": float(np.mean(direct))})
        r = out[-1]
        print(f"n {n:>6} d {args.dim}: direct {direct_s:8.3f} s  fast {fast_s:8.3f} s  x{r['speedup']:.2f}  "
              f"max |diff| {r['max_abs_diff']:.1e} (FD ~{r['fd']:.1f})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--weights", help="Inception TorchScript file (default: resolved as diffbench does)")
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS),
                    help="default: every non-compiled variant (CUDA) or the float32/bfloat16 ones (CPU)")
    ap.add_argument("--compile", action="store_true", help="add the compiled variants")
    ap.add_argument("--compile-cap", type=int, default=300, help="seconds allowed per compiled variant")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="batch sizes timed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fid-n", type=int, default=5000, help="images per side of the FID (0: skip)")
    ap.add_argument("--batch", type=int, default=256, help="images per extractor call in the FID section")
    ap.add_argument("--npz", default="mnist_test.npz", help="images for the FID section (a diffbench asset name)")
    ap.add_argument("--key", default="images")
    ap.add_argument("--dim", type=int, default=2048, help="feature dimension of the interval section")
    ap.add_argument("--boot-n", type=int, nargs="*", default=[1024, 4096, 50000],
                    help="generated rows per interval case (none: skip)")
    ap.add_argument("--n-boot", type=int, default=5, help="replicates timed per interval case")
    ap.add_argument("--out", required=True, help="JSON file to write")
    args = ap.parse_args()
    cuda = torch.device(args.device).type == "cuda"
    variants = args.variants or ([v for v in VARIANTS if "compiled" not in v] if cuda
                                 else ["torchscript-fp32", "module-fp32", "module-bf16-cl"])
    variants += [v for v in VARIANTS if args.compile and "compiled" in v and v not in variants]
    report = {"speed": speed(args, variants),
              "fid": fid_effect(args, variants) if args.fid_n else [],
              "interval": interval_cost(args) if args.boot_n else []}
    meta = {**results.provenance(torch.device(args.device)), "threads": torch.get_num_threads(),
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv)}
    text = json.dumps({"meta": meta, "result": report}, indent=1, default=str)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
