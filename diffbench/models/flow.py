"""Velocity-prediction models on the rectified-flow path (Liu et al. 2023; Lipman et al. 2023) as denoisers.

The path is x_t = (1 - t) x0 + t eps (noise at t = 1) and the network predicts the velocity
dx_t/dt = eps - x0; base.PredictionDenoiser turns it into D(x, sigma) with sigma = t / (1 - t).
Checkpoints that put the noise at t = 0 (flow_matching's convention: x_s = s x1 + (1 - s) noise,
velocity x1 - noise) set ``reverse_time``: the network is then called at s = 1 - t and its output negated.
``time_scale`` multiplies the time the network sees (e.g. 1000 for networks trained on t in [0, 1000]).

model.path holds a TorchScript archive of v(x_t, time) -> velocity ([B, C, H, W], time [B] float32;
set model.shape unless its ``diffbench.json`` extra file records it) or a diffbench-unet checkpoint
whose ``precond.kind`` is ``flow``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffbench.models._network import TorchNet, checkpoint_shape, load_network, option, parse_dtype, precond_of
from diffbench.models.base import PredictionDenoiser
from diffbench.models.registry import register_model
from diffbench.schedules import RectifiedFlow

EXPECTED = "a TorchScript archive of a velocity network v(x_t, t) or a diffbench-unet checkpoint of a flow model"


class FlowDenoiser(PredictionDenoiser):
    """A rectified-flow velocity network as D(x, sigma), with its sample shape."""

    def __init__(self, net: Callable[[Tensor, Tensor], Tensor], schedule: RectifiedFlow, shape: Sequence[int],
                 net_dtype: torch.dtype = torch.float32, source: str = ""):
        super().__init__(net, schedule, "flow")
        self.shape, self.net_dtype, self.source = tuple(shape), net_dtype, source

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "model_kind": "flow", "model_path": self.source,
                "net_dtype": str(self.net_dtype).removeprefix("torch.")}


class Velocity:
    """v(x_t, t) on diffbench's path from a network that may use another time origin or scale."""

    def __init__(self, net: Callable[[Tensor, Tensor], Tensor], time_scale: float, reverse_time: bool):
        self.net, self.time_scale, self.reverse_time = net, time_scale, reverse_time

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        if self.reverse_time:
            return -self.net(x_t, (1 - t) * self.time_scale)
        return self.net(x_t, t * self.time_scale)


@register_model("flow")
def flow(path: str = "", shape: Sequence[int] | None = None, time_scale: float | None = None,
         reverse_time: bool | None = None, t_min: float | None = None, t_max: float | None = None,
         dtype: str = "float32", channels_last: bool = False, compile: bool | str = False) -> FlowDenoiser:
    """A velocity network from a file; unset options come from the checkpoint, else the defaults below.

    Args:
        path: the network file (see the module docstring), or a name under diffbench/assets/ or the cache.
        shape: sample shape [C, H, W] (required for TorchScript files).
        time_scale: factor on the time the network is called with (default 1).
        reverse_time: the network puts noise at time 0 (default False: noise at 1).
        t_min, t_max: the time range sampled (default 1e-3, 0.999; sigma = t / (1 - t)).
        dtype: the precision the network runs in (float32, float16, bfloat16).
        channels_last: run the network in channels-last memory format (often faster on GPUs).
        compile: torch.compile the network: false, true or a mode (reduce-overhead uses CUDA graphs).
    """
    module, fields = load_network(path, EXPECTED)
    precond = precond_of(fields, "flow", "a flow model", path)
    reverse = bool(precond.get("reverse_time", False) if reverse_time is None else reverse_time)
    net_dtype = parse_dtype(dtype)
    net = Velocity(TorchNet(module, net_dtype, channels_last, compile),
                   option(time_scale, precond, "time_scale", 1.0), reverse)
    schedule = RectifiedFlow(option(t_min, precond, "t_min", 1e-3), option(t_max, precond, "t_max", 0.999))
    return FlowDenoiser(net, schedule, checkpoint_shape(fields, shape, path), net_dtype, path)
