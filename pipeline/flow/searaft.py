"""SEA-RAFT optical flow (Wang, Lipson and Deng, "SEA-RAFT: Simple, Efficient, Accurate RAFT
for Optical Flow", ECCV 2024), written for this project from the paper and the authors'
BSD-3-Clause reference, with the `FlowEstimator` contract.

The network, as the reference builds it for inference:

* a context encoder over both frames stacked (6 channels) and a feature encoder over each
  frame: ResNet stems without max-pooling (7x7 stride-2 conv, then three stages of basic
  blocks at strides 1, 2, 2, so features at 1/8 resolution), ResNet-18 depths (2, 2, 2) for
  the S model and ResNet-34 depths (3, 4, 6) for M, each closed by a 1x1 conv;
* the context goes through a 3x3 conv and splits into the recurrent state and the context
  features; a flow head on the state regresses an initial flow directly (SEA-RAFT's change
  from RAFT's zero start), so few refinement steps are needed (4 by default);
* each step looks up a 4-level all-pairs correlation pyramid (levels made by halving the
  second frame's features, radius 4), encodes it with the current flow (RAFT's motion
  encoder), and updates the state with two ConvNeXt blocks instead of a ConvGRU; the head
  adds a flow update (the mixture-of-Laplace terms it also outputs only matter for training);
* the 1/8 flow is upsampled x8 by RAFT's convex combination of 3x3 neighbours, with weights
  from a small head on the state.

Frames are RGB uint8, scaled to [-1, 1], padded with replicated borders to sides divisible by
8 and at least 64 (centred, as the reference's evaluation pads) and the flow cropped back. Flow is frame 0 ->
frame 1, x right, y down, pixels.

Weights: never downloaded. `weights=FILE` is a state dict with the reference model's key layout
(core/raft.py's RAFT: `cnet.*`, `fnet.*`, `init_conv.*`, `flow_head.{0,2}.*`,
`upsample_weight.{0,2}.*`, `update_block.encoder.conv{c1,c2,f1,f2,}.*`,
`update_block.refine.{0,1}.{dwconv,norm,pwconv1,pwconv2,gamma,final}`), i.e. the published
Tartan-C-T-TSKH-*-S/M checkpoints: a `.pth` saved with torch.save(model.state_dict()) (a
"module." prefix from DataParallel is accepted) or the `.safetensors` file of the Hugging Face
release (needs the safetensors package). The reference registers each downsampling block's
BatchNorm twice (`bn3` and `downsample.1`); the duplicate is accepted and checked equal.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.flow.device import DeviceEstimator
from pipeline.flow.raft import autocast, rgb_input

log = logging.getLogger(__name__)

VARIANTS = {"S": (2, 2, 2), "M": (3, 4, 6)}  # basic blocks per stage (ResNet-18 / ResNet-34 depths)
DIM = 128  # state and context channels
RADIUS = 4  # correlation lookup radius
LEVELS = 4  # correlation pyramid levels
STAGE_DIMS = (64, 128, 256)
MIN_SIDE = 64  # padded sides: the 4th correlation level of 1/8 features needs at least one pixel


# ----------------------------------------------------------------------------- encoders


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and a residual (1x1 conv + BN where shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class Encoder(nn.Module):
    """ResNet stem (no max-pool) and three stages to 1/8 resolution, then a 1x1 conv."""

    layer1: nn.Sequential  # the stages, registered by setattr in __init__
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(self, cin: int, cout: int, depths: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, STAGE_DIMS[0], 7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(STAGE_DIMS[0])
        prev = STAGE_DIMS[0]
        for k, (dim, depth, stride) in enumerate(zip(STAGE_DIMS, depths, (1, 2, 2), strict=True), start=1):
            blocks = [BasicBlock(prev if i == 0 else dim, dim, stride if i == 0 else 1) for i in range(depth)]
            setattr(self, f"layer{k}", nn.Sequential(*blocks))
            prev = dim
        self.final_conv = nn.Conv2d(prev, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.final_conv(self.layer3(self.layer2(self.layer1(x))))


# ----------------------------------------------------------------------------- update


class ConvNextBlock(nn.Module):
    """Depthwise 7x7, LayerNorm over channels, MLP x4 with GELU, layer scale, residual, 1x1 out."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * out)
        self.pwconv2 = nn.Linear(4 * out, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))
        self.final = nn.Conv2d(dim, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y)))) * self.gamma
        return self.final(x + y.permute(0, 3, 1, 2))


