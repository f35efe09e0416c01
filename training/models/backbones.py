"""torchvision backbones shared by the model families (ResNets, and VGG-16 for the two-stream
and fusion families): weights, cross-modality init, the stages of a stream up to its last
conv maps, the pieces of a residual block (its residual path, its shortcut) that fusion
and cross-stream connections need, and the top of a stream (its maps to a feature vector).

VGG-16 (Simonyan & Zisserman's streams in Feichtenhofer et al. 2016; torchvision's, without
batch norm, as those papers) is cut into the stages a ResNet has, named alike: the stem is
conv1_1 ... relu1_2, "layerN" is poolN and the convolutions of block N + 1 (layer4 ends at
relu5_3, the authors' fusion point), and the top is pool5, fc6 and fc7 (ImageNet weights
kept; fc8 is each family's classifier).

Weights (Wang et al. 2015's first good practice: ImageNet initialisation for both streams):
None (random), "auto" (the default: torchvision's ImageNet weights from its cache, and a
clear error naming `--weights imagenet`, `--weights FILE` and `--weights none` when they
are not there; never a silent random start, never a download the user did not ask for),
"imagenet" (the same, downloaded into torchvision's cache when missing) or a local
torchvision state-dict file.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import cast
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from training.streams import FIELD_STREAMS

log = logging.getLogger(__name__)

# Explicit factory: architecture name -> (constructor, ImageNet weights enum).
ARCHS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V2),
    "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V2),
    "vgg16": (torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1),
}
RESNETS = tuple(a for a in ARCHS if a.startswith("resnet"))
# VGG-16's `features` indices: [start, end) of the stem and each stage; relu5_3 is index 29, pool5 30.
VGG_STAGES = {"stem": (0, 4), "layer1": (4, 9), "layer2": (9, 16), "layer3": (16, 23), "layer4": (23, 30)}
VGG_POOL5 = 30


def check_arch(arch: str) -> None:
    """Raise ValueError naming `arch` unless it is one of ARCHS."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")


def check_resnet(arch: str, family: str) -> None:
    """Raise ValueError naming `arch` unless it is a ResNet (families built on residual units)."""
    check_arch(arch)
    if arch not in RESNETS:
        raise ValueError(
            f"{family} is built on ResNet residual units; --arch {arch} is not one: choose one of {RESNETS}"
        )


def is_vgg(backbone: nn.Module) -> bool:
    """True for a torchvision VGG (its stages are slices of `features`), False for a ResNet."""
    return isinstance(backbone, torchvision.models.VGG)


