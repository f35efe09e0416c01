"""Two-stream networks (Simonyan & Zisserman 2014; TSN): a spatial stream on one RGB frame,
a temporal stream on 2L flow channels, fused late or by a conv layer.

Both streams are torchvision ResNets, or VGG-16 (`arch="vgg16"`, Simonyan & Zisserman's
very deep streams as Feichtenhofer et al. 2016 train them: conv1_1 ... relu5_3, then pool5,
fc6, fc7 with their ImageNet weights, and a new fc8; dropout `dropout` after fc6 and fc7).
The temporal stream's first convolution takes 2L channels and is initialised by
cross-modality pre-training (backbones.cross_modality_conv).

Fusion:
    late  weighted average of the streams' class scores (softmax), rgb:flow = 1:1.5 by
          default as in TSN; each stream is trained with its own loss.
    conv  the last conv maps of both streams are concatenated, fused by a 1x1 or 3x3
          convolution, pooled and classified; trained with the fused loss plus each
          stream's loss, so per-stream scores stay meaningful. (training.models.fusion has
          Feichtenhofer et al.'s fusion family with temporal pooling.)

The V views and K snippets of an item are scored one by one and their scores averaged
(TSN's segmental consensus, in VideoClassifier.forward).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from training.models.backbones import (
    STAGES,
    VGG_POOL5,
    check_arch,
    is_vgg,
    resnet_trunk,
    stage_channels,
    stream_backbone,
    stream_top,
    vgg_features,
)
from training.models.base import ModelConfig, VideoClassifier

FUSIONS = ("late", "conv")
FUSION_KERNELS = (1, 3)  # side of the conv fusion's kernel


def check(cfg: ModelConfig) -> None:
    """Raise ValueError naming the first setting this family cannot build."""
    check_arch(cfg.arch)
    if cfg.fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {cfg.fusion!r}; choose one of {FUSIONS}")
    if cfg.fusion == "conv" and cfg.stream_names != ("rgb", "flow"):
        raise ValueError(
            f"conv fusion needs both streams, rgb and flow, got streams={cfg.streams!r} (three streams fuse late)"
        )
    if cfg.fusion_kernel not in FUSION_KERNELS:
        raise ValueError(f"fusion_kernel must be one of {FUSION_KERNELS}, got {cfg.fusion_kernel}")
    if cfg.rgb_frames != 1:
        raise ValueError(f"the spatial stream sees one RGB frame per snippet, got rgb_frames={cfg.rgb_frames}")


class Stream(nn.Module):
    """One stream: a trunk to the last conv maps (ResNet: conv1 ... layer4; VGG-16: conv1_1 ...
    relu5_3), its top (ResNet: global average pooling; VGG-16: pool5, fc6, fc7), dropout, classifier."""

    trunk: nn.Sequential

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float):
        super().__init__()
        self.trunk = vgg_features(backbone)[:VGG_POOL5] if is_vgg(backbone) else resnet_trunk(backbone)
        self.maps_dim = stage_channels(backbone, STAGES[-1])
        self.top, self.feature_dim = stream_top(backbone, dropout)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def classify(self, maps: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.top(maps)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.trunk(x))


def build_stream(cfg: ModelConfig, stream: str) -> Stream:
    """The spatial (rgb) or a temporal (flow, warped flow) stream of `cfg`."""
    backbone = stream_backbone(cfg.arch, cfg.weights, stream, cfg.clip_len, cfg.flow_weights)
    return Stream(backbone, cfg.num_classes, cfg.stream_dropout(stream))


class ConvFusion(nn.Module):
    """Concatenate two streams' last conv maps, fuse with a 1x1/3x3 conv, pool, classify."""

    def __init__(self, channels: int, num_classes: int, kernel: int, dropout: float):
        super().__init__()
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * channels, channels, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, rgb_maps: torch.Tensor, flow_maps: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(torch.cat([rgb_maps, flow_maps], dim=1))
        return self.fc(self.dropout(torch.flatten(self.pool(fused), 1)))


def run_trunk(trunk: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Apply a trunk to (N, C, H, W), matching the weights' memory format (no layout copy in conv1)."""
    conv1 = cast(nn.Conv2d, trunk[0])  # a ResNet trunk starts with conv1 (backbones.resnet_trunk)
    if conv1.weight.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    return trunk(x)


class TwoStream(VideoClassifier):
    """The streams of `cfg` plus optional conv fusion; forward returns logits per output.

    forward(batch) takes {"rgb": (B, V, K, 3, H, W), "flow": (B, V, K, 2L, H, W)} (the
    streams it has) and returns {"rgb": (B, N), "flow": (B, N)[, "fused": (B, N) for conv
    fusion]}, each averaged over the V views and K snippets.
    """

    streams: nn.ModuleDict  # stream name -> Stream (read them typed with `stream`)
    fusion: ConvFusion | None

    def __init__(self, cfg: ModelConfig):
        check(cfg)
        super().__init__(cfg)
        self.streams = nn.ModuleDict({s: build_stream(cfg, s) for s in cfg.stream_names})
        self.fusion = None
        if cfg.fusion == "conv":
            dim = self.stream("rgb").maps_dim
            self.fusion = ConvFusion(dim, cfg.num_classes, cfg.fusion_kernel, cfg.dropout)
        if cfg.partial_bn:
            freeze_partial_bn(self)

    def stream(self, name: str) -> Stream:
        """The stream `name` as a Stream (a ModuleDict hands out plain Modules)."""
        return cast(Stream, self.streams[name])

    @property
    def output_keys(self) -> tuple[str, ...]:
        return self.cfg.stream_names + (("fused",) if self.fusion is not None else ())

    def score_units(self, units: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{stream: (N, C, H, W)} snippets -> logits (N, classes) per stream [and "fused"]."""
        maps = {name: run_trunk(self.stream(name).trunk, units[name]) for name in self.streams}
        out = {name: self.stream(name).classify(m) for name, m in maps.items()}
        if self.fusion is not None:
            out["fused"] = self.fusion(maps["rgb"], maps["flow"])
        return out

    def train(self, mode: bool = True) -> TwoStream:
        super().train(mode)
        if mode and self.cfg.partial_bn:
            for bn in frozen_bns(self):
                bn.eval()  # keep ImageNet statistics: small batches of flow would wreck them
        return self


def frozen_bns(model: TwoStream) -> list[nn.BatchNorm2d]:
    """Partial BN (TSN): every BatchNorm of each stream except the first one."""
    out = []
    for name in model.streams:
        bns = [m for m in model.stream(name).trunk.modules() if isinstance(m, nn.BatchNorm2d)]
        out.extend(bns[1:])
    return out


def freeze_partial_bn(model: TwoStream) -> None:
    """Freeze the affine parameters of the BatchNorms partial BN keeps in eval mode."""
    for bn in frozen_bns(model):
        bn.weight.requires_grad_(False)
        bn.bias.requires_grad_(False)


def build(cfg: ModelConfig) -> TwoStream:
    """The two-stream (or single-stream) network of `cfg`."""
    return TwoStream(cfg)
