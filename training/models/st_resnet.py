"""Spatiotemporal residual networks (Feichtenhofer, Pinz & Wildes, NIPS 2016, arXiv 1611.02155).

Two ResNets (ResNet-50 in the paper; `arch`) see the T snippets of a clip, frame by frame:
the appearance (spatial) stream one RGB frame each, the motion (temporal) stream 2L flow
channels each. Two kinds of residual connections turn them into one spatiotemporal net:

- Motion -> appearance: at the second residual unit of every stage (res2b, res3b, res4b,
  res5b: the units after which the authors' code injects), the residual path of the
  appearance unit takes x_a + x_m (`connection="additive"`, the NIPS paper) or x_a * x_m
  (`"multiplicative"`, their spatiotemporal multiplier networks, CVPR 2017), where x_a and
  x_m are the two streams' outputs of the stage's first unit; the identity path keeps x_a.
  Gradients flow back into the motion stream through the connection.
- Temporal residual convolutions (`temporal_convs`): in both streams the 1x1 convolutions
  of those same units (the first and last of a bottleneck; the two 3x3 of a basic block)
  become 3D with temporal extent 3 over the T snippets, initialised with the 2D ImageNet
  weights in the centre slice and zeros in the other two: at the start each frame gives
  exactly what the 2D network gives (identity over time), and training learns how much of
  the neighbouring snippets to take in.

Each stream ends in global average pooling per snippet, pooling over the T snippets (max by
default, or avg), dropout and its classifier; both are trained with their own loss and
fused late (the weighted average of their class probabilities, `fusion_weights`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from training.models.backbones import (
    STAGES,
    check_snippet_streams,
    residual_branch,
    shortcut,
    stage_channels,
    stem,
    stream_backbone,
)
from training.models.base import ModelConfig, VideoClassifier
from training.models.option_spec import OptionSpec

ORDERED_SNIPPETS = True
CONNECTIONS = ("additive", "multiplicative", "none")
POOLS = ("max", "avg")
# Feichtenhofer et al. (ST-ResNet): T = 5 snippets a stride apart.
INPUT = {"sampling": "strided", "snippets": 5, "strides": "1,5,10"}


@dataclass(frozen=True, kw_only=True)
class Options:
    """The cross-stream connection, the temporal convolutions and the pooling over snippets."""

    connection: str = "additive"
    temporal_convs: bool = True
    temporal_pool: str = "max"

    def __post_init__(self) -> None:
        if self.connection not in CONNECTIONS:
            raise ValueError(f"unknown connection {self.connection!r}; choose one of {CONNECTIONS}")
        if self.temporal_pool not in POOLS:
            raise ValueError(f"unknown temporal pooling {self.temporal_pool!r}; choose one of {POOLS}")


OPTIONS = (
    OptionSpec(flag="st-connection", default="additive", choices=CONNECTIONS,
               help="residual connections from the motion into the appearance stream."),
    OptionSpec(flag="st-temporal-convs", type=bool, default=True,
               help="convs of each stage's second unit made 3D over the snippets (centre-slice init)."),
    OptionSpec(flag="st-temporal-pool", default="max", choices=POOLS,
               help="pooling over the T snippets before each stream's classifier."),
)


def options_from_cli(values: dict) -> Options:
    """The Options the parsed command-line values (OPTIONS' keys) describe."""
    return Options(connection=values["st_connection"], temporal_convs=values["st_temporal_convs"],
                   temporal_pool=values["st_temporal_pool"])


def options(cfg: ModelConfig) -> Options:
    return cfg.options or Options()


def check(cfg: ModelConfig) -> None:
    """Raise ValueError naming the first setting this family cannot build."""
    check_snippet_streams(cfg, "st_resnet")
    options(cfg)


class TemporalConv(nn.Module):
    """A 2D convolution made 3D over the T snippets of each clip (temporal extent 3, padding 1).

    Takes and gives (N*T, C, H, W), snippets of a clip consecutive. The centre slice holds the
    2D weights and the others zeros, so at the start it is the 2D convolution on every frame.
    """

    def __init__(self, conv: nn.Conv2d, frames: int):
        super().__init__()
        kh, kw = conv.kernel_size
        self.frames = frames
        self.conv = nn.Conv3d(conv.in_channels, conv.out_channels, (3, kh, kw), stride=(1, *conv.stride),
                              padding=(1, *conv.padding), bias=conv.bias is not None)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :, 1] = conv.weight
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clips = x.unflatten(0, (-1, self.frames)).transpose(1, 2)  # (N, C, T, H, W)
        return self.conv(clips).transpose(1, 2).flatten(0, 1)


