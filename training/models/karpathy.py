"""Context and fovea streams with time fusion (Karpathy et al. 2014, "Large-scale video
classification with convolutional neural networks").

Each stream is the paper's single-frame network up to its last convolution,

    C(96, 11, 3) - N - P - C(256, 5, 1) - N - P - C(384, 3, 1) - C(384, 3, 1) - C(256, 3, 1) [- P]

(C(d, f, s): d filters f x f at stride s, ReLU; N: local response normalisation k = 2,
n = 5, alpha = 1e-4, beta = 0.5; P: 2x2 max pooling, rounding up as Caffe does), followed
by FC(4096) - FC(4096) - softmax on the concatenated outputs. Multiresolution (the
default): an S x S crop (the paper's 178) feeds two streams of half the pixels each: the
context stream sees the whole crop downsampled to S/2 (89), the fovea stream its centre
S/2 x S/2 region at full resolution; their last pooling layer is dropped, so each ends in
a 7 x 7 x 256 map at S = 178, and both maps are concatenated before the first FC layer.
multires=False is the full-frame network (the paper's 170 x 170 input, last pooling kept:
also 7 x 7 x 256).

Time fusion, inside each stream (`time_fusion`):
    single  one frame (F = 1)
    early   the first conv's filters span all F frames (11 x 11 x 3 x T, the paper's T = 10)
    late    two single-frame towers with shared weights on frames 15 apart (F = 2,
            --frame-stride 15), merged at the first FC layer
    slow    3D convolutions: conv1 temporal extent 4 stride 2 on F = 10 frames (4 responses),
            conv2 and conv3 extent 2 stride 2 (2, then 1): conv3 sees all 10 frames

Scaled-down copies (CPU benchmarks): width_mult on the conv channels, fc_dim, and the crop
`size` (the CLI passes --crop-size) the FC layer is built for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.models.base import ModelConfig, VideoClassifier
from training.models.clip_input import check_rgb_only, classifier_head, flat_size, scaled
from training.models.option_spec import FC_DIM, PAPER_FC_DIM, WIDTH_MULT, OptionSpec

TIME_FUSIONS = ("single", "early", "late", "slow")
CHANNELS = (96, 256, 384, 384, 256)
# slow fusion: (temporal extent, temporal stride) of conv1, conv2, conv3
SLOW_TIME = ((4, 2), (2, 2), (2, 2))
# The frames each time fusion reads by default (late: 2 frames, --frame-stride 15 apart).
FRAMES = {"single": 1, "early": 10, "late": 2, "slow": 10}
LATE_FRAME_STRIDE = 15
# Karpathy et al. 2014: 178 x 178 crops (multiresolution); frames per time fusion: input_defaults.
INPUT = {"streams": "rgb", "crop_size": 178}
OPTIONS = (
    OptionSpec(
        flag="time-fusion",
        default="slow",
        choices=TIME_FUSIONS,
        help="where the frames meet (sets --rgb-frames 1/10/2/10; late: --frame-stride 15).",
    ),
    OptionSpec(
        flag="multires",
        type=bool,
        default=True,
        help="context + fovea streams at half the pixels each (else one full-frame stream).",
    ),
    WIDTH_MULT,
    FC_DIM,
)


def input_defaults(values: dict) -> dict:
    """INPUT and the frames (and, late, the frame stride) of the time fusion in `values`."""
    fusion = values.get("time_fusion") or "slow"
    stride = {"frame_stride": LATE_FRAME_STRIDE} if fusion == "late" else {}
    return {**INPUT, "rgb_frames": FRAMES[fusion], **stride}


def options_from_cli(values: dict) -> Options:
    """The Options the parsed command-line values (OPTIONS' keys and --crop-size) describe."""
    return Options(
        time_fusion=values["time_fusion"],
        multires=values["multires"],
        width_mult=values["width_mult"],
        fc_dim=values["fc_dim"] or PAPER_FC_DIM,
        size=values["crop_size"],
    )


@dataclass(frozen=True, kw_only=True)
class Options:
    """Time fusion, multiresolution streams and sizes."""

    time_fusion: str = "slow"
    multires: bool = True
    width_mult: float = 1.0
    fc_dim: int = 4096
    size: int = 178

    def __post_init__(self) -> None:
        if self.time_fusion not in TIME_FUSIONS:
            raise ValueError(f"unknown time_fusion {self.time_fusion!r}; choose one of {TIME_FUSIONS}")
        if self.width_mult <= 0 or self.fc_dim < 1:
            raise ValueError(f"width_mult must be > 0 and fc_dim >= 1, got {self.width_mult}, {self.fc_dim}")
        if self.size < (44 if self.multires else 22) or (self.multires and self.size % 2):
            raise ValueError(f"size must be even and >= 44 with multires (>= 22 without), got {self.size}")

    @property
    def stream_size(self) -> int:
        """The pixels each stream sees: half the crop's side with multires."""
        return self.size // 2 if self.multires else self.size


def slow_frames_out(frames: int) -> int:
    """Temporal responses left after slow fusion's three valid temporal convolutions."""
    for extent, stride in SLOW_TIME:
        frames = (frames - extent) // stride + 1
    return frames


def check(cfg: ModelConfig) -> None:
    """Raise ValueError naming the first setting this family cannot build."""
    check_rgb_only(cfg, "karpathy")
    fusion = (cfg.options or Options()).time_fusion
    f = cfg.rgb_frames
    if fusion in ("single", "late") and f != FRAMES[fusion]:
        raise ValueError(f"karpathy time fusion {fusion!r} reads {FRAMES[fusion]} frame(s), got rgb_frames={f}")
    if fusion == "early" and f < 2:
        raise ValueError(f"karpathy early fusion needs rgb_frames >= 2 (the paper: 10), got {f}")
    if fusion == "slow" and slow_frames_out(f) < 1:
        raise ValueError(f"karpathy slow fusion needs rgb_frames >= 10 (three strided temporal convs), got {f}")


def lrn() -> nn.LocalResponseNorm:
    """N: Krizhevsky et al.'s normalisation with the paper's k = 2, n = 5, alpha = 1e-4, beta = 0.5."""
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.5, k=2.0)


