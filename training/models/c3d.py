"""C3D (Tran et al. 2015, "Learning spatiotemporal features with 3D convolutional networks",
arXiv 1412.0767): 3x3x3 convolutions and 3D pooling throughout, on 16-frame clips of
112 x 112 RGB frames.

    conv1a 64 - pool1 1x2x2 - conv2a 128 - pool2 2x2x2 - conv3a,b 256 - pool3 - conv4a,b 512 - pool4
    - conv5a,b 512 - pool5 2x2x2 (padded: 2x7x7 -> 1x4x4) - fc6 4096 - fc7 4096 - softmax

Every conv is 3x3x3 with stride 1 and padding 1 (followed by ReLU); pool1 keeps time so the
temporal signal is not merged too early; fc6 and fc7 have dropout 0.5. With 101 classes the
network has 78.4 M parameters (the figure mmaction2 reports for its Sports-1M C3D on UCF101).

Feature extractor: `features` returns the fc6 activations (after ReLU) of each item, the
clips' features averaged; `flowshard features` averages them over a video's clips and
L2-normalises them, as the paper does before its linear SVM.

Scaled-down copies (CPU benchmarks): Options.width_mult scales every conv's channels and
fc_dim the FC layers; `size` is the crop the FC layers are built for (the CLI passes
--crop-size). Batch norm after each conv is an option the paper does not have (off).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models.base import ModelConfig, VideoClassifier
from training.models.clip_input import check_rgb_only, classifier_head, flat_size, rgb_volumes, scaled
from training.models.option_spec import FC_DIM, PAPER_FC_DIM, WIDTH_MULT, OptionSpec

# (channels, pool after it) for conv1a ... conv5b; None: no pool. pool5 pads H and W by one.
LAYERS = (
    (64, (1, 2, 2)),
    (128, (2, 2, 2)),
    (256, None),
    (256, (2, 2, 2)),
    (512, None),
    (512, (2, 2, 2)),
    (512, None),
    (512, "pool5"),
)


@dataclass(frozen=True, kw_only=True)
class Options:
    """C3D's size: width_mult x the paper's channels, fc6/fc7 width, input crop, batch norm."""

    width_mult: float = 1.0
    fc_dim: int = 4096
    size: int = 112
    batch_norm: bool = False

    def __post_init__(self) -> None:
        if self.width_mult <= 0 or self.fc_dim < 1:
            raise ValueError(f"width_mult must be > 0 and fc_dim >= 1, got {self.width_mult}, {self.fc_dim}")
        if self.size < 16:
            raise ValueError(f"size must be >= 16 (four 2x poolings and pool5), got {self.size}")


# Tran et al. 2015: 16-frame RGB clips at 112 x 112.
INPUT = {"streams": "rgb", "rgb_frames": 16, "crop_size": 112}
OPTIONS = (
    WIDTH_MULT,
    FC_DIM,
    OptionSpec(flag="conv-bn", type=bool, default=False, help="batch norm after every convolution (not in the paper)."),
)


def options_from_cli(values: dict) -> Options:
    """The Options the parsed command-line values (OPTIONS' keys and --crop-size) describe."""
    return Options(
        width_mult=values["width_mult"],
        fc_dim=values["fc_dim"] or PAPER_FC_DIM,
        size=values["crop_size"],
        batch_norm=values["conv_bn"],
    )


def options(cfg: ModelConfig) -> Options:
    return cfg.options or Options()


def check(cfg: ModelConfig) -> None:
    """Raise ValueError naming the first setting C3D cannot build."""
    check_rgb_only(cfg, "c3d")
    if cfg.rgb_frames < 16:
        raise ValueError(f"c3d halves time in pool2 ... pool5: it needs rgb_frames >= 16, got {cfg.rgb_frames}")


def conv_trunk(opts: Options) -> nn.Sequential:
    """conv1a ... pool5."""
    layers: list[nn.Module] = []
    width = 3
    for channels, pool in LAYERS:
        out = scaled(channels, opts.width_mult)
        layers.append(nn.Conv3d(width, out, 3, padding=1, bias=not opts.batch_norm))
        if opts.batch_norm:
            layers.append(nn.BatchNorm3d(out))
        layers.append(nn.ReLU(inplace=True))
        if pool == "pool5":
            layers.append(nn.MaxPool3d(2, stride=2, padding=(0, 1, 1)))
        elif isinstance(pool, tuple):
            layers.append(nn.MaxPool3d(pool, stride=pool))
        width = out
    return nn.Sequential(*layers)


class C3D(VideoClassifier):
    """forward({"rgb": (B, V, K, 3F, S, S)}) -> {"rgb": (B, N)}: each F-frame snippet is one
    clip; clip logits are averaged over views and snippets."""

    def __init__(self, cfg: ModelConfig):
        check(cfg)
        super().__init__(cfg)
        self.opts = options(cfg)
        self.frames = cfg.rgb_frames
        self.trunk = conv_trunk(self.opts)
        self.pool5_size = flat_size(lambda: conv_trunk(self.opts), (3, self.frames, self.opts.size, self.opts.size))
        self.head = classifier_head(self.pool5_size, (self.opts.fc_dim, self.opts.fc_dim), cfg.num_classes, cfg.dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _pool5(self, x: torch.Tensor) -> torch.Tensor:
        clips = rgb_volumes(x, self.frames)
        if clips.shape[-2:] != (self.opts.size, self.opts.size):
            raise ValueError(
                f"c3d was built for {self.opts.size}x{self.opts.size} crops, got "
                f"{tuple(clips.shape[-2:])}: train and evaluate with --crop-size {self.opts.size}"
            )
        return torch.flatten(self.trunk(clips), 1)

    def score_units(self, units: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"rgb": (N, 3F, S, S)} clips -> {"rgb": (N, classes)} logits."""
        return {"rgb": self.head(self._pool5(units["rgb"]))}

    def unit_features(self, units: dict[str, torch.Tensor]) -> torch.Tensor:
        """fc6 activations (after ReLU), (N, fc_dim); `features` averages them over views and snippets."""
        return self.head[1](self.head[0](self._pool5(units["rgb"])))


def build(cfg: ModelConfig) -> C3D:
    """The C3D network of `cfg`."""
    return C3D(cfg)
