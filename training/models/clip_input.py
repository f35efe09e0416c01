"""What the clip networks (C3D, R3D / R(2+1)D, FstCN, Karpathy et al.'s fusions, the
Siamese model) share: turning the batch layout into clip volumes and back, and sizing
their fully connected layers.

A stream tensor is (B, V, K, C, S, S) (training.models.base): for RGB, C = 3F holds the F
frames of a snippet stacked [r0, g0, b0, r1, ...]. The base hands a family one unit per
(item, view, snippet), (N, 3F, S, S); a 3D network wants (N, 3, F, S, S) volumes. Its
logits are averaged back over views and snippets by the base, as for every family.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from training.models.base import ModelConfig


def rgb_volumes(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(N, 3F, S, S) snippets -> (N, 3, F, S, S) volumes."""
    n, c, h, w = x.shape
    if c != 3 * frames:
        raise ValueError(
            f"the network takes {frames} RGB frames per snippet (3 x {frames} channels), "
            f"the batch holds {c} channels: train with --rgb-frames {frames}"
        )
    return x.reshape(n, frames, 3, h, w).transpose(1, 2)


def scaled(channels: int, mult: float) -> int:
    """A channel count times a width multiplier (at least 1): the papers' sizes at mult = 1."""
    return max(1, int(round(channels * mult)))


def flat_size(make: Callable[[], nn.Module], shape: tuple[int, ...]) -> int:
    """Features per example that the module `make()` builds outputs for inputs of `shape`
    (without the batch dimension): built and run on the meta device, so no memory is
    allocated and nothing is computed."""
    with torch.device("meta"):
        out = make()(torch.empty((1, *shape)))
    return int(out[0].numel())


def check_rgb_only(cfg: ModelConfig, family: str) -> None:
    """Raise ValueError unless `cfg` reads the RGB stream only."""
    if cfg.streams != "rgb":
        raise ValueError(f"{family} reads RGB clips only (--streams rgb), got streams={cfg.streams!r}")


def classifier_head(in_features: int, fc_dims: tuple[int, ...], num_classes: int, dropout: float) -> nn.Sequential:
    """FC layers with ReLU and dropout after each (fc6, fc7, ... as in AlexNet and C3D), then the
    classifier. Index 0-2 are the first FC layer, its ReLU and dropout: `features` read there."""
    layers: list[nn.Module] = []
    width = in_features
    for dim in fc_dims:
        layers += [nn.Linear(width, dim), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = dim
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
