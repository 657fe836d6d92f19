"""Convert an NVlabs/edm2 network pickle (Karras et al. 2024) to TorchScript for diffbench's `edm2` model kind.

NVlabs' pickles reference their ``torch_utils`` and ``dnnlib`` packages, so run this with their source on the path:

    PYTHONPATH=/path/to/NVlabs/edm2 python scripts/export_edm2.py edm2-img512-s-2147483-0.130.pkl \\
        ~/.cache/diffbench/weights/edm2-img512-s-fid.pt

It traces ``ema.unet`` (the raw network F inside their ``Precond``) in float32 as F(x_in, c_noise, one_hot),
checks the trace against the original on another batch size, and stores in the archive's ``diffbench.json``
the latent shape, sigma_data, the label count and the pickle's latent standardisation (``encoder``: per-channel
scale and bias of their StabilityVAEEncoder; pixel-space pickles are refused).
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffbench.models._network import save_traced


class RawNetwork(nn.Module):
    """F(x_in, c_noise, one_hot): their UNet called as Precond calls it (class_labels None when it takes none)."""

    def __init__(self, unet: nn.Module, labels: int):
        super().__init__()
        self.unet, self.labels = unet, labels

    def forward(self, x: Tensor, c_noise: Tensor, one_hot: Tensor) -> Tensor:
        return self.unet(x, c_noise, one_hot if self.labels else None)


def latent_fields(data: dict[str, Any], pkl: Path) -> dict[str, Any]:
    """The encoder's per-channel scale and bias (final latents = raw * scale + bias) and its VAE's name."""
    encoder = data.get("encoder")
    if encoder is None or not hasattr(encoder, "scale"):
        raise SystemExit(f"{pkl}: no StabilityVAEEncoder in the pickle; only latent EDM2 networks are supported")
    return {"scale": [float(v) for v in encoder.scale], "bias": [float(v) for v in encoder.bias],
            "vae": str(encoder.vae_name)}


def export(pkl: Path, out: Path) -> dict[str, Any]:
    """Trace the pickle's EMA network to `out`; returns the fields written to diffbench.json."""
    with open(pkl, "rb") as f:
        data = pickle.load(f)  # noqa: S301 (a network file the user chose; NVlabs' format)
    net = data["ema"]
    if type(net).__name__ != "Precond":
        raise SystemExit(f"{pkl}: need an EDM2 Precond network (got {type(net).__name__})")
    labels = int(net.label_dim)
    raw = RawNetwork(net.unet, labels).float().eval().requires_grad_(False)
    shape = [int(net.img_channels), int(net.img_resolution), int(net.img_resolution)]
    gen = torch.Generator().manual_seed(0)

    def inputs(batch: int) -> tuple[Tensor, Tensor, Tensor]:
        one_hot = torch.eye(max(labels, 1))[torch.randint(max(labels, 1), (batch,), generator=gen)][:, :labels]
        return torch.randn(batch, *shape, generator=gen), torch.randn(batch, generator=gen), one_hot

    fields = {"shape": shape, "precond": {"kind": "edm2", "sigma_data": float(net.sigma_data), "labels": labels,
                                          "latents": latent_fields(data, pkl)},
              "meta": {"source": pkl.name, "exported_by": "scripts/export_edm2.py"}}
    save_traced(raw, inputs, fields, out, str(pkl))
    return fields


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pkl", type=Path, help="NVlabs/edm2 network pickle")
    parser.add_argument("out", type=Path, help="TorchScript file to write")
    args = parser.parse_args(argv)
    fields = export(args.pkl, args.out)
    print(f"wrote {args.out}: shape {fields['shape']}, {fields['precond']['labels']} labels, "
          f"VAE {fields['precond']['latents']['vae']}")


if __name__ == "__main__":
    main()
