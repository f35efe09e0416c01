"""Spatiotemporal residual networks (Feichtenhofer, Pinz & Wildes, NIPS 2016, arXiv 1611.02155).

Two ResNets (ResNet-50 in the paper; `arch`) see the T snippets of a clip, frame by frame:
the appearance (spatial) stream one RGB frame each, the motion (temporal) stream 2L flow
channels each. Two kinds of residual connections turn them into one spatiotemporal net,
built as the authors' code builds them (feichtenhofer/st-resnet, STResNet_stage1.m):

- Motion -> appearance: at the second residual unit of every stage (res2b, res3b, res4b,
  res5b), the appearance unit's residual path takes x_a + ReLU(x_m) (`connection=
  "additive"`, the NIPS paper) or x_a * ReLU(x_m) (`"multiplicative"`, their
  spatiotemporal multiplier networks, CVPR 2017, STMulNet.m, the same two maps), where x_a
  is the appearance stream's first unit's output *before* its ReLU and ReLU(x_m) the motion
  stream's first unit's rectified output; the identity path keeps ReLU(x_a):

      x_a' = ReLU(ReLU(x_a) + F(x_a + ReLU(x_m)))

  Gradients flow back into the motion stream through the connection.
- Temporal residual filters (`temporal_convs`): in both streams the 1x1 convolutions W of
  those same units (a bottleneck's first and last, `b_branch2a` and `b_branch2c`) become
  3x1x1 convolutions over the T snippets (temporal padding 1), initialised with W/3 on each
  of the three taps, as the authors' code does: at the start each snippet sees W applied to
  the average of itself and its two neighbours. A basic block (ResNet-18/34) has no 1x1
  convolution; its analogue here is a 3x1x1 temporal filter with taps I/3 in front of each
  of its two 3x3 convolutions W, so that the pair starts as W applied to the same temporal
  average (what W/3 taps give a 1x1 conv), and time is filtered only by 3x1x1 filters, never
  by full 3x3x3 convolutions. The temporal filters are built for the model's T snippets; a
  clip of another length is refused (ValueError), at training and at evaluation.

Each stream ends in global average pooling per snippet, pooling over the T snippets (max by
default, or avg), dropout and its classifier; both are trained with their own loss and
fused late (the weighted average of their class probabilities, `fusion_weights`).

Revision 2 (this one) adds the pre-ReLU appearance map, initialises W/3 taps and uses 3x1x1
filters at every depth; checkpoints of revision 1 are refused (training.models.check).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from training.models.backbones import (
    STAGES,
    check_resnet,
    check_snippet_streams,
    pre_relu,
    residual_branch,
    shortcut,
    stage_channels,
    stem,
    stream_backbone,
)
from training.models.base import ModelConfig, VideoClassifier
from training.models.option_spec import OptionSpec

REVISION = 2
REVISION_NOTE = (
    "revision 2 adds the pre-ReLU appearance map to the motion one, and its temporal filters are "
    "3x1x1 with W/3 on each tap at every depth"
)
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
    OptionSpec(
        flag="st-connection",
        default="additive",
        choices=CONNECTIONS,
        help="residual connections from the motion into the appearance stream.",
    ),
    OptionSpec(
        flag="st-temporal-convs",
        type=bool,
        default=True,
        help="3x1x1 temporal filters over the snippets in each stage's second unit (W/3 on each tap).",
    ),
    OptionSpec(
        flag="st-temporal-pool",
        default="max",
        choices=POOLS,
        help="pooling over the T snippets before each stream's classifier.",
    ),
)


def options_from_cli(values: dict) -> Options:
    """The Options the parsed command-line values (OPTIONS' keys) describe."""
    return Options(
        connection=values["st_connection"],
        temporal_convs=values["st_temporal_convs"],
        temporal_pool=values["st_temporal_pool"],
    )


def options(cfg: ModelConfig) -> Options:
    return cfg.options or Options()


def check(cfg: ModelConfig) -> None:
    """Raise ValueError naming the first setting this family cannot build."""
    check_resnet(cfg.arch, "st_resnet")
    check_snippet_streams(cfg, "st_resnet")
    options(cfg)


class TemporalConv(nn.Module):
    """A 1x1 convolution W made 3x1x1 over the T snippets of each clip (temporal padding 1),
    each of the three taps initialised to W/3 (the authors' init).

    Takes and gives (N*T, C, H, W), the T snippets of a clip consecutive.
    """

    def __init__(self, conv: nn.Conv2d, frames: int):
        super().__init__()
        if conv.kernel_size != (1, 1):
            raise ValueError(f"temporal filters replace 1x1 convolutions, got kernel {conv.kernel_size}")
        self.frames = frames
        # torch annotates a Conv2d's own stride as tuple[int, ...]; it is a pair, so this stride has 3 entries.
        self.conv = nn.Conv3d(
            conv.in_channels,
            conv.out_channels,
            (3, 1, 1),
            stride=(1, *conv.stride),  # type: ignore[arg-type]
            padding=(1, 0, 0),
            bias=conv.bias is not None,
        )
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight.unsqueeze(2).expand_as(self.conv.weight) / 3)
            if conv.bias is not None and self.conv.bias is not None:  # a bias exactly when `conv` has one
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clips = x.unflatten(0, (-1, self.frames)).transpose(1, 2)  # (N, C, T, H, W)
        return self.conv(clips).transpose(1, 2).flatten(0, 1)