def cross_modality_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of `conv` taking `in_channels`, each channel's weights = the mean over the RGB ones.

    Cross-modality pre-training (TSN): ImageNet filters averaged over their 3 input
    channels and copied to all 2L flow channels, so a temporal stream starts from edge
    detectors that respond to flow images too.
    """
    mean = conv.weight.detach().mean(dim=1, keepdim=True)
    return conv_like(conv, mean.expand(-1, in_channels, -1, -1))


def conv_like(conv: nn.Conv2d, weight: torch.Tensor) -> nn.Conv2d:
    """A Conv2d with `conv`'s geometry and bias, the input channels of `weight` and its values."""
    # torch annotates a Conv2d's own kernel_size, stride, padding and dilation as tuple[int, ...]; they are pairs.
    new = nn.Conv2d(
        weight.shape[1] * conv.groups,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        conv.groups,
        conv.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if conv.bias is not None and new.bias is not None:  # `new` has a bias exactly when `conv` has one
            new.bias.copy_(conv.bias)
    return new


def load_backbone(arch: str, weights: str | None) -> nn.Module:
    """A torchvision ResNet (or VGG-16) with no weights, ImageNet weights, or weights from a local file.

    A local file holds a torchvision state dict (e.g. resnet50-11ad3fa6.pth); it is read
    with weights_only=True, so it cannot run code.
    """
    check_arch(arch)
    ctor, _ = ARCHS[arch]
    if weights is None:
        log.info("%s: random initial weights (no --weights)", arch)
        return ctor(weights=None)
    if weights == "auto":
        path = cached_imagenet_file(arch)
    else:
        path = imagenet_file(arch) if weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise ValueError(f"weights must be None, 'auto', 'imagenet' or an existing file, got {weights!r}")
    model = ctor(weights=None)
    try:
        model.load_state_dict(read_state(path, f"--weights {weights}: a torchvision {arch} state dict"))
    except RuntimeError as exc:  # names or shapes of another network
        raise ValueError(f"--weights {weights}: {path} does not fit {arch}: {_first_line(exc)}") from exc
    log.info("loaded %s weights from %s", arch, path)
    return model


def read_state(path: str | Path, expected: str) -> dict:
    """A dict of tensors read with weights_only=True; ValueError naming `path` and what was
    `expected` when the file is not one (any bytes at all may reach the unpickler)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path}: not a weights file (expected {expected}; torch.load: {type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, expected {expected}")
    return obj


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


def imagenet_cache_path(arch: str) -> Path:
    """Where torchvision keeps `arch`'s ImageNet weights (TORCH_HOME/hub/checkpoints/<file>)."""
    url = ARCHS[arch][1].url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def cached_imagenet_file(arch: str) -> Path:
    """The ImageNet weights of `arch` in torchvision's cache; ValueError saying how to go on when absent."""
    path = imagenet_cache_path(arch)
    if not path.is_file():
        raise ValueError(
            f"ImageNet weights for {arch} are not in torchvision's cache ({path}): download them with "
            f"--weights imagenet, pass --weights FILE (a torchvision state dict), or --weights none to "
            f"train from random initial weights"
        )
    return path


def imagenet_file(arch: str, timeout: float = 30.0) -> Path:
    """The cached ImageNet weights of `arch`, downloaded into torchvision's cache when missing.

    Offline (or when the download fails) this raises ValueError saying how to go on:
    a local copy with --weights FILE, or --weights none for a random start.
    """
    path = imagenet_cache_path(arch)
    if path.is_file():
        return path
    url = ARCHS[arch][1].url
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # torch.hub's urlopen has none: offline must not hang
    try:
        log.info("downloading %s ImageNet weights from %s", arch, url)
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except (OSError, RuntimeError) as exc:
        raise ValueError(
            f"ImageNet weights for {arch} are not in torchvision's cache ({path}) and could not be downloaded "
            f"from {url} ({exc}): put that file there, pass --weights FILE (a torchvision state dict), or "
            "--weights none to train from random initial weights"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    return path


def resnet_trunk(backbone: nn.Module) -> nn.Sequential:
    """conv1 ... layer4 of a torchvision ResNet, as one Sequential (indices 0-3 stem, 4-7 layers)."""
    return nn.Sequential(*(backbone.get_submodule(name) for name in TRUNK_NAMES))


# --- pieces of a residual block (torchvision BasicBlock or Bottleneck) ---------------------------

STAGES = ("layer1", "layer2", "layer3", "layer4")


# torchvision ships no type information (no py.typed), so mypy reads its classes as Any: a block
# annotated BasicBlock | Bottleneck (or a backbone cast to ResNet) names what it is, and its
# children are not read as nn.Module attributes (Tensor | Module, never callable to mypy).
def residual_branch(block: BasicBlock | Bottleneck, x: torch.Tensor) -> torch.Tensor:
    """The residual path F(x) of a block: its convolutions, without shortcut or final ReLU."""
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, Bottleneck):
        out = block.relu(block.bn2(block.conv2(out)))
        return block.bn3(block.conv3(out))
    return block.bn2(block.conv2(out))


def shortcut(block: BasicBlock | Bottleneck, x: torch.Tensor) -> torch.Tensor:
    """The block's identity path (its 1x1 projection where it changes size)."""
    return x if block.downsample is None else block.downsample(x)


def pre_relu(block: BasicBlock | Bottleneck, x: torch.Tensor) -> torch.Tensor:
    """F(x) + shortcut(x): the block's output before its last ReLU."""
    return residual_branch(block, x) + shortcut(block, x)


def stem(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv1, bn1, ReLU and max pooling of a torchvision ResNet (VGG-16: conv1_1 ... relu1_2)."""
    if is_vgg(backbone):
        return vgg_slice(backbone, *VGG_STAGES["stem"])(x)
    resnet = cast(ResNet, backbone)
    return resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))


def vgg_features(backbone: nn.Module) -> nn.Sequential:
    """A VGG's `features` (conv1_1 ... pool5): a Sequential by construction (torchvision's make_layers)."""
    return cast(nn.Sequential, backbone.features)


def vgg_classifier(backbone: nn.Module) -> nn.Sequential:
    """A VGG's `classifier` (fc6, ReLU, dropout, fc7, ReLU, dropout, fc8): a Sequential by construction."""
    return cast(nn.Sequential, backbone.classifier)


def vgg_slice(backbone: nn.Module, start: int, end: int) -> nn.Sequential:
    """VGG `features[start:end]`: the same modules (and weights), as a Sequential."""
    return vgg_features(backbone)[start:end]


def run_stage(backbone: nn.Module, stage: str, x: torch.Tensor, *, before_relu: bool = False) -> torch.Tensor:
    """One stage (layer1 ... layer4) of a stream; `before_relu` stops before its last ReLU
    (a ResNet's last block without its ReLU: F(x) + shortcut(x); VGG: the last conv's output)."""
    if is_vgg(backbone):
        start, end = VGG_STAGES[stage]
        return vgg_slice(backbone, start, end - 1 if before_relu else end)(x)
    blocks = getattr(backbone, stage)
    if not before_relu:
        return blocks(x)
    for block in blocks[:-1]:
        x = block(x)
    return pre_relu(blocks[-1], x)


def drop_stages_(backbone: nn.Module, stages: tuple[str, ...] | list[str]) -> None:
    """Remove `stages` of a stream whose maps are no longer used (no unused weights: DDP refuses them)."""
    for stage in stages:
        if is_vgg(backbone):
            for i in range(*VGG_STAGES[stage]):
                vgg_features(backbone)[i] = nn.Identity()
        else:
            setattr(backbone, stage, nn.Sequential())


def first_conv(backbone: nn.Module, stage: str) -> tuple[nn.Module, str]:
    """The module holding a stage's first convolution and that convolution's attribute name."""
    if is_vgg(backbone):
        start, end = VGG_STAGES[stage]
        features = vgg_features(backbone)
        index = next(i for i in range(start, end) if isinstance(features[i], nn.Conv2d))
        return features, str(index)
    return getattr(backbone, stage)[0], "conv1"


def stream_top(backbone: nn.Module, dropout: float) -> tuple[nn.Module, int]:
    """(module, its output width): a stream's last conv maps (after layer4) -> feature vector.

    ResNet: global average pooling. VGG-16: pool5, torchvision's adaptive 7x7 pooling, fc6,
    ReLU, dropout and fc7, ReLU, with their ImageNet weights (the dropout before the
    classifier, fc8, is the family's), as in the authors' networks. A VGG backbone gives
    its fc layers away (they move into the top, so no weight has two names).
    """
    if not is_vgg(backbone):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)), stage_channels(backbone, STAGES[-1])
    classifier = vgg_classifier(backbone)
    fc6, fc7 = classifier[0], cast(nn.Linear, classifier[3])
    drop_top_(backbone)
    top = nn.Sequential(
        vgg_features(backbone)[VGG_POOL5],
        backbone.get_submodule("avgpool"),
        nn.Flatten(1),
        fc6,
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        fc7,
        nn.ReLU(inplace=True),
    )
    return top, fc7.out_features


