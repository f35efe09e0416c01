"""FstCN (Sun et al. 2015, "Human action recognition using factorized spatio-temporal
convolutional networks", arXiv 1510.00562): a 3D convolution factorized into 2D spatial
convolutional layers (SCL) in the lower layers and 1D temporal convolutional layers (TCL)
in the upper ones, joined by a transformation-and-permutation (T-P) operator.

Input: a clip of T + dt frames, `--frame-stride` s_t stored frames apart. The TCL path reads
the T frame differences V_diff = v_{i+dt} - v_i (i = 0 .. T-1; normalised RGB), the parallel
SCL path one frame, the clip's middle one.

    shared SCLs   Conv1 96 7x7 /2 - LRN - pool 3x3 /2 - Conv2 256 5x5 /2 - LRN - pool 3x3 /2
                  - Conv3 512 3x3 - Conv4 512 3x3               (2D, applied frame by frame)
    SCL path      Conv5 128 3x3 - pool 3x3 /3 - FC 4096 - FC 2048        (the middle frame)
    TCL path      T-P: transformation Conv 128 3x3 - pool 3x3 /3 (2D, per difference frame),
                  then permutation: (T, C, h, w) -> (h * w, C, T), so time is the axis a 1D
                  kernel slides on and every spatial position is one sequence;
                  TCL: Conv1d 32 k=3 || Conv1d 32 k=5 (parallel, concatenated) - max pool 2 in time
                  - permuted back and flattened - FC 4096 - FC 2048
    classifier    the two paths' 2048-d vectors concatenated -> softmax

At the paper's 204 x 204 input the SCL path flattens 128 x 4 x 4 and the TCL path
64 x 4 x 4 x T/2 values. The TCL's kernels are shared over spatial positions (one set of
1D filters over time, as a 3D kernel's temporal factor is): the permutation is what turns
the per-frame 2D feature maps into sequences they can slide on. Reading of the paper where
it leaves details open (stated here rather than hidden): ReLU after every conv and FC,
dropout after each FC, the two paths joined by concatenation before one classifier.

Not built: the paper's test-time weighting of clip scores by their sparsity concentration
index; a video's clips are averaged, as for every family here.

Options: frames T and dt (the paper samples clips of T frames with a temporal stride and
differences dt frames apart), width_mult, fc dims and the input crop `size` the FC layers
are built for; CPU benchmarks shrink them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models.base import ModelConfig, VideoClassifier
from training.models.clip_input import check_rgb_only, classifier_head, flat_size, scaled
from training.models.option_spec import FC_DIM, PAPER_FC_DIM, WIDTH_MULT, OptionSpec

# Sun et al. 2015: T = 16 frames and the dt = 9 after them, 204 x 204.
INPUT = {"streams": "rgb", "rgb_frames": 25, "crop_size": 204}


@dataclass(frozen=True, kw_only=True)
class Options:
    """T frames (differences) per clip, dt between the frames of a difference, sizes."""

    frames: int = 16
    diff: int = 9
    width_mult: float = 1.0
    fc_dims: tuple[int, int] = (4096, 2048)
    size: int = 204
    tcl_channels: int = 32

    def __post_init__(self) -> None:
        if self.frames < 2 or self.diff < 1:
            raise ValueError(f"frames must be >= 2 and diff >= 1, got {self.frames}, {self.diff}")
        if self.width_mult <= 0 or len(self.fc_dims) != 2 or min(self.fc_dims) < 1 or self.tcl_channels < 1:
            raise ValueError(
                f"width_mult > 0, two fc_dims >= 1 and tcl_channels >= 1 needed, got "
                f"{self.width_mult}, {self.fc_dims}, {self.tcl_channels}"
            )
        if map_side(self.size) < 1:
            raise ValueError(f"size {self.size} is too small for FstCN's strides and poolings (it needs >= 54)")

    @property
    def clip_frames(self) -> int:
        """F: stored frames a clip reads (T frames and the dt after the last of them)."""
        return self.frames + self.diff


OPTIONS = (
    WIDTH_MULT,
    FC_DIM,
    OptionSpec(
        flag="diff-frames",
        type=int,
        default=9,
        help="dt, frames between the two of each difference (T = --rgb-frames - dt).",
    ),
)


def options_from_cli(values: dict) -> Options:
    """The Options the parsed command-line values (OPTIONS' keys, --rgb-frames, --crop-size)
    describe: T = --rgb-frames - dt, the second FC layer half the first."""
    fc = values["fc_dim"] or PAPER_FC_DIM
    return Options(
        frames=values["rgb_frames"] - values["diff_frames"],
        diff=values["diff_frames"],
        width_mult=values["width_mult"],
        fc_dims=(fc, max(1, fc // 2)),
        size=values["crop_size"],
    )


def map_side(size: int) -> int:
    """The side of the Conv5 maps (after their 3x3/3 pooling) for `size` x `size` inputs."""
    side = (size - 1) // 2 + 1  # Conv1 7x7 /2, padding 3
    side = (side - 3) // 2 + 1  # pool 3x3 /2
    side = (side - 1) // 2 + 1  # Conv2 5x5 /2, padding 2
    side = (side - 3) // 2 + 1  # pool 3x3 /2
    return (side - 3) // 3 + 1 if side >= 3 else 0  # Conv3-5 keep it; pool 3x3 /3


def check(cfg: ModelConfig) -> None:
    """Raise ValueError naming the first setting FstCN cannot build."""
    check_rgb_only(cfg, "fstcn")
    opts = cfg.options or Options()
    if cfg.rgb_frames != opts.clip_frames:
        raise ValueError(
            f"fstcn reads T + dt = {opts.frames} + {opts.diff} = {opts.clip_frames} frames per clip, "
            f"got rgb_frames={cfg.rgb_frames}"
        )


def lower_scls(mult: float) -> nn.Sequential:
    """Conv1 ... Conv4, shared by both paths (2D, frame by frame)."""
    c1, c2, c3 = scaled(96, mult), scaled(256, mult), scaled(512, mult)
    return nn.Sequential(
        nn.Conv2d(3, c1, 7, stride=2, padding=3),
        nn.ReLU(inplace=True),
        nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(c1, c2, 5, stride=2, padding=2),
        nn.ReLU(inplace=True),
        nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(c2, c3, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c3, c3, 3, padding=1),
        nn.ReLU(inplace=True),
    )


def conv5(mult: float) -> nn.Sequential:
    """The 128-channel 3x3 conv and 3x3/3 pooling each path puts on Conv4 (in the TCL path:
    the T-P operator's transformation)."""
    return nn.Sequential(
        nn.Conv2d(scaled(512, mult), scaled(128, mult), 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 3)
    )


def frame_maps(o: Options) -> nn.Sequential:
    """Conv1 ... Conv5 and its pooling on one frame: what a path's first FC layer reads."""
    return nn.Sequential(lower_scls(o.width_mult), conv5(o.width_mult))


class TCL(nn.Module):
    """Parallel 1D temporal convolutions (kernel 3 and 5) over (N, C, T) sequences, max pooled by 2."""

    def __init__(self, channels: int, out: int):
        super().__init__()
        self.k3 = nn.Conv1d(channels, out, 3, padding=1)
        self.k5 = nn.Conv1d(channels, out, 5, padding=2)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool1d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.cat([self.relu(self.k3(x)), self.relu(self.k5(x))], dim=1))


def permute_to_sequences(maps: torch.Tensor, frames: int) -> torch.Tensor:
    """The T-P operator's permutation: (N*T, C, h, w) per-frame maps -> (N*h*w, C, T) sequences."""
    nt, c, h, w = maps.shape
    return maps.reshape(nt // frames, frames, c, h, w).permute(0, 3, 4, 2, 1).reshape(-1, c, frames)


def permute_back(seqs: torch.Tensor, n: int) -> torch.Tensor:
    """(N*h*w, C', T') -> (N, h*w*C'*T'): every position's temporal features, flattened per clip."""
    return seqs.reshape(n, -1)


class FstCN(VideoClassifier):
    """forward({"rgb": (B, V, K, 3(T+dt), S, S)}) -> {"rgb": (B, N)}; clip logits averaged over
    views and snippets."""

    def __init__(self, cfg: ModelConfig):
        check(cfg)
        super().__init__(cfg)
        o = self.opts = cfg.options or Options()
        self.scls = lower_scls(o.width_mult)
        self.spatial = conv5(o.width_mult)
        self.transform = conv5(o.width_mult)
        self.tcl = TCL(scaled(128, o.width_mult), o.tcl_channels)
        spatial_dim = flat_size(lambda: frame_maps(o), (3, o.size, o.size))
        temporal_dim = flat_size(
            lambda: _TemporalProbe(frame_maps(o), TCL(scaled(128, o.width_mult), o.tcl_channels), o.frames),
            (o.frames, 3, o.size, o.size),
        )
        self.spatial_fc = classifier_head(spatial_dim, o.fc_dims[:1], o.fc_dims[1], cfg.dropout)
        self.temporal_fc = classifier_head(temporal_dim, o.fc_dims[:1], o.fc_dims[1], cfg.dropout)
        self.classifier = nn.Sequential(
            nn.ReLU(inplace=True), nn.Dropout(cfg.dropout), nn.Linear(2 * o.fc_dims[1], cfg.num_classes)
        )

    def score_units(self, units: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"rgb": (N, 3(T+dt), S, S)} clips -> {"rgb": (N, classes)} logits."""
        x = units["rgb"]
        n, c, s, _ = x.shape
        o = self.opts
        if c != 3 * o.clip_frames or s != o.size:
            raise ValueError(
                f"fstcn takes {o.clip_frames} frames of {o.size}x{o.size} per clip "
                f"(--rgb-frames {o.clip_frames} --crop-size {o.size}), got {c // 3} of {s}x{s}"
            )
        clips = x.reshape(n, o.clip_frames, 3, s, s)
        middle = clips[:, o.frames // 2]
        diffs = (clips[:, o.diff :] - clips[:, : o.frames]).flatten(0, 1)
        spatial = self.spatial_fc(torch.flatten(self.spatial(self.scls(middle)), 1))
        seqs = permute_to_sequences(self.transform(self.scls(diffs)), o.frames)
        temporal = self.temporal_fc(permute_back(self.tcl(seqs), n))
        logits = self.classifier(torch.cat([spatial, temporal], dim=1))
        return {"rgb": logits}


class _TemporalProbe(nn.Module):
    """The TCL path up to its first FC layer, for sizing that layer on the meta device."""

    def __init__(self, maps: nn.Module, tcl: TCL, frames: int):
        super().__init__()
        self.maps, self.tcl, self.frames = maps, tcl, frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        return permute_back(self.tcl(permute_to_sequences(self.maps(x.flatten(0, 1)), self.frames)), n)


def build(cfg: ModelConfig) -> FstCN:
    """The FstCN network of `cfg`."""
    return FstCN(cfg)
