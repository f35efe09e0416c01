"""torchvision ResNet backbones shared by the model families: weights and cross-modality init."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)

# Explicit factory: architecture name -> (constructor, ImageNet weights enum).
ARCHS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V2),
    "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V2),
}


def check_arch(arch: str) -> None:
    """Raise ValueError naming `arch` unless it is one of ARCHS."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")


def cross_modality_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of `conv` taking `in_channels`, each channel's weights = the mean over the RGB ones.

    Cross-modality pre-training (TSN): ImageNet filters averaged over their 3 input
    channels and copied to all 2L flow channels, so a temporal stream starts from edge
    detectors that respond to flow images too.
    """
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
    check_arch(arch)
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


def resnet_trunk(backbone: nn.Module) -> nn.Sequential:
    """conv1 ... layer4 of a torchvision ResNet, as one Sequential (indices 0-3 stem, 4-7 layers)."""
    return nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool,
                         backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