def drop_top_(backbone: nn.Module) -> None:
    """Remove a VGG stream's fc6 and fc7 when nothing uses them (a ResNet's top has no weights)."""
    if is_vgg(backbone):
        backbone.classifier = nn.Identity()


def check_snippet_streams(cfg, family: str) -> None:
    """Raise ValueError unless `cfg` (a ModelConfig) has both streams, one RGB frame per snippet
    and T >= 1 ordered snippets: what the fusion and ST-ResNet families take."""
    check_arch(cfg.arch)
    if cfg.streams != "both":
        raise ValueError(f"{family} needs both streams, got streams={cfg.streams!r}")
    if cfg.rgb_frames != 1:
        raise ValueError(
            f"{family}: the spatial stream sees one RGB frame per snippet, got rgb_frames={cfg.rgb_frames}"
        )
    if cfg.snippets < 1:
        raise ValueError(f"{family} takes clips of T >= 1 snippets in time order, got snippets={cfg.snippets}")


def stage_channels(backbone: nn.Module, stage: str) -> int:
    """Channels out of a stage (layer1 ... layer4) of a torchvision ResNet or VGG-16."""
    if is_vgg(backbone):
        start, end = VGG_STAGES[stage]
        return [m for m in vgg_features(backbone)[start:end] if isinstance(m, nn.Conv2d)][-1].out_channels
    last = getattr(backbone, stage)[-1]
    return (last.bn3 if isinstance(last, Bottleneck) else last.bn2).num_features


