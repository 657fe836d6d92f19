"""Convert an NVlabs/edm network pickle (Karras et al. 2022) to TorchScript for diffbench's `edm` model kind.

NVlabs' pickles reference their ``torch_utils`` and ``dnnlib`` packages, so run this with their
source on the path:

    PYTHONPATH=/path/to/NVlabs/edm python scripts/export_edm.py edm-cifar10-32x32-uncond-vp.pkl \\
        ~/.cache/diffbench/weights/edm-cifar10-32x32-uncond-vp.pt

It traces ``net.model`` (the raw network F inside ``EDMPrecond``) in float32 (their attention's
custom autograd.Function swapped for the same plain computation, which TorchScript can save), checks the trace
against the original network on another batch size, and stores the sample shape and sigma_data in
the archive's ``diffbench.json``. Only unconditional EDM-preconditioned networks are supported.
"""
from __future__ import annotations

import argparse
import math
import pickle
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from diffbench.models._network import save_traced


class PlainAttention:
    """EDM's ``AttentionOp`` (softmax(q^T k / sqrt(c)) in float32) without its autograd.Function,
    which TorchScript cannot save; inference needs no custom backward."""

    @staticmethod
    def apply(q: Tensor, k: Tensor) -> Tensor:
        logits = torch.einsum("ncq,nck->nqk", q.float(), k.float() / math.sqrt(k.shape[1]))
        return logits.softmax(dim=2).to(q.dtype)


def use_plain_attention(model: nn.Module) -> None:
    """Point the modules that define NVlabs' network classes at PlainAttention (their AttentionOp global)."""
    for module in {sys.modules.get(type(m).__module__) for m in model.modules()}:
        if module is not None and hasattr(module, "AttentionOp"):
            module.AttentionOp = PlainAttention


class RawNetwork(nn.Module):
    """F(x_in, c_noise) without class labels: the call EDMPrecond makes for unconditional models."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        return self.model(x, c_noise, None)


def export(pkl: Path, out: Path) -> dict[str, object]:
    """Trace the pickle's EMA network to `out`; returns the fields written to diffbench.json."""
    with open(pkl, "rb") as f:
        net = pickle.load(f)["ema"]  # noqa: S301 (a network file the user chose; NVlabs' format)
    if type(net).__name__ != "EDMPrecond" or net.label_dim != 0:
        raise SystemExit(f"{pkl}: need an unconditional EDMPrecond network (got {type(net).__name__}, "
                         f"label_dim={getattr(net, 'label_dim', '?')})")
    raw = RawNetwork(net.model).float().eval().requires_grad_(False)
    use_plain_attention(raw)
    shape = [int(net.img_channels), int(net.img_resolution), int(net.img_resolution)]
    gen = torch.Generator().manual_seed(0)
    fields = {"shape": shape, "precond": {"kind": "edm", "sigma_data": float(net.sigma_data)},
              "meta": {"source": pkl.name, "exported_by": "scripts/export_edm.py"}}
    save_traced(raw, lambda batch: (torch.randn(batch, *shape, generator=gen), torch.randn(batch, generator=gen)),
                fields, out, str(pkl))
    return fields


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pkl", type=Path, help="NVlabs/edm network pickle")
    parser.add_argument("out", type=Path, help="TorchScript file to write")
    args = parser.parse_args(argv)
    fields = export(args.pkl, args.out)
    print(f"wrote {args.out}: shape {fields['shape']}, sigma_data {fields['precond']['sigma_data']}")


if __name__ == "__main__":
    main()
