"""What the clip networks (C3D, R3D / R(2+1)D, FstCN, Karpathy et al.'s fusions, the
Siamese model) share: turning the batch layout into clip volumes and back, and sizing
their fully connected layers.

A stream tensor is (B, V, K, C, S, S) (training.models.base): for RGB, C = 3F holds the F
frames of a snippet stacked [r0, g0, b0, r1, ...]. A 3D network wants (N, 3, F, S, S)
volumes, one per (item, view, snippet); its logits are averaged back over views and
snippets, as the two-stream family averages its snippets' scores.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from training.models.base import ModelConfig, check_input


def rgb_volumes(x: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Size]:
    """(B, V, K, 3F, S, S) -> ((B*V*K, 3, F, S, S), (B, V, K)): one volume per snippet and view."""
    check_input(x, "rgb")
    b, v, k, c, h, w = x.shape
    if c != 3 * frames:
        raise ValueError(f"the network takes {frames} RGB frames per snippet (3 x {frames} channels), "
                         f"the batch holds {c} channels: train with --rgb-frames {frames}")
    return x.reshape(b * v * k, frames, 3, h, w).transpose(1, 2), x.shape[:3]


def per_item(out: torch.Tensor, views: torch.Size) -> torch.Tensor:
    """(B*V*K, ...) -> (B, ...): the mean over views and snippets (the clip-score consensus)."""
    return out.unflatten(0, views).mean((1, 2))


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
