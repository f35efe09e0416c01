"""Convolutional two-stream fusion (Feichtenhofer, Pinz & Zisserman, CVPR 2016, arXiv 1604.06573).

The spatial and temporal ResNets run side by side up to a fusion layer (`fusion_layer`:
after the last block of a ResNet stage, before that block's final ReLU, so that even sum
fusion is followed by a non-linearity: ReLU(a + b) can answer "appearance A *and* motion
M at this place", which no average of two separate scores can). There their maps a and b,
channel for channel at the same pixel, are fused:

    sum        y = a + b
    max        y = max(a, b)
    concat     y = [a, b]                          (2C channels; fused below layer4, the next
               stage's first convolutions take 2C channels, their weights repeated)
    conv       y = W [a, b] + bias, a 1x1 conv from 2C to C channels initialised as the sum of
               identities W = [I, I] (bias 0), so that it starts as sum fusion
    bilinear   y = sum over positions of ReLU(a) outer ReLU(b) (C^2 values), signed square root,
               L2 normalisation, then the classifier: no positions are left for later stages
               or for temporal pooling

followed by the block's ReLU and, when fused below layer4, the spatial stream's remaining
stages ("fusing into the spatial stream", as in the paper's final model).

Temporal pooling (`temporal_pool="3d"`, the paper's): a clip is T snippets in time order
(pipeline.snippets' strided sampler: T snippets `stride` frames apart); the fused tower's
last maps (at layer4) of the T snippets are stacked in time into (C, T, H, W) and pooled
by a 3D convolution (3x3x3, C -> C, initialised as the identity times a normalised 3D
Gaussian, sigma 1, as in the authors' code) with ReLU, then 3D max pooling (3x3x3, stride
2 in time and space), then global average pooling and the classifier (maps concatenated at
layer4: the 3D conv maps 2C to C channels, initialised as the sum of the two halves: the
paper's 3D conv fusion). `temporal_pool="none"`: each snippet's maps are pooled and
classified on their own and the T scores averaged.

`temporal_tower` keeps the temporal stream's own tower after the fusion point (its
remaining stages, 3D max pooling when pooling in time, its classifier), as in the paper's
final architecture; both towers are trained with their own loss and their class
probabilities averaged for the prediction ("fused"). Outputs: "fusion" (the fused tower),
"flow" (the temporal tower, when kept); "fused" is their average.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.models.backbones import STAGES, check_snippet_streams, pre_relu, stage_channels, stem, stream_backbone
from training.models.base import ModelConfig, VideoClassifier
from training.models.option_spec import OptionSpec

ORDERED_SNIPPETS = True
FUSION_TYPES = ("sum", "max", "concat", "conv", "bilinear")
TEMPORAL_POOLS = ("3d", "none")
# Feichtenhofer et al.: T = 5 snippets a stride apart, dropout 0.85 (their code).
INPUT = {"sampling": "strided", "snippets": 5, "strides": "1,5,10", "dropout": 0.85}


@dataclass(frozen=True, kw_only=True)
class Options:
    """Where and how the streams are fused, and whether the T snippets are pooled in 3D."""

    fusion_type: str = "conv"
    fusion_layer: str = "layer4"
    temporal_pool: str = "3d"
    temporal_tower: bool = True

    def __post_init__(self) -> None:
        if self.fusion_type not in FUSION_TYPES:
            raise ValueError(f"unknown fusion type {self.fusion_type!r}; choose one of {FUSION_TYPES}")
        if self.fusion_layer not in STAGES:
            raise ValueError(f"unknown fusion layer {self.fusion_layer!r}; choose one of {STAGES}")
        if self.temporal_pool not in TEMPORAL_POOLS:
            raise ValueError(f"unknown temporal pooling {self.temporal_pool!r}; choose one of {TEMPORAL_POOLS}")
        if self.fusion_type == "bilinear" and self.temporal_pool != "none":
            raise ValueError("bilinear fusion leaves no positions to pool in 3D: use temporal_pool='none'")


OPTIONS = (
    OptionSpec(flag="fusion-type", default="conv", choices=FUSION_TYPES,
               help="how the two streams' maps are fused at --fusion-layer (conv: 1x1 conv initialised as their sum)."),
    OptionSpec(flag="fusion-layer", default="layer4", choices=STAGES,
               help="the ResNet stage after whose last block (before its ReLU) the streams are fused."),
    OptionSpec(flag="temporal-pool", default="3d", choices=TEMPORAL_POOLS,
               help="3d = the T snippets' fused maps pooled by 3D conv + 3D max pooling; "
                    "none = each snippet scored alone, scores averaged."),
    OptionSpec(flag="temporal-tower", type=bool, default=True,
               help="keep the temporal stream's own tower and classifier (averaged with the fused one)."),
)


def options_from_cli(values: dict) -> Options:
    """The Options the parsed command-line values (OPTIONS' keys) describe."""
    return Options(fusion_type=values["fusion_type"], fusion_layer=values["fusion_layer"],
                   temporal_pool=values["temporal_pool"], temporal_tower=values["temporal_tower"])


def options(cfg: ModelConfig) -> Options:
    return cfg.options or Options()


def check(cfg: ModelConfig) -> None:
    """Raise ValueError naming the first setting this family cannot build."""
    check_snippet_streams(cfg, "fusion")
    options(cfg)


# --- fusion layers -------------------------------------------------------------------------------

class Fuse(nn.Module):
    """One of FUSION_TYPES on two (N, C, H, W) pre-ReLU maps; output post-ReLU."""

    def __init__(self, kind: str, channels: int):
        super().__init__()
        self.kind = kind
        self.conv = None
        if kind == "conv":
            self.conv = nn.Conv2d(2 * channels, channels, 1)
            with torch.no_grad():  # [I, I]: the sum of the two streams at the start
                eye = torch.eye(channels)[:, :, None, None]
                self.conv.weight.copy_(torch.cat([eye, eye], dim=1))
                self.conv.bias.zero_()

    def out_channels(self, channels: int) -> int:
        return {"concat": 2 * channels, "bilinear": channels * channels}.get(self.kind, channels)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.kind == "sum":
            return F.relu(a + b)
        if self.kind == "max":
            return F.relu(torch.maximum(a, b))
        if self.kind == "concat":
            return F.relu(torch.cat([a, b], dim=1))
        if self.kind == "conv":
            return F.relu(self.conv(torch.cat([a, b], dim=1)))
        return bilinear(F.relu(a), F.relu(b))


def bilinear(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over positions of a (x) b per item -> (N, C*C), signed square root, L2-normalised."""
    y = torch.bmm(a.flatten(2).float(), b.flatten(2).float().transpose(1, 2)).flatten(1)
    y = torch.sign(y) * torch.sqrt(y.abs() + 1e-12)
    return F.normalize(y, dim=1).to(a.dtype)


def gaussian_identity_(conv: nn.Conv3d, sigma: float = 1.0) -> None:
    """Initialise a kC -> C 3D conv as k identities side by side (their sum: concatenated
    streams start added) times a normalised 3D Gaussian; bias 0 (the authors' init)."""
    k = conv.kernel_size
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in k], indexing="ij")
    g = torch.exp(-sum(x * x for x in grids) / (2 * sigma * sigma))
    g = g / g.sum()
    out = conv.out_channels
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(conv.in_channels):
            conv.weight[c % out, c] = g
        conv.bias.zero_()


class TemporalPool(nn.Module):
    """The paper's temporal pooling of (N, C_in, T, H, W): [3D conv to C_out + ReLU], 3D max
    pooling, average over what is left. Concatenated maps (C_in = 2 C_out) are fused by the
    3D conv itself, as in the paper's 3D conv fusion."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = None
        if out_channels is not None:
            if channels % out_channels:
                raise ValueError(f"3D conv from {channels} to {out_channels} channels: not a multiple")
            self.conv = nn.Conv3d(channels, out_channels, 3, padding=1)
            gaussian_identity_(self.conv)
        self.pool = nn.MaxPool3d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            x = F.relu(self.conv(x))
        return self.pool(x).mean((2, 3, 4))


class Head(nn.Module):
    """Pooling (in 3D over the T snippets, or per snippet in 2D), dropout and a classifier."""

    def __init__(self, channels: int, num_classes: int, dropout: float, pool3d: TemporalPool | None):
        super().__init__()
        self.pool3d = pool3d
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor, snippets: int) -> torch.Tensor:
        """(N*T, C, H, W) maps (or (N*T, C) vectors) -> (N, classes) logits, snippets averaged unless pooled."""
        if self.pool3d is not None:
            x = self.pool3d(x.unflatten(0, (-1, snippets)).transpose(1, 2))
            return self.fc(self.dropout(x))
        if x.dim() == 4:
            x = x.mean((2, 3))
        return self.fc(self.dropout(x)).unflatten(0, (-1, snippets)).mean(1)


# --- the model ------------------------------------------------------------------------------------

def repeat_input(conv: nn.Conv2d, factor: int) -> nn.Conv2d:
    """A copy of `conv` taking `factor` times its input channels, its weights repeated along
    them: on concatenated maps [a, b] it starts as the conv of a + b."""
    new = nn.Conv2d(conv.in_channels * factor, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(torch.cat([conv.weight] * factor, dim=1))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def widen_input_(block: nn.Module, factor: int = 2) -> None:
    """Let the first block of the stage after a concatenation fusion take the 2C channels."""
    if block.downsample is None:
        raise ValueError("concatenation fusion needs a projection shortcut after it (fuse below layer4 of a ResNet)")
    block.conv1 = repeat_input(block.conv1, factor)
    block.downsample[0] = repeat_input(block.downsample[0], factor)


def run_to(backbone: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """A stream from its input to the end of `layer`, its last block stopped before the ReLU."""
    x = stem(backbone, x)
    for name in STAGES[:STAGES.index(layer) + 1]:
        blocks = getattr(backbone, name)
        for block in blocks[:-1]:
            x = block(x)
        x = pre_relu(blocks[-1], x)
    return x


def run_from(backbone: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The stages of a stream after `layer`, on post-ReLU maps."""
    for name in STAGES[STAGES.index(layer) + 1:]:
        x = getattr(backbone, name)(x)
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
        top = stage_channels(self.rgb, STAGES[-1])
        later = STAGES[STAGES.index(opt.fusion_layer) + 1:]
        self.fuse = Fuse(opt.fusion_type, channels)
        if opt.fusion_type == "concat" and later:  # the next stage takes [a, b]: 2C channels
            widen_input_(getattr(self.rgb, later[0])[0])
        ends = opt.fusion_type == "bilinear" or not later  # the fused tower ends at the fusion
        if opt.fusion_type == "bilinear":  # no positions left for the spatial stages after it
            for stage in later:
                setattr(self.rgb, stage, nn.Sequential())
        fused = self.fuse.out_channels(channels) if ends else top
        pooled = opt.temporal_pool == "3d"
        self.head = (Head(top, cfg.num_classes, cfg.dropout, TemporalPool(fused, top)) if pooled
                     else Head(fused, cfg.num_classes, cfg.dropout, None))
        self.flow_head = None
        if not opt.temporal_tower:  # the temporal stream ends at the fusion: no unused weights (DDP refuses them)
            for stage in STAGES[STAGES.index(opt.fusion_layer) + 1:]:
                setattr(self.flow, stage, nn.Sequential())
        else:
            self.flow_head = Head(top, cfg.num_classes, cfg.stream_dropout("flow"),
                                  TemporalPool(top) if pooled else None)

    @property
    def output_keys(self) -> tuple[str, ...]:
        return ("fusion", "flow") if self.flow_head is not None else ("fusion",)

    def score_units(self, units: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"rgb": (N, T, 3, H, W), "flow": (N, T, 2L, H, W)} clips -> logits (N, classes) per tower."""
        t = units["rgb"].shape[1]
        layer = self.opt.fusion_layer
        a = run_to(self.rgb, units["rgb"].flatten(0, 1), layer)
        m = run_to(self.flow, units["flow"].flatten(0, 1), layer)
        fused = self.fuse(a, m)
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
    """The fusion network of `cfg` (its Options: fusion type and layer, temporal pooling, tower)."""
    return FusionNet(cfg)