def temporal_filter(channels: int, frames: int) -> TemporalConv:
    """A 3x1x1 temporal filter C -> C whose taps start at I/3: the average of three neighbouring snippets."""
    identity = nn.Conv2d(channels, channels, 1, bias=False)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(channels)[:, :, None, None])
    return TemporalConv(identity, frames)


def temporal_convs_(backbone: nn.Module, frames: int) -> None:
    """Give each stage's second unit its temporal filters (see the module docstring): a bottleneck's
    first and last 1x1 convs become 3x1x1; a basic block's two 3x3 convs each get one in front."""
    for stage in STAGES:
        blocks = getattr(backbone, stage)
        if len(blocks) < 2:
            continue
        unit = blocks[1]
        if isinstance(unit, Bottleneck):
            unit.conv1 = TemporalConv(unit.conv1, frames)
            unit.conv3 = TemporalConv(unit.conv3, frames)
        else:
            unit.conv1 = nn.Sequential(temporal_filter(unit.conv1.in_channels, frames), unit.conv1)
            unit.conv2 = nn.Sequential(temporal_filter(unit.conv2.in_channels, frames), unit.conv2)


def connected_unit(unit: nn.Module, x_a: torch.Tensor, x_m: torch.Tensor, connection: str) -> torch.Tensor:
    """An appearance unit whose residual path also takes the motion stream:
    ReLU(ReLU(x_a) + F(x_a o x_m)), x_a the appearance map before its ReLU, x_m the rectified motion map."""
    mixed = x_a + x_m if connection == "additive" else x_a * x_m
    return F.relu(residual_branch(unit, mixed) + shortcut(unit, F.relu(x_a)))


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
        self.heads = nn.ModuleDict(
            {s: Head(channels, cfg.num_classes, cfg.stream_dropout(s), self.opt.temporal_pool) for s in ("rgb", "flow")}
        )

    def score_units(self, units: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"rgb": (N, T, 3, H, W), "flow": (N, T, 2L, H, W)} clips -> logits (N, classes) per stream."""
        t = units["rgb"].shape[1]
        if t != self.cfg.snippets:
            raise ValueError(
                f"this st_resnet takes clips of T = {self.cfg.snippets} snippets (its temporal filters "
                f"are built for them), got clips of {t}: sample --snippets {self.cfg.snippets}"
            )
        x_a = stem(self.rgb, units["rgb"].flatten(0, 1))
        x_m = stem(self.flow, units["flow"].flatten(0, 1))
        for stage in STAGES:
            x_a, x_m = self._stage(getattr(self.rgb, stage), getattr(self.flow, stage), x_a, x_m)
        return {"rgb": self.heads["rgb"](x_a, t), "flow": self.heads["flow"](x_m, t)}

    def _stage(self, units_a: nn.Sequential, units_m: nn.Sequential, x_a, x_m):
        x_m = units_m[0](x_m)
        if len(units_a) > 1 and self.opt.connection != "none":
            x_a = connected_unit(units_a[1], pre_relu(units_a[0], x_a), x_m, self.opt.connection)
            x_m = units_m[1](x_m)
        elif len(units_a) > 1:
            x_a = units_a[1](units_a[0](x_a))
            x_m = units_m[1](x_m)
        else:
            x_a = units_a[0](x_a)
        for unit_a, unit_m in zip(units_a[2:], units_m[2:], strict=True):
            x_a, x_m = unit_a(x_a), unit_m(x_m)
        return x_a, x_m


def build(cfg: ModelConfig) -> STResNet:
    """The ST-ResNet of `cfg` (its Options: connection, temporal convolutions, pooling over snippets)."""
    return STResNet(cfg)
