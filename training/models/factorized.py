"""R3D and R(2+1)D (Tran et al. 2018, "A closer look at spatiotemporal convolutions for action
recognition", arXiv 1711.11248): 3D ResNets whose t x d x d convolutions are either full 3D
(R3D) or factorized into a 1 x d x d spatial convolution to M_i channels, batch norm, ReLU,
and a t x 1 x 1 temporal convolution ((2+1)D).

    conv1  3x7x7, 64, stride 1x2x2          (R(2+1)D: 1x7x7 to M, then 3x1x1 to 64)
    conv2_x [3x3x3, 64] x 2 per block        blocks per stage: 18 layers [2, 2, 2, 2], 34 [3, 4, 6, 3]
    conv3_x 128, conv4_x 256, conv5_x 512    first block of each: stride 2 in time and space
    global spatio-temporal average pooling, fc

M_i = floor(t d^2 N_{i-1} N_i / (d^2 N_{i-1} + t N_i)) (the paper's eq. 1) makes each (2+1)D
block hold as many parameters as the 3D one it replaces (up to the extra batch norm and the
rounding): the networks differ in their nonlinearities and ease of optimisation, not in size.
Each (2+1)D convolution is the spatial 1xdxd conv, batch norm, ReLU, then the temporal tx1x1
conv (VMZ's video_model.py), the stem included. With 400 classes our R3D-18 has 33,371,472
parameters and our R(2+1)D-18 33,383,797. The authors' model zoo (VMZ c2/tutorials/models.md)
lists 33.4 M for R3D-18 and 33.3 M for R(2+1)D-18 (their "R2.5D-18"; their stem's middle
width is 45 where eq. 1 gives 83, and how they count is not stated). What
tests/test_model_factorized.py checks: R3D-18 has exactly torchvision's r3d_18 count, and
R(2+1)D-18 is within 0.1 % of R3D-18 (eq. 1 at work); not the 33.3 M figure itself.
Shortcuts are identities, or a strided 1x1x1 convolution + batch norm where the shape changes.

Scaled-down copies: Options.width (64 in the paper; the CLI's --width-mult scales it) sets
the channels of conv1 and conv2_x, doubling per stage; `depth` 10 has one block per stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models.base import ModelConfig, VideoClassifier
from training.models.clip_input import check_rgb_only, rgb_volumes
from training.models.option_spec import WIDTH_MULT, OptionSpec

BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 26: (2, 3, 4, 3), 34: (3, 4, 6, 3)}
CONVS = {"r3d": "3d", "r2plus1d": "2plus1d"}
# Tran et al. 2018: clips of 16 frames at 112 x 112.
INPUT = {"streams": "rgb", "rgb_frames": 16, "crop_size": 112}
PAPER_WIDTH = 64  # conv1's channels at --width-mult 1


@dataclass(frozen=True, kw_only=True)
class Options:
    """depth (10, 18, 26, 34) and width (conv1's channels; the paper's 64)."""

    depth: int = 18
    width: int = 64

    def __post_init__(self) -> None:
        if self.depth not in BLOCKS:
            raise ValueError(f"depth must be one of {sorted(BLOCKS)}, got {self.depth}")
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")


OPTIONS = (
    WIDTH_MULT,
    OptionSpec(flag="depth", default="18", choices=tuple(str(d) for d in BLOCKS), help="ResNet depth."),
)


def options_from_cli(values: dict) -> Options:
    """The Options the parsed command-line values (OPTIONS' keys) describe."""
    return Options(depth=int(values["depth"]), width=max(1, round(PAPER_WIDTH * values["width_mult"])))


def check(cfg: ModelConfig) -> None:
    """Raise ValueError naming the first setting R3D / R(2+1)D cannot build."""
    if cfg.model not in CONVS:
        raise ValueError(f"training.models.factorized builds {sorted(CONVS)}, not {cfg.model!r}")
    check_rgb_only(cfg, cfg.model)


def mid_channels(n_in: int, n_out: int, t: int = 3, d: int = 3) -> int:
    """M_i of Tran et al. 2018, eq. 1: the (2+1)D block's inner width that matches the
    parameters of a t x d x d 3D convolution from n_in to n_out channels."""
    return (t * d * d * n_in * n_out) // (d * d * n_in + t * n_out)


def st_conv(n_in: int, n_out: int, kind: str, *, t: int = 3, d: int = 3, stride: tuple[int, int] = (1, 1)) -> nn.Module:
    """One t x d x d convolution, full 3D or (2+1)D; stride = (temporal, spatial)."""
    st, ss = stride
    if kind == "3d":
        return nn.Conv3d(n_in, n_out, (t, d, d), stride=(st, ss, ss), padding=(t // 2, d // 2, d // 2), bias=False)
    mid = mid_channels(n_in, n_out, t, d)
    return nn.Sequential(
        nn.Conv3d(n_in, mid, (1, d, d), stride=(1, ss, ss), padding=(0, d // 2, d // 2), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, n_out, (t, 1, 1), stride=(st, 1, 1), padding=(t // 2, 0, 0), bias=False),
    )


class Block(nn.Module):
    """A basic residual block: two t x d x d convolutions (3D or (2+1)D) with batch norm."""

    def __init__(self, n_in: int, n_out: int, kind: str, stride: int):
        super().__init__()
        self.conv1 = st_conv(n_in, n_out, kind, stride=(stride, stride))
        self.bn1 = nn.BatchNorm3d(n_out)
        self.conv2 = st_conv(n_out, n_out, kind)
        self.bn2 = nn.BatchNorm3d(n_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or n_in != n_out:
            self.shortcut = nn.Sequential(nn.Conv3d(n_in, n_out, 1, stride=stride, bias=False), nn.BatchNorm3d(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def stem(width: int, kind: str) -> nn.Sequential:
    """conv1: 3x7x7, stride 1x2x2 (factorized like every other conv in R(2+1)D)."""
    return nn.Sequential(st_conv(3, width, kind, t=3, d=7, stride=(1, 2)), nn.BatchNorm3d(width), nn.ReLU(inplace=True))


class VideoResNet(VideoClassifier):
    """forward({"rgb": (B, V, K, 3F, S, S)}) -> {"rgb": (B, N)}; any F and S (global pooling)."""

    def __init__(self, cfg: ModelConfig):
        check(cfg)
        super().__init__(cfg)
        opts = cfg.options or Options()
        kind = CONVS[cfg.model]
        self.frames = cfg.rgb_frames
        layers: list[nn.Module] = [stem(opts.width, kind)]
        n_in = opts.width
        for stage, blocks in enumerate(BLOCKS[opts.depth]):
            n_out = opts.width * 2**stage
            for i in range(blocks):
                layers.append(Block(n_in, n_out, kind, stride=2 if stage > 0 and i == 0 else 1))
                n_in = n_out
        self.trunk = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(n_in, cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def score_units(self, units: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"rgb": (N, 3F, S, S)} clips -> {"rgb": (N, classes)} logits."""
        pooled = torch.flatten(self.pool(self.trunk(rgb_volumes(units["rgb"], self.frames))), 1)
        return {"rgb": self.fc(self.dropout(pooled))}


def build(cfg: ModelConfig) -> VideoResNet:
    """R3D (cfg.model "r3d") or R(2+1)D ("r2plus1d") of cfg.options' depth and width."""
    return VideoResNet(cfg)
