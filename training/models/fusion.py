"""Convolutional two-stream fusion (Feichtenhofer, Pinz & Zisserman, CVPR 2016, arXiv 1604.06573).

The spatial and temporal streams (VGG-16 in the paper, `arch="vgg16"`; or a ResNet) run side
by side on each of a clip's T snippets (pipeline.snippets' strided sampler: T snippets
`stride` frames apart) up to a fusion layer (`fusion_layer`: the end of a stage, layer4 =
conv5_x; VGG-16's layer4 ends at relu5_3). There their maps a and b are fused.

The default is the paper's final network, as the authors' code builds it
(twostreamfusion, cnn_ucf101_fusion.m): the post-ReLU conv5_3 maps of both streams are
concatenated (appearance first), stacked over the T snippets into (2C, T, H, W) and fused
by ONE 3x3x3 convolution from 2C to C channels (padding 1, bias 0), then ReLU, then 3D max
pooling over all T snippets (their 2x2xT pool: one max over time, followed by the
stream's own spatial pooling, pool5 for VGG-16, the global average for a ResNet), then the
spatial stream's fc6, fc7 (VGG-16) and a new classifier. The 3D conv starts from the
authors' initialisation, not the paper text's [I, I]: 0.25 I on the appearance half and
0.75 I on the motion half, times a normalised 3D Gaussian (sigma 1) on the 27 taps
(`conv3d_fusion_init_`).

`fusion_type` picks the fusion:

    conv3d     the paper's 3D conv fusion above (concatenation + 3x3x3 conv 2C -> C + ReLU)
    sum        y = a + b
    max        y = max(a, b)
    concat     y = [a, b]                          (2C channels; fused below layer4, the next
               stage's first convolution takes 2C channels, its weights repeated)
    conv       y = ReLU(W [a, b] + bias), a 1x1 conv from 2C to C channels initialised as the
               sum of identities W = [I, I] (bias 0), so that it starts as sum fusion
    bilinear   y = sum over positions of a outer b (C^2 values), signed square root,
               L2 normalisation, then the classifier: no positions are left for later stages
               or for temporal pooling

All but conv3d are 2D: each snippet is fused on its own, then pooled in time exactly as
`temporal_pool` says and nothing more (no convolution is hidden in the pooling).

`fusion_point`: "relu" (the default, the authors' `fusionLayer = relu5_3`) fuses the
stage's rectified maps, a = ReLU(a'), b = ReLU(b'); "pre-relu" fuses the maps before the
stage's last ReLU and rectifies the fusion, ReLU(a' + b') (the network of flowshard's first
fusion revision). Concatenation and bilinear fusion give the same either way.

Temporal pooling (`temporal_pool`): "3d" (the paper's) takes the max over all T snippets of
the fused tower's last maps, then the stream's spatial pooling; "none" scores each snippet
on its own and averages the T scores.

`temporal_tower` keeps the temporal stream's own tower after the fusion point (its
remaining stages, the same pooling in time, its fc layers and classifier), as in the
paper's final architecture; both towers are trained with their own loss and their class
probabilities averaged for the prediction ("fused"). Outputs: "fusion" (the fused tower),
"flow" (the temporal tower, when kept); "fused" is their average. The authors also stop
back-propagation at relu5_3 (their conv layers below the fusion stay as the two-stream
networks left them); here every layer trains, as in the paper's text.

Revision 2 (this one) fuses after the ReLU by default, ends every stage before the fusion
layer with its ReLU (revision 1 left out the last ReLU of each of them), pools by one max
over time and builds the 3D conv fusion as above; checkpoints of revision 1 are refused
(training.models.check).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from training.models.backbones import (
    STAGES,
    check_snippet_streams,
    conv_like,
    drop_stages_,
    drop_top_,
    first_conv,
    is_vgg,
    run_stage,
    stage_channels,
    stem,
    stream_backbone,
    stream_top,
)
from training.models.base import ModelConfig, VideoClassifier
from training.models.option_spec import OptionSpec

REVISION = 2
REVISION_NOTE = (
    "revision 2 fuses the rectified maps, rectifies every stage before the fusion, pools by one "
    "max over all T snippets and builds the paper's 3D conv fusion (concatenation + one 3x3x3 "
    "conv, [0.25 I, 0.75 I] init)"
)
ORDERED_SNIPPETS = True
FUSION_TYPES = ("conv3d", "sum", "max", "concat", "conv", "bilinear")
FUSION_POINTS = ("relu", "pre-relu")
TEMPORAL_POOLS = ("3d", "none")
# The authors' initial weights of the 3D conv's appearance and motion halves (cnn_ucf101_fusion.m).
CONV3D_HALVES = (0.25, 0.75)
# Feichtenhofer et al.: T = 5 snippets a stride apart, dropout 0.85 (their code).
INPUT = {"sampling": "strided", "snippets": 5, "strides": "1,5,10", "dropout": 0.85}


@dataclass(frozen=True, kw_only=True)
class Options:
    """Where and how the streams are fused, and whether the T snippets are pooled in 3D."""

    fusion_type: str = "conv3d"
    fusion_layer: str = "layer4"
    fusion_point: str = "relu"
    temporal_pool: str = "3d"
    temporal_tower: bool = True

    def __post_init__(self) -> None:
        if self.fusion_type not in FUSION_TYPES:
            raise ValueError(f"unknown fusion type {self.fusion_type!r}; choose one of {FUSION_TYPES}")
        if self.fusion_layer not in STAGES:
            raise ValueError(f"unknown fusion layer {self.fusion_layer!r}; choose one of {STAGES}")
        if self.fusion_point not in FUSION_POINTS:
            raise ValueError(f"unknown fusion point {self.fusion_point!r}; choose one of {FUSION_POINTS}")
        if self.temporal_pool not in TEMPORAL_POOLS:
            raise ValueError(f"unknown temporal pooling {self.temporal_pool!r}; choose one of {TEMPORAL_POOLS}")
        if self.fusion_type == "bilinear" and self.temporal_pool != "none":
            raise ValueError("bilinear fusion leaves no positions to pool in 3D: use temporal_pool='none'")


OPTIONS = (
    OptionSpec(
        flag="fusion-type",
        default="conv3d",
        choices=FUSION_TYPES,
        help="how the two streams' maps are fused at --fusion-layer (conv3d: the paper's concatenation + "
        "3x3x3 conv over the snippets; conv: 1x1 conv initialised as their sum).",
    ),
    OptionSpec(
        flag="fusion-layer",
        default="layer4",
        choices=STAGES,
        help="the stage at whose end the streams are fused (layer4: conv5_x; VGG-16: relu5_3).",
    ),
    OptionSpec(
        flag="fusion-point",
        default="relu",
        choices=FUSION_POINTS,
        help="fuse the stage's rectified maps (relu, the authors') or the maps before its last ReLU.",
    ),
    OptionSpec(
        flag="temporal-pool",
        default="3d",
        choices=TEMPORAL_POOLS,
        help="3d = one max over the T snippets' maps, then the stream's spatial pooling; "
        "none = each snippet scored alone, scores averaged.",
    ),
    OptionSpec(
        flag="temporal-tower",
        type=bool,
        default=True,
        help="keep the temporal stream's own tower and classifier (averaged with the fused one).",
    ),
)


def options_from_cli(values: dict) -> Options:
    """The Options the parsed command-line values (OPTIONS' keys) describe."""
    return Options(
        fusion_type=values["fusion_type"],
        fusion_layer=values["fusion_layer"],
        fusion_point=values["fusion_point"],
        temporal_pool=values["temporal_pool"],
        temporal_tower=values["temporal_tower"],
    )


def options(cfg: ModelConfig) -> Options:
    return cfg.options or Options()


def check(cfg: ModelConfig) -> None:
    """Raise ValueError naming the first setting this family cannot build."""
    check_snippet_streams(cfg, "fusion")
    opt = options(cfg)
    last = opt.fusion_layer == STAGES[-1]
    if cfg.arch == "vgg16" and opt.fusion_type == "concat" and last:
        raise ValueError(
            "concat fusion at VGG-16's relu5_3 would feed fc6 twice its input: use conv3d (the "
            "paper's), conv, sum or max there"
        )


# --- fusion layers -------------------------------------------------------------------------------


def conv3d_fusion_init_(conv: nn.Conv3d, halves: tuple[float, ...] = CONV3D_HALVES, sigma: float = 1.0) -> None:
    """Initialise a kC -> C 3D conv as the authors do: block i of its input channels maps to the
    output by halves[i] * I, every tap weighted by a normalised 3D Gaussian (sigma 1); bias 0.

    With the default [0.25 I, 0.75 I] (appearance, motion) a static clip of maps a, b gives
    0.25 a + 0.75 b away from the borders (cnn_ucf101_fusion.m: `cat(1, .25*eye, .75*eye)`
    times `G3 / sum(G3(:))`).
    """
    out = conv.out_channels
    if conv.in_channels != len(halves) * out:
        raise ValueError(f"3D conv from {conv.in_channels} to {out} channels: not {len(halves)} blocks of {out}")
    k = conv.kernel_size
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in k], indexing="ij")
    g = torch.exp(-torch.stack([x * x for x in grids]).sum(0) / (2 * sigma * sigma))
    g = g / g.sum()
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(conv.in_channels):
            conv.weight[c % out, c] = halves[c // out] * g.to(conv.weight.device)
        if conv.bias is not None:
            conv.bias.zero_()


class Fuse(nn.Module):
    """One of FUSION_TYPES on two (N*T, C, H, W) maps of N clips of T snippets (rectified
    first at fusion_point "relu"); the output is rectified."""

    def __init__(self, kind: str, channels: int, point: str = "relu"):
        super().__init__()
        self.kind = kind
        self.point = point
        self.conv: nn.Module | None = None
        if kind == "conv":
            self.conv = nn.Conv2d(2 * channels, channels, 1)
            with torch.no_grad():  # [I, I]: the sum of the two streams at the start
                eye = torch.eye(channels)[:, :, None, None]
                self.conv.weight.copy_(torch.cat([eye, eye], dim=1))
                cast(torch.Tensor, self.conv.bias).zero_()  # a Conv2d has a bias unless told otherwise
        elif kind == "conv3d":
            self.conv = nn.Conv3d(2 * channels, channels, 3, padding=1)
            conv3d_fusion_init_(self.conv)

    def out_channels(self, channels: int) -> int:
        return {"concat": 2 * channels, "bilinear": channels * channels}.get(self.kind, channels)

    def forward(self, a: torch.Tensor, b: torch.Tensor, snippets: int) -> torch.Tensor:
        if self.kind == "bilinear":
            return bilinear(F.relu(a), F.relu(b))
        if self.point == "relu":
            a, b = F.relu(a), F.relu(b)
        if self.kind == "sum":
            y = a + b
        elif self.kind == "max":
            y = torch.maximum(a, b)
        elif self.kind == "concat":
            y = torch.cat([a, b], dim=1)
        elif self.kind == "conv" and self.conv is not None:
            y = self.conv(torch.cat([a, b], dim=1))
        elif self.conv is not None:  # conv3d: the T snippets of a clip stacked in time, (N, 2C, T, H, W)
            clips = torch.cat([a, b], dim=1).unflatten(0, (-1, snippets)).transpose(1, 2)
            y = self.conv(clips).transpose(1, 2).flatten(0, 1)
        else:
            raise ValueError(f"unknown fusion type {self.kind!r}; choose one of {FUSION_TYPES}")
        return F.relu(y)


def bilinear(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over positions of a (x) b per item -> (N, C*C), signed square root, L2-normalised."""
    y = torch.bmm(a.flatten(2).float(), b.flatten(2).float().transpose(1, 2)).flatten(1)
    y = torch.sign(y) * torch.sqrt(y.abs() + 1e-12)
    return F.normalize(y, dim=1).to(a.dtype)


def max_over_snippets(x: torch.Tensor, snippets: int) -> torch.Tensor:
    """(N*T, ...) -> (N, ...): the max over each clip's T snippets (the paper's 3D max pooling in time)."""
    return x.unflatten(0, (-1, snippets)).amax(1)


class Tower(nn.Module):
    """The end of a tower: [max over the T snippets], the stream's top (spatial pooling; VGG-16's
    pool5, fc6, fc7), dropout and a classifier."""

    def __init__(self, top: nn.Module, dim: int, num_classes: int, dropout: float, pool_time: bool):
        super().__init__()
        self.pool_time = pool_time
        self.top = top
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, snippets: int) -> torch.Tensor:
        """(N*T, C, H, W) maps (or (N*T, D) vectors) -> (N, classes) logits, snippets averaged unless pooled."""
        if self.pool_time:
            return self.fc(self.dropout(self.top(max_over_snippets(x, snippets))))
        return self.fc(self.dropout(self.top(x))).unflatten(0, (-1, snippets)).mean(1)


# --- the model ------------------------------------------------------------------------------------


def repeat_input(conv: nn.Conv2d, factor: int) -> nn.Conv2d:
    """A copy of `conv` taking `factor` times its input channels, its weights repeated along
    them: on concatenated maps [a, b] it starts as the conv of a + b."""
    return conv_like(conv, torch.cat([conv.weight.detach()] * factor, dim=1))


def widen_input_(backbone: nn.Module, stage: str, factor: int = 2) -> None:
    """Let the first convolution of `stage` (after a concatenation fusion) take the 2C channels."""
    owner, name = first_conv(backbone, stage)
    if not is_vgg(backbone) and owner.downsample is None:
        raise ValueError("concatenation fusion needs a projection shortcut after it (fuse below layer4)")
    setattr(owner, name, repeat_input(getattr(owner, name), factor))
    if not is_vgg(backbone):
        projection = cast(nn.Sequential, owner.downsample)  # torchvision's: Sequential(1x1 conv, norm)
        projection[0] = repeat_input(cast(nn.Conv2d, projection[0]), factor)


def run_to(backbone: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """A stream from its input to the end of `layer`, stopped before its last ReLU."""
    x = stem(backbone, x)
    for name in STAGES[: STAGES.index(layer)]:
        x = run_stage(backbone, name, x)
    return run_stage(backbone, layer, x, before_relu=True)


def run_from(backbone: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The stages of a stream after `layer`, on rectified maps."""
    for name in STAGES[STAGES.index(layer) + 1 :]:
        x = run_stage(backbone, name, x)
    return x


