"""EDM2 latent networks (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models").

EDM2's ImageNet-512 models run EDM's preconditioning (models/edm.py) on standardised latents of Stability's
sd-vae-ft-mse VAE: latents = raw * scale + bias per channel (their StabilityVAEEncoder, raw mean
[5.81, 3.25, 0.12, -2.15], raw std [4.17, 4.62, 3.71, 3.28], final std 0.5), decoded as
vae.decode((x - bias) / scale) into [0, 1] pixels. Class labels are one-hot; NO_LABEL feeds the zero vector
(their Precond's class_labels=None). EDM2 guides with separate networks (an unconditional XS network for CFG,
a smaller or less-trained one for autoguidance): use guidance=autoguidance with an edm2 guide config.

NVlabs ship pickles that need their source to load; convert once (scripts/export_edm2.py):
``PYTHONPATH=/path/to/NVlabs/edm2 python scripts/export_edm2.py edm2-img512-s-2147483-0.130.pkl OUT.pt``,
a TorchScript archive of the raw network F(x_in, c_noise, one_hot) whose ``diffbench.json`` records the shape,
sigma_data, label count and the latent standardisation.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812

from diffbench.errors import check
from diffbench.models._latent import LatentDecode, VaeDecoder, diffusers_class, load_part
from diffbench.models._network import TorchNet, checkpoint_shape, load_network, parse_dtype, precond_of
from diffbench.models.base import ConditionalDenoiser, expand_as
from diffbench.models.diffusers import local_folder
from diffbench.models.edm import edm_coefficients
from diffbench.models.registry import register_model
from diffbench.schedules import EDM

EXPECTED = "a TorchScript archive written by scripts/export_edm2.py from an NVlabs/edm2 pickle"
VAE_EXPECTED = "an AutoencoderKL folder (config.json + weights) or hub id, e.g. stabilityai/sd-vae-ft-mse"


class Edm2Decoder(VaeDecoder):
    """EDM2's decode: undo the per-channel standardisation, decode, map [0, 1] pixels to [-1, 1]."""

    def __init__(self, vae: Any, scale: Sequence[float], bias: Sequence[float], dtype: torch.dtype = torch.float32):
        super().__init__(vae, dtype)
        self.scale, self.bias = torch.tensor(scale), torch.tensor(bias)

    def to_vae(self, latents: Tensor) -> Tensor:
        scale, bias = (v.to(latents).reshape(1, -1, 1, 1) for v in (self.scale, self.bias))
        return (latents - bias) / scale

    def to_images(self, decoded: Tensor) -> Tensor:
        return decoded * 2 - 1


class Edm2Denoiser(LatentDecode, ConditionalDenoiser):
    """D(x, sigma, labels) = c_skip x + c_out F(c_in x, c_noise, one_hot(labels)); `decode` runs EDM2's VAE decode."""

    def __init__(self, net: Callable[..., Tensor], sigma_data: float, labels: int, classes: int,
                 shape: Sequence[int], decoder: Callable[[Tensor], Tensor] | None = None, source: str = ""):
        self.net, self.sigma_data, self.labels, self.classes = net, float(sigma_data), labels, classes
        self.schedule, self.shape, self.decoder, self.source = EDM(), tuple(shape), decoder, source

    def denoise_cond(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        f_x = self.net(expand_as(c_in, x) * x, c_noise, one_hot(labels, self.labels).to(x.dtype))
        return expand_as(c_skip, x) * x + expand_as(c_out, x) * f_x

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "model_kind": "edm2", "model_path": self.source, "sigma_data": self.sigma_data,
                "classes": self.classes}


def one_hot(labels: Tensor, count: int) -> Tensor:
    """[B, count] one-hot rows; NO_LABEL rows (and every row of an unconditional network, count 0) are zero."""
    if count == 0:
        return labels.new_zeros(len(labels), 0)
    return F.one_hot(labels.clamp(min=0), count) * (labels >= 0)[:, None]


@register_model("edm2")
def edm2(path: str = "", vae: str = "stabilityai/sd-vae-ft-mse", classes: int | None = None,
         dtype: str = "float32", vae_dtype: str = "float32", compile: bool | str = False) -> Edm2Denoiser:
    """An EDM2 network converted by scripts/export_edm2.py, with the VAE its latents were standardised for.

    Args:
        path: the converted network file, or a name under diffbench/assets/ or the cache's weights/.
        vae: the AutoencoderKL folder or hub id (EDM2: stabilityai/sd-vae-ft-mse).
        classes: the labels the model accepts (default: the network's); an unconditional network may set the
            guided model's count to serve as its guide (it ignores the labels).
        dtype: the precision the network runs in (float32, float16, bfloat16).
        vae_dtype: the precision the VAE decodes in.
        compile: torch.compile the network: false, true or a mode.
    """
    module, fields = load_network(path, EXPECTED)
    precond = precond_of(fields, "edm2", "an EDM2 network", path)
    labels = int(precond.get("labels", 0))
    check(classes is None or labels in (0, classes),
          f"model.classes={classes}: the network {path} takes {labels} labels (only an unconditional one may differ)")
    check("latents" in precond and "sigma_data" in precond,
          f"model.path={path} lacks the latent standardisation or sigma_data; convert it with scripts/export_edm2.py")
    latents = precond["latents"]
    decoder = Edm2Decoder(load_part(diffusers_class("AutoencoderKL"), local_folder(vae, None, VAE_EXPECTED),
                                    ("AutoencoderKL",)), latents["scale"], latents["bias"], parse_dtype(vae_dtype))
    return Edm2Denoiser(TorchNet(module, parse_dtype(dtype), compile=compile), float(precond["sigma_data"]),
                        labels, labels if classes is None else classes, checkpoint_shape(fields, None, path),
                        decoder, path)