class MotionEncoder(nn.Module):
    """RAFT's motion encoder: correlation and flow features -> DIM channels (the flow appended)."""

    def __init__(self, corr_channels: int, dim: int = DIM) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(corr_channels, 2 * dim, 1)
        self.convc2 = nn.Conv2d(2 * dim, dim + dim // 2, 3, padding=1)
        self.convf1 = nn.Conv2d(2, dim, 7, padding=3)
        self.convf2 = nn.Conv2d(dim, dim // 2, 3, padding=1)
        self.conv = nn.Conv2d(2 * dim, dim - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        c = F.relu(self.convc2(F.relu(self.convc1(corr))))
        f = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat((F.relu(self.conv(torch.cat((c, f), dim=1))), flow), dim=1)


class UpdateBlock(nn.Module):
    """Motion features joined to the context, then two ConvNeXt blocks update the state."""

    def __init__(self, corr_channels: int, dim: int = DIM, blocks: int = 2) -> None:
        super().__init__()
        self.encoder = MotionEncoder(corr_channels, dim)
        self.refine = nn.ModuleList(ConvNextBlock(3 * dim, dim) for _ in range(blocks))

    def forward(self, state: torch.Tensor, context: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor):
        inp = torch.cat((context, self.encoder(flow, corr)), dim=1)
        for block in self.refine:
            state = block(torch.cat((state, inp), dim=1))
        return state


# ----------------------------------------------------------------------------- correlation


def correlation_pyramid(f1: torch.Tensor, f2: torch.Tensor, levels: int = LEVELS) -> list[torch.Tensor]:
    """All-pairs correlation of 1/8 features, divided by sqrt(channels), against `levels`
    successively halved (bilinear) versions of the second frame's features.

    Level i is (N * h * w, 1, h_i, w_i): one correlation image per first-frame pixel.
    """
    n, c, h, w = f1.shape
    a = f1.flatten(2).transpose(1, 2)  # (N, h*w, C)
    out = []
    for i in range(levels):
        if i:
            f2 = F.interpolate(f2, scale_factor=0.5, mode="bilinear", align_corners=False)
        corr = torch.bmm(a, f2.flatten(2)) / c**0.5  # (N, h*w, h_i*w_i)
        out.append(corr.reshape(n * h * w, 1, *f2.shape[-2:]))
    return out


def lookup(pyramid: list[torch.Tensor], coords: torch.Tensor, radius: int = RADIUS) -> torch.Tensor:
    """Sample each level in a (2r+1)^2 window around coords / 2^i: (N, levels*(2r+1)^2, h, w).

    coords: (N, 2, h, w), x then y, in 1/8-resolution pixels. Window order as the reference
    builds it (its meshgrid puts the offset that varies slowest on x): offset (i, j) of the
    flattened window samples at (x + d_i, y + d_j), d = -r..r; bilinear, zero outside.
    """
    n, _, h, w = coords.shape
    d = torch.linspace(-radius, radius, 2 * radius + 1, device=coords.device, dtype=coords.dtype)
    dx, dy = torch.meshgrid(d, d, indexing="ij")
    delta = torch.stack((dx, dy), dim=-1)  # (2r+1, 2r+1, 2): x offset on the first axis
    centre = coords.permute(0, 2, 3, 1).reshape(n * h * w, 1, 1, 2)
    out = []
    for i, corr in enumerate(pyramid):
        xy = centre / 2**i + delta
        hh, ww = corr.shape[-2:]
        grid = torch.stack((2 * xy[..., 0] / max(ww - 1, 1) - 1, 2 * xy[..., 1] / max(hh - 1, 1) - 1), dim=-1)
        sampled = F.grid_sample(corr, grid.to(corr.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)
        out.append(sampled.reshape(n, h, w, -1))
    return torch.cat(out, dim=-1).permute(0, 3, 1, 2).float()


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RAFT's x8 upsampling: each fine pixel a softmax-weighted mix of its 3x3 coarse neighbours
    (times 8). flow (N, 2, h, w), mask (N, 576, h, w) -> (N, 2, 8h, 8w)."""
    n, _, h, w = flow.shape
    weights = torch.softmax(mask.view(n, 1, 9, 8, 8, h, w), dim=2)
    patches = F.unfold(8 * flow, (3, 3), padding=1).view(n, 2, 9, 1, 1, h, w)
    up = (weights * patches).sum(dim=2)  # (N, 2, 8, 8, h, w)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(n, 2, 8 * h, 8 * w)


def coords_grid(n: int, h: int, w: int, device, dtype=torch.float32) -> torch.Tensor:
    """(N, 2, h, w) pixel coordinates, x then y."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype), indexing="ij"
    )
    return torch.stack((xs, ys))[None].expand(n, -1, -1, -1)


# ----------------------------------------------------------------------------- the model


class SEARAFT(nn.Module):
    """The SEA-RAFT network (module docstring); forward takes images in [-1, 1], sides % 8 == 0."""

    def __init__(self, variant: str = "M") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown SEA-RAFT variant {variant!r}; choose one of {sorted(VARIANTS)}")
        depths = VARIANTS[variant]
        corr_channels = LEVELS * (2 * RADIUS + 1) ** 2
        self.cnet = Encoder(6, 2 * DIM, depths)
        self.fnet = Encoder(3, 2 * DIM, depths)
        self.init_conv = nn.Conv2d(2 * DIM, 2 * DIM, 3, padding=1)
        self.upsample_weight = nn.Sequential(
            nn.Conv2d(DIM, 2 * DIM, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(2 * DIM, 64 * 9, 1)
        )
        self.flow_head = nn.Sequential(
            nn.Conv2d(DIM, 2 * DIM, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(2 * DIM, 6, 3, padding=1)
        )  # flow 2 + mixture weight 2 + log b 2
        self.update_block = UpdateBlock(corr_channels)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int = 4) -> torch.Tensor:
        """(N, 3, H, W) images in [-1, 1] -> (N, 2, H, W) flow image1 -> image2 after `iters` updates."""
        state, context = self.init_conv(self.cnet(torch.cat((image1, image2), dim=1))).split(DIM, dim=1)
        flow = self.flow_head(state)[:, :2].float()  # the directly regressed initial flow (kept in fp32)
        if iters:
            pyramid = correlation_pyramid(self.fnet(image1).float(), self.fnet(image2).float())
            n, _, h, w = flow.shape
            base = coords_grid(n, h, w, flow.device)
        for _ in range(iters):
            corr = lookup(pyramid, base + flow)
            state = self.update_block(state, context, corr.to(state.dtype), flow.to(state.dtype))
            flow = flow + self.flow_head(state)[:, :2].float()
        mask = 0.25 * self.upsample_weight(state)  # from the final state, as the last update's
        return convex_upsample(flow, mask.float())


def official_state_dict(state: dict) -> dict:
    """A reference-layout state dict -> this module's: "module." prefixes dropped, and the
    duplicate `bn3` registration of each downsampling BatchNorm checked against `downsample.1`."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    out = {}
    for key, value in state.items():
        if ".bn3." in key:
            twin = key.replace(".bn3.", ".downsample.1.")
            if twin in state and not torch.equal(state[twin], value):
                raise ValueError(f"checkpoint key {key} differs from {twin}: not a SEA-RAFT state dict")
            continue
        out[key] = value
    return out


def load_weights(path: str | Path) -> dict:
    """Read a state dict from a local .pth (tensors only) or .safetensors file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"SEA-RAFT weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ValueError(f"{path}: reading .safetensors needs the safetensors package") from exc
        return load_file(str(path))
    # weights_only: a checkpoint is data, never code to unpickle.
    return torch.load(path, map_location="cpu", weights_only=True)


class SEARAFTFlow(DeviceEstimator):
    """Batched SEA-RAFT estimator: est(prev, nxt) with (N, H, W, 3) uint8 RGB -> (N, H, W, 2) float32.

    random_init=True builds the network with random weights (for wiring tests only).
    """

    input = "rgb"
    name = "torch-sea-raft"

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        variant: str = "M",
        device: str = "cpu",
        iters: int = 4,
        random_init: bool = False,
        compile: bool = False,
        dtype: str | torch.dtype = "fp32",
    ) -> None:
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        super().__init__(device, dtype)
        net = SEARAFT(variant)
        if not random_init:
            if weights is None:
                raise FileNotFoundError(
                    f"sea_raft_{variant.lower()} needs --flow-param weights=FILE, a local "
                    "checkpoint of the published model; weights are never downloaded"
                )
            net.load_state_dict(official_state_dict(load_weights(weights)))
            log.info("loaded SEA-RAFT-%s weights from %s", variant, weights)
        self.variant, self.iters, self.compile = variant, iters, bool(compile)
        self.net = net.eval().to(self.device)
        self._forward = torch.compile(self.net) if self.compile else self.net

    def _flow(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        h, w = prev.shape[1:3]
        ph, pw = (max(MIN_SIDE, h + (-h) % 8) - h, max(MIN_SIDE, w + (-w) % 8) - w)
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)  # centred, as the reference pads
        a = F.pad(rgb_input(prev), pad, mode="replicate")
        b = F.pad(rgb_input(nxt), pad, mode="replicate")
        with autocast(self.device, self.dtype):
            flow = self._forward(a, b, iters=self.iters)
        return flow[:, :, pad[2] : pad[2] + h, pad[0] : pad[0] + w].float()

    def __repr__(self) -> str:
        return (
            f"SEARAFTFlow(variant={self.variant!r}, device={str(self.device)!r}, iters={self.iters}, "
            f"dtype={self.dtype}, compile={self.compile})"
        )