class FusionNet(VideoClassifier):
    """Two streams fused at a conv layer, optionally pooled over the T snippets in 3D.

    forward(batch): {"rgb": (B, V, T, 3, H, W), "flow": (B, V, T, 2L, H, W)} ->
    {"fusion": (B, N)[, "flow": (B, N)]}, averaged over the V views.
    """

    ordered_snippets = ORDERED_SNIPPETS

    def __init__(self, cfg: ModelConfig):
        check(cfg)
        super().__init__(cfg)
        opt = self.opt = options(cfg)
        self.rgb = stream_backbone(cfg.arch, cfg.weights, "rgb", cfg.clip_len)
        self.flow = stream_backbone(cfg.arch, cfg.weights, "flow", cfg.clip_len, cfg.flow_weights)
        channels = stage_channels(self.rgb, opt.fusion_layer)
        later = STAGES[STAGES.index(opt.fusion_layer) + 1 :]
        self.fuse = Fuse(opt.fusion_type, channels, opt.fusion_point)
        if opt.fusion_type == "concat" and later:  # the next stage takes [a, b]: 2C channels
            widen_input_(self.rgb, later[0])
        pooled = opt.temporal_pool == "3d"
        top: nn.Module
        if opt.fusion_type == "bilinear":  # a vector per snippet: no positions left for later stages
            drop_stages_(self.rgb, later)
            drop_top_(self.rgb)
            top, dim = nn.Identity(), self.fuse.out_channels(channels)
        else:
            top, dim = stream_top(self.rgb, cfg.dropout)
            if not later and not is_vgg(self.rgb):  # fused at layer4: global pooling of the fusion's channels
                dim = self.fuse.out_channels(channels)
        self.head = Tower(top, dim, cfg.num_classes, cfg.dropout, pooled)
        self.flow_head = None
        if not opt.temporal_tower:  # the temporal stream ends at the fusion: no unused weights (DDP refuses them)
            drop_stages_(self.flow, later)
            drop_top_(self.flow)
        else:
            flow_top, flow_dim = stream_top(self.flow, cfg.stream_dropout("flow"))
            self.flow_head = Tower(flow_top, flow_dim, cfg.num_classes, cfg.stream_dropout("flow"), pooled)

    @property
    def output_keys(self) -> tuple[str, ...]:
        return ("fusion", "flow") if self.flow_head is not None else ("fusion",)

    def score_units(self, units: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"rgb": (N, T, 3, H, W), "flow": (N, T, 2L, H, W)} clips -> logits (N, classes) per tower."""
        t = units["rgb"].shape[1]
        layer = self.opt.fusion_layer
        a = run_to(self.rgb, units["rgb"].flatten(0, 1), layer)
        m = run_to(self.flow, units["flow"].flatten(0, 1), layer)
        fused = self.fuse(a, m, t)
        if fused.dim() == 4:
            fused = run_from(self.rgb, fused, layer)
        out = {"fusion": self.head(fused, t)}
        if self.flow_head is not None:
            tower = run_from(self.flow, F.relu(m), layer)
            out["flow"] = self.flow_head(tower, t)
        return out

    def scores(self, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Softmax per tower; "fused": the mean of the towers' probabilities (the paper's test-time fusion)."""
        probs = {name: torch.softmax(x.float(), dim=1) for name, x in logits.items()}
        return {**probs, "fused": torch.stack(list(probs.values())).mean(0)}


def build(cfg: ModelConfig) -> FusionNet:
    """The fusion network of `cfg` (its Options: fusion type, layer and point, temporal pooling, tower)."""
    return FusionNet(cfg)
