"""Two-stream networks: a spatial stream on one RGB frame, a temporal stream on 2L flow channels.

Both streams are torchvision ResNets. The temporal stream's first convolution takes
2L channels and is initialised by cross-modality pre-training (TSN): the RGB filters are
averaged over their 3 input channels and copied to all 2L, so ImageNet weights still
start from useful edge detectors on flow images.

Fusion:
    late  weighted average of the streams' class scores (softmax), rgb:flow = 1:1.5 by
          default as in TSN; each stream is trained with its own loss.
    conv  Feichtenhofer et al. 2016: the last conv maps of both streams are concatenated,
          fused by a 1x1 or 3x3 convolution, pooled and classified; trained with the fused
          loss plus each stream's loss, so per-stream scores stay meaningful.

A batch holds V views per item (TSN segments while training, crops at test); the model
averages the V scores of an item (TSN's segmental consensus).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)

STREAMS = ("rgb", "flow")
STREAM_CHOICES = ("rgb", "flow", "both")
FUSIONS = ("late", "conv")

# Explicit factory: architecture name -> (constructor, ImageNet weights enum).
ARCHS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V2),
    "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V2),
}


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """What network to build. weights: None, "imagenet" (torchvision download) or a local file."""

    arch: str = "resnet50"
    streams: str = "both"
    num_classes: int
    clip_len: int = 10
    in_channels_flow: int | None = None  # defaults to 2 * clip_len; checked when given
    weights: str | None = None
    dropout: float = 0.5
    partial_bn: bool = False
    fusion: str = "late"
    fusion_weights: tuple[float, float] = (1.0, 1.5)  # rgb, flow
    fusion_kernel: int = 1

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {sorted(ARCHS)}")
        if self.streams not in STREAM_CHOICES:
            raise ValueError(f"unknown streams {self.streams!r}; choose one of {STREAM_CHOICES}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.streams != "rgb" and self.clip_len < 1:
            raise ValueError(f"the flow stream needs clip_len >= 1, got {self.clip_len}")
        if self.in_channels_flow is not None and self.in_channels_flow != 2 * self.clip_len:
            raise ValueError(f"the temporal stream takes 2 * clip_len = {2 * self.clip_len} channels "
                             f"(x and y per field), got in_channels_flow={self.in_channels_flow}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {self.fusion!r}; choose one of {FUSIONS}")
        if self.fusion == "conv" and self.streams != "both":
            raise ValueError(f"conv fusion needs both streams, got streams={self.streams!r}")
        if len(self.fusion_weights) != 2 or min(self.fusion_weights) < 0 or sum(self.fusion_weights) <= 0:
            raise ValueError(f"fusion_weights must be two non-negative numbers, got {self.fusion_weights}")
        if self.fusion_kernel not in (1, 3):
            raise ValueError(f"fusion_kernel must be 1 or 3, got {self.fusion_kernel}")

    @property
    def stream_names(self) -> tuple[str, ...]:
        return STREAMS if self.streams == "both" else (self.streams,)


def cross_modality_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of `conv` taking `in_channels`, each channel's weights = the mean over the RGB ones."""
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():
        mean = conv.weight.mean(dim=1, keepdim=True)
        new.weight.copy_(mean.expand(-1, in_channels, -1, -1))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def load_backbone(arch: str, weights: str | None) -> nn.Module:
    """A torchvision ResNet with no weights, ImageNet weights, or weights from a local file.

    A local file holds a torchvision state dict (e.g. resnet50-11ad3fa6.pth); it is read
    with weights_only=True, so it cannot run code.
    """
    ctor, imagenet = ARCHS[arch]
    if weights is None:
        return ctor(weights=None)
    if weights == "imagenet":
        return ctor(weights=imagenet)
    path = Path(weights)
    if not path.is_file():
        raise ValueError(f"weights must be None, 'imagenet' or an existing file, got {weights!r}")
    model = ctor(weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    log.info("loaded %s weights from %s", arch, path)
    return model


class Stream(nn.Module):
    """One stream: a ResNet trunk (conv1 ... layer4), global pooling, dropout, classifier."""

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float):
        super().__init__()
        self.trunk = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool,
                                   backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
        self.feature_dim = backbone.fc.in_features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def classify(self, maps: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(maps), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.trunk(x))