def stream_backbone(
    arch: str, weights: str | None, stream: str, clip_len: int, flow_weights: str | None = None
) -> nn.Module:
    """A torchvision ResNet (or VGG-16) for the spatial (rgb) or temporal (flow) stream, without
    its ImageNet classifier (ResNet: fc; VGG: fc8, its fc6 and fc7 kept for `stream_top`).

    A temporal stream's (flow or warped flow) first conv takes 2L channels, cross-modality
    initialised from `weights`, unless `flow_weights` names a pre-trained temporal stream
    (e.g. trained on `flowshard pretrain-flow` data), whose weights then replace all of it.
    """
    fields = stream in FIELD_STREAMS
    if arch not in RESNETS and flow_weights:
        raise ValueError(f"--flow-weights reads a ResNet temporal stream; --arch {arch} takes none")
    backbone = load_backbone(arch, None if fields and flow_weights else weights)
    if arch not in RESNETS:
        if fields:
            features = vgg_features(backbone)
            features[0] = cross_modality_conv(cast(nn.Conv2d, features[0]), 2 * clip_len)
        vgg_classifier(backbone)[6] = nn.Identity()
        return backbone
    if fields:
        backbone.conv1 = cross_modality_conv(cast(ResNet, backbone).conv1, 2 * clip_len)
    backbone.fc = nn.Identity()
    if fields and flow_weights:
        load_flow_weights(backbone, flow_weights)
    return backbone


# Names of the entries of two_stream's trunk Sequential, in torchvision's naming.
TRUNK_NAMES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def flow_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A temporal stream's weights in torchvision's names, from a flowshard checkpoint (a
    two_stream or fusion model with a flow stream) or a torchvision state-dict file."""
    obj = read_state(path, "--flow-weights: a flowshard checkpoint or a torchvision state dict")
    state = obj["model"] if isinstance(obj, dict) and "model" in obj and "config" in obj else obj
    out = {}
    for key, value in state.items():
        if key.startswith("streams.flow.trunk."):
            index, _, rest = key[len("streams.flow.trunk.") :].partition(".")
            out[f"{TRUNK_NAMES[int(index)]}.{rest}"] = value
        elif key.startswith("flow.") and not key.startswith("flow_"):
            out[key[len("flow.") :]] = value
    return out or dict(state)


def load_flow_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a pre-trained temporal stream into `backbone` (ValueError naming the file when it does not fit)."""
    if not Path(path).is_file():
        raise ValueError(f"flow weights: no file {path}")
    state = {k: v for k, v in flow_state_dict(path).items() if not k.startswith("fc.")}
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape differs, e.g. conv1 trained for another clip length
        raise ValueError(f"flow weights {path} do not fit this temporal stream: {exc}") from exc
    if missing or unexpected:
        raise ValueError(
            f"flow weights {path} do not fit this temporal stream: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    log.info("temporal stream initialised from %s", path)