def temporal_convs_(backbone: nn.Module, frames: int) -> None:
    """Make the selected convolutions of each stage's second unit temporal (see the module docstring)."""
    for stage in STAGES:
        blocks = getattr(backbone, stage)
        if len(blocks) < 2:
            continue
        unit = blocks[1]
        for name in (("conv1", "conv3") if isinstance(unit, Bottleneck) else ("conv1", "conv2")):
            setattr(unit, name, TemporalConv(getattr(unit, name), frames))


def connected_unit(unit: nn.Module, x_a: torch.Tensor, x_m: torch.Tensor, connection: str) -> torch.Tensor:
    """An appearance unit whose residual path also takes the motion stream: ReLU(F(x_a o x_m) + x_a)."""
    mixed = x_a + x_m if connection == "additive" else x_a * x_m
    return F.relu(residual_branch(unit, mixed) + shortcut(unit, x_a))


class Head(nn.Module):
    """Global average pooling per snippet, max or average over the T snippets, dropout, classifier."""

    def __init__(self, channels: int, num_classes: int, dropout: float, pool: str):
        super().__init__()
        self.pool = pool
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, maps: torch.Tensor, snippets: int) -> torch.Tensor:
        x = maps.mean((2, 3)).unflatten(0, (-1, snippets))
        x = x.amax(1) if self.pool == "max" else x.mean(1)
        return self.fc(self.dropout(x))


class STResNet(VideoClassifier):
    """forward(batch): {"rgb": (B, V, T, 3, H, W), "flow": (B, V, T, 2L, H, W)} ->
    {"rgb": (B, N), "flow": (B, N)}, each averaged over the V views."""

    ordered_snippets = ORDERED_SNIPPETS

    def __init__(self, cfg: ModelConfig):
        check(cfg)
        super().__init__(cfg)
        self.opt = options(cfg)
        self.rgb = stream_backbone(cfg.arch, cfg.weights, "rgb", cfg.clip_len)
        self.flow = stream_backbone(cfg.arch, cfg.weights, "flow", cfg.clip_len, cfg.flow_weights)
        if self.opt.temporal_convs:
            temporal_convs_(self.rgb, cfg.snippets)
            temporal_convs_(self.flow, cfg.snippets)
        channels = stage_channels(self.rgb, STAGES[-1])
        self.heads = nn.ModuleDict({s: Head(channels, cfg.num_classes, cfg.stream_dropout(s), self.opt.temporal_pool)
                                    for s in ("rgb", "flow")})

    def score_units(self, units: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"rgb": (N, T, 3, H, W), "flow": (N, T, 2L, H, W)} clips -> logits (N, classes) per stream."""
        t = units["rgb"].shape[1]
        x_a = stem(self.rgb, units["rgb"].flatten(0, 1))
        x_m = stem(self.flow, units["flow"].flatten(0, 1))
        for stage in STAGES:
            x_a, x_m = self._stage(getattr(self.rgb, stage), getattr(self.flow, stage), x_a, x_m)
        return {"rgb": self.heads["rgb"](x_a, t), "flow": self.heads["flow"](x_m, t)}

    def _stage(self, units_a: nn.Sequential, units_m: nn.Sequential, x_a, x_m):
        x_a, x_m = units_a[0](x_a), units_m[0](x_m)
        if len(units_a) > 1:
            if self.opt.connection == "none":
                x_a = units_a[1](x_a)
            else:
                x_a = connected_unit(units_a[1], x_a, x_m, self.opt.connection)
            x_m = units_m[1](x_m)
        for unit_a, unit_m in zip(units_a[2:], units_m[2:], strict=True):
            x_a, x_m = unit_a(x_a), unit_m(x_m)
        return x_a, x_m


def build(cfg: ModelConfig) -> STResNet:
    """The ST-ResNet of `cfg` (its Options: connection, temporal convolutions, pooling over snippets)."""
    return STResNet(cfg)