def build_stream(cfg: ModelConfig, stream: str) -> Stream:
    """The spatial (rgb) or temporal (flow) stream of `cfg`."""
    backbone = load_backbone(cfg.arch, cfg.weights)
    if stream == "flow":
        channels = cfg.in_channels_flow or 2 * cfg.clip_len
        backbone.conv1 = cross_modality_conv(backbone.conv1, channels)
    return Stream(backbone, cfg.num_classes, cfg.dropout)


class ConvFusion(nn.Module):
    """Concatenate two streams' last conv maps, fuse with a 1x1/3x3 conv, pool, classify."""

    def __init__(self, channels: int, num_classes: int, kernel: int, dropout: float):
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(2 * channels, channels, kernel, padding=kernel // 2, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, rgb_maps: torch.Tensor, flow_maps: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(torch.cat([rgb_maps, flow_maps], dim=1))
        return self.fc(self.dropout(torch.flatten(self.pool(fused), 1)))


class TwoStream(nn.Module):
    """The streams of `cfg` plus optional conv fusion; forward returns logits per output.

    forward(batch) takes {"rgb": (B, V, 3, H, W), "flow": (B, V, 2L, H, W)} (the streams
    it has) and returns {"rgb": (B, K), "flow": (B, K)[, "fused": (B, K) for conv fusion]},
    each averaged over the V views.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.streams = nn.ModuleDict({s: build_stream(cfg, s) for s in cfg.stream_names})
        self.fusion = None
        if cfg.fusion == "conv":
            dim = self.streams["rgb"].feature_dim
            self.fusion = ConvFusion(dim, cfg.num_classes, cfg.fusion_kernel, cfg.dropout)
        if cfg.partial_bn:
            freeze_partial_bn(self)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        maps, views = {}, None
        for name, stream in self.streams.items():
            x = batch[name]
            if x.dim() != 5:
                raise ValueError(f"{name} input must be (B, V, C, H, W), got shape {tuple(x.shape)}")
            views = x.shape[:2]
            x = x.flatten(0, 1)
            if stream.trunk[0].weight.is_contiguous(memory_format=torch.channels_last):
                x = x.contiguous(memory_format=torch.channels_last)  # match the weights: no layout copy in conv1
            maps[name] = stream.trunk(x)
        out = {name: self.streams[name].classify(m).unflatten(0, views).mean(1) for name, m in maps.items()}
        if self.fusion is not None:
            out["fused"] = self.fusion(maps["rgb"], maps["flow"]).unflatten(0, views).mean(1)
        return out

    def train(self, mode: bool = True) -> "TwoStream":
        super().train(mode)
        if mode and self.cfg.partial_bn:
            for bn in frozen_bns(self):
                bn.eval()  # keep ImageNet statistics: small batches of flow would wreck them
        return self


def frozen_bns(model: TwoStream) -> list[nn.BatchNorm2d]:
    """Partial BN (TSN): every BatchNorm of each stream except the first one."""
    out = []
    for stream in model.streams.values():
        bns = [m for m in stream.trunk.modules() if isinstance(m, nn.BatchNorm2d)]
        out.extend(bns[1:])
    return out


def freeze_partial_bn(model: TwoStream) -> None:
    """Freeze the affine parameters of the BatchNorms partial BN keeps in eval mode."""
    for bn in frozen_bns(model):
        bn.weight.requires_grad_(False)
        bn.bias.requires_grad_(False)


def build_model(cfg: ModelConfig) -> TwoStream:
    """The two-stream (or single-stream) network of `cfg`."""
    return TwoStream(cfg)


def class_scores(logits: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Softmax scores per stream and fused: conv fusion's own head, or the weighted late average.

    Late fusion averages probabilities, not logits, so a stream that is unsure (such as a
    spatial stream on classes that differ only by motion) pulls the fused score little.
    """
    scores = {name: torch.softmax(x.float(), dim=1) for name, x in logits.items()}
    if "fused" not in scores:
        if len(cfg.stream_names) == 1:
            scores["fused"] = scores[cfg.stream_names[0]]
        else:
            w_rgb, w_flow = cfg.fusion_weights
            scores["fused"] = (w_rgb * scores["rgb"] + w_flow * scores["flow"]) / (w_rgb + w_flow)
    return scores


def loss_outputs(cfg: ModelConfig) -> tuple[str, ...]:
    """Which logits the loss sums: each stream, plus the fused head for conv fusion."""
    return cfg.stream_names + (("fused",) if cfg.fusion == "conv" else ())