def pool(dims: int) -> nn.Module:
    """P: non-overlapping 2x2 spatial max pooling, rounding up (Caffe)."""
    if dims == 2:
        return nn.MaxPool2d(2, 2, ceil_mode=True)
    return nn.MaxPool3d((1, 2, 2), (1, 2, 2), ceil_mode=True)


def conv(slow: bool, n_in: int, n_out: int, size: int, stride: int, pad: int, time: tuple[int, int]) -> nn.Module:
    """C(n_out, size, stride): 2D, or 3D with (temporal extent, temporal stride) `time` and no
    temporal padding (valid in time) for slow fusion."""
    if not slow:
        return nn.Conv2d(n_in, n_out, size, stride, pad)
    return nn.Conv3d(n_in, n_out, (time[0], size, size), (time[1], stride, stride), (0, pad, pad))


def tower(opts: Options, in_frames: int) -> nn.Sequential:
    """One stream's convolutions for `in_frames` input frames (2D convs, or 3D for slow fusion)."""
    c = [scaled(ch, opts.width_mult) for ch in CHANNELS]
    slow = opts.time_fusion == "slow"
    time = SLOW_TIME if slow else ((1, 1),) * 3
    first_in = 3 * in_frames if opts.time_fusion == "early" else 3
    dims = 3 if slow else 2
    layers = [
        conv(slow, first_in, c[0], 11, 3, 0, time[0]),
        nn.ReLU(inplace=True),
        lrn(),
        pool(dims),
        conv(slow, c[0], c[1], 5, 1, 2, time[1]),
        nn.ReLU(inplace=True),
        lrn(),
        pool(dims),
        conv(slow, c[1], c[2], 3, 1, 1, time[2]),
        nn.ReLU(inplace=True),
        conv(slow, c[2], c[3], 3, 1, 1, (1, 1)),
        nn.ReLU(inplace=True),
        conv(slow, c[3], c[4], 3, 1, 1, (1, 1)),
        nn.ReLU(inplace=True),
    ]
    if not opts.multires:
        layers.append(pool(dims))
    return nn.Sequential(*layers)


class Stream(nn.Module):
    """One stream on (N, F, 3, s, s) frames -> (N, features): its time fusion decides how the
    F frames enter (stacked on channels, one tower per frame, or as a 3D volume)."""

    def __init__(self, opts: Options, frames: int):
        super().__init__()
        self.fusion, self.frames = opts.time_fusion, frames
        self.tower = tower(opts, frames)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, f = x.shape[:2]
        if self.fusion == "slow":
            maps = self.tower(x.transpose(1, 2))  # (N, 3, F, s, s)
        elif self.fusion == "early":
            maps = self.tower(x.flatten(1, 2))  # (N, 3F, s, s): the first filters span every frame
        else:  # single / late: each frame alone through the shared tower, merged at the top
            maps = self.tower(x.flatten(0, 1)).unflatten(0, (n, f))
        return maps.reshape(n, -1)


class Karpathy(VideoClassifier):
    """forward({"rgb": (B, V, K, 3F, S, S)}) -> {"rgb": (B, N)}: context + fovea streams (or one
    full-frame stream), concatenated, FC, FC, classifier; averaged over views and snippets."""

    def __init__(self, cfg: ModelConfig):
        check(cfg)
        super().__init__(cfg)
        o = self.opts = cfg.options or Options()
        self.frames = cfg.rgb_frames
        names = ("context", "fovea") if o.multires else ("full",)
        self.streams = nn.ModuleDict({name: Stream(o, self.frames) for name in names})
        per_stream = flat_size(lambda: Stream(o, self.frames), (self.frames, 3, o.stream_size, o.stream_size))
        self.head = classifier_head(per_stream * len(names), (o.fc_dim, o.fc_dim), cfg.num_classes, cfg.dropout)

    def stream_inputs(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, F, 3, S, S) -> each stream's frames: context = downsampled, fovea = centre crop."""
        if not self.opts.multires:
            return {"full": frames}
        n, f, _c, s, _ = frames.shape
        half, lo = s // 2, s // 4
        context = F.interpolate(
            frames.flatten(0, 1), size=(half, half), mode="bilinear", antialias=True, align_corners=False
        ).unflatten(0, (n, f))
        return {"context": context, "fovea": frames[..., lo : lo + half, lo : lo + half]}

    def score_units(self, units: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"rgb": (N, 3F, S, S)} clips -> {"rgb": (N, classes)} logits."""
        x = units["rgb"]
        n, c, s, _ = x.shape
        if c != 3 * self.frames or s != self.opts.size:
            raise ValueError(
                f"karpathy ({self.opts.time_fusion}) takes {self.frames} frames of "
                f"{self.opts.size}x{self.opts.size} (--rgb-frames {self.frames} --crop-size "
                f"{self.opts.size}), got {c // 3} of {s}x{s}"
            )
        frames = x.reshape(n, self.frames, 3, s, s)
        inputs = self.stream_inputs(frames)
        feats = torch.cat([self.streams[name](inputs[name]) for name in self.streams], dim=1)
        return {"rgb": self.head(feats)}


def build(cfg: ModelConfig) -> Karpathy:
    """The context/fovea (or full-frame) network of `cfg` with its time fusion."""
    return Karpathy(cfg)
