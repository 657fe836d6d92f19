"""EDM-preconditioned networks: D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) (Karras et al. 2022).

model.path holds the raw network F (the preconditioning lives here, in ``edm_coefficients``):

- a TorchScript archive of F(x_in, c_noise) -> F_x with x_in = c_in x ([B, C, H, W]) and
  c_noise = ln(sigma) / 4 ([B], float32); set model.shape=[C,H,W] unless the archive carries a
  ``diffbench.json`` extra file with ``shape`` (and ``precond``), as scripts/export_edm.py writes;
- a diffbench-unet checkpoint whose ``precond.kind`` is ``edm`` (scripts/train.py writes these;
  shape, sigma_data and the sigma range come from the file);
- NVlabs/edm ``.pkl`` files pickle their classes' code and need NVlabs' ``torch_utils``/``dnnlib`` to
  load. Convert once, with their source on the path:
  ``PYTHONPATH=/path/to/edm python scripts/export_edm.py edm-cifar10-32x32-uncond-vp.pkl OUT.pt``
  (it traces ``net.model``, the F inside their ``EDMPrecond``, to TorchScript).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffbench.errors import check
from diffbench.models._network import TorchNet, checkpoint_shape, load_network, option, parse_dtype, precond_of
from diffbench.models.base import ConditionalDenoiser, Denoiser, expand_as
from diffbench.models.registry import register_model
from diffbench.models.unet import UNet
from diffbench.schedules import EDM

EXPECTED = ("a TorchScript archive of EDM's raw network F(c_in x, c_noise) or a diffbench-unet checkpoint "
            "with EDM preconditioning")


def edm_coefficients(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """c_skip, c_out, c_in, c_noise of EDM's preconditioning (Karras et al. 2022, Table 1) at noise levels sigma."""
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), total.rsqrt(), sigma.log() / 4


class EDMDenoiser(Denoiser):
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise); the preconditioning runs in float32."""

    def __init__(self, net: Callable[[Tensor, Tensor], Tensor], sigma_data: float, schedule: EDM,
                 shape: Sequence[int], net_dtype: torch.dtype = torch.float32, source: str = ""):
        check(sigma_data > 0, f"model.sigma_data must be > 0 (got {sigma_data})")
        self.net, self.sigma_data, self.schedule = net, float(sigma_data), schedule
        self.shape, self.net_dtype, self.source = tuple(shape), net_dtype, source

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        f_x = self.net(expand_as(c_in, x) * x, c_noise)
        return expand_as(c_skip, x) * x + expand_as(c_out, x) * f_x

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "model_kind": "edm", "model_path": self.source, "sigma_data": self.sigma_data,
                "net_dtype": str(self.net_dtype).removeprefix("torch.")}


@register_model("edm")
def edm(path: str = "", shape: Sequence[int] | None = None, sigma_data: float | None = None,
        sigma_min: float | None = None, sigma_max: float | None = None, dtype: str = "float32",
        channels_last: bool = False, compile: bool | str = False) -> EDMDenoiser | ClassEDMDenoiser:
    """An EDM-preconditioned network from a file; unset options come from the checkpoint, else EDM's defaults.

    Args:
        path: the network file (see the module docstring), or a name under diffbench/assets/ or the cache.
        shape: sample shape [C, H, W] (required for TorchScript files).
        sigma_data: the data std the preconditioning assumes (EDM: 0.5).
        sigma_min, sigma_max: the noise range the model was trained for (EDM: 0.002, 80).
        dtype: the precision the network runs in (float32, float16, bfloat16).
        channels_last: run the network in channels-last memory format (often faster on GPUs).
        compile: torch.compile the network: false, true or a mode (reduce-overhead uses CUDA graphs).
    """
    module, fields = load_network(path, EXPECTED)
    precond = precond_of(fields, "edm", "EDM-preconditioned", path)
    schedule = EDM(option(sigma_min, precond, "sigma_min", 0.002), option(sigma_max, precond, "sigma_max", 80.0))
    net_dtype = parse_dtype(dtype)
    net = TorchNet(module, net_dtype, channels_last, compile)
    sigma_data, shape = option(sigma_data, precond, "sigma_data", 0.5), checkpoint_shape(fields, shape, path)
    if isinstance(module, UNet) and module.classes:  # a class-conditional diffbench-unet checkpoint
        return ClassEDMDenoiser(net, module.classes, sigma_data, schedule, shape, path)
    return EDMDenoiser(net, sigma_data, schedule, shape, net_dtype, path)


class ClassEDMDenoiser(ConditionalDenoiser):
    """D(x, sigma, labels) = c_skip x + c_out F(c_in x, c_noise, labels): a class-conditional EDM network."""

    def __init__(self, net: TorchNet, classes: int, sigma_data: float, schedule: EDM, shape: Sequence[int],
                 source: str = ""):
        self.net = net  # moved to the input's device on first use, labels with it
        self.sigma_data, self.schedule, self.shape = float(sigma_data), schedule, tuple(shape)
        self.classes, self.dtype, self.source = classes, net.dtype, source

    def denoise_cond(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        f_x = self.net(expand_as(c_in, x) * x, c_noise, labels)
        return expand_as(c_skip, x) * x + expand_as(c_out, x) * f_x

    def describe(self) -> dict[str, object]:
        kind = {"model_kind": "edm", "model_path": self.source} if self.source else {"model_kind": "random_class_unet"}
        return {**super().describe(), **kind, "classes": self.classes}


@register_model("random_class_unet")
def random_class_unet(classes: int = 10, shape: Sequence[int] = (1, 16, 16), channels: int = 16,
                      channel_mult: Sequence[int] = (1, 2), seed: int = 0, device: str = "cpu") -> ClassEDMDenoiser:
    """The project's UNet with a label embedding and random weights (seeded): runs class-conditional sweeps end to end.

    Its zero-initialised layers are drawn too, so labels and guidance change the samples; the samples are
    noise-like, not data.
    """
    check(len(shape) == 3 and classes >= 1, f"model: need shape [C, H, W] and classes >= 1 (got {shape}, {classes})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = UNet(in_channels=shape[0], resolution=shape[1], channels=channels, channel_mult=channel_mult,
                   num_blocks=1, attn_resolutions=(), classes=classes)
        for module in net.modules():  # training starts these layers at zero: draw them too
            if isinstance(module, torch.nn.Conv2d) and not bool(module.weight.any()):
                torch.nn.init.normal_(module.weight, std=0.05)
    return ClassEDMDenoiser(TorchNet(net.eval().requires_grad_(False).to(device), torch.float32), classes, 0.5, EDM(),
                            shape)
