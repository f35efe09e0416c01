"""RAFT optical flow (torchvision's raft_small / raft_large) with the `FlowEstimator` contract.

Weights are never downloaded: they come from a checkpoint path the user gives, or from the
file torchvision would have cached (torch.hub's checkpoints folder) after an earlier download
elsewhere. RAFT needs sides divisible by 8 and at least 128, so frames are padded (replicated
border) and the flow cropped back. RAFT was trained on colour: it takes the RGB frames
(`input = "rgb"`), scaled to [-1, 1] as torchvision's OpticalFlow preset does. Flow is frame
0 -> frame 1, x right, y down, pixels (OpenCV's convention). dtype fp16/bf16 runs the network
under autocast; compile=True runs it through torch.compile.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.flow.device import DeviceEstimator

log = logging.getLogger(__name__)

MODELS = ("raft_small", "raft_large")
MIN_SIDE = 128  # RAFT's correlation pyramid needs 1/8-resolution features of at least 16 a side


def _builder_and_url(model: str):
    """torchvision's constructor and the published checkpoint URL (only its file name is used)."""
    from torchvision.models import optical_flow as of

    if model == "raft_small":
        return of.raft_small, of.Raft_Small_Weights.DEFAULT.url
    if model == "raft_large":
        return of.raft_large, of.Raft_Large_Weights.DEFAULT.url
    raise ValueError(f"unknown RAFT model {model!r}; choose one of {MODELS}")


def find_weights(model: str, weights: str | Path | None = None) -> Path:
    """The local checkpoint to load: `weights` if given, else torchvision's cached file.

    Raises FileNotFoundError naming where the file was looked for; nothing is downloaded.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"RAFT weights file {str(path)!r} does not exist")
        return path
    _, url = _builder_and_url(model)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not cached.is_file():
        raise FileNotFoundError(
            f"no {model} weights at {str(cached)!r}; pass a checkpoint path "
            f"(the file published at {url}) - weights are never downloaded"
        )
    return cached


def pad_to_multiple(
    x: torch.Tensor, multiple: int = 8, minimum: int = MIN_SIDE
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (N, C, H, W) bottom and right (replicated) to sides divisible by `multiple`, >= `minimum`.

    Returns the padded tensor and the original (H, W) to crop back to.
    """
    h, w = x.shape[-2:]
    ph = max(minimum, h + (-h) % multiple) - h
    pw = max(minimum, w + (-w) % multiple) - w
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to fp16/bf16 on `device`, or nothing for fp32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def rgb_input(frames: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1], torchvision's OpticalFlow preset."""
    return frames.permute(0, 3, 1, 2).float() * (2.0 / 255.0) - 1.0


class RAFTFlow(DeviceEstimator):
    """Batched RAFT estimator: est(prev, nxt) with (N, H, W, 3) uint8 RGB -> (N, H, W, 2) float32.

    random_init=True builds the network with random weights (for wiring tests only).
    """

    input = "rgb"
    name = "torch-raft"

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        model: str = "raft_small",
        device: str = "cpu",
        num_flow_updates: int = 12,
        random_init: bool = False,
        compile: bool = False,
        dtype: str | torch.dtype = "fp32",
    ):
        if num_flow_updates < 1:
            raise ValueError(f"num_flow_updates must be >= 1, got {num_flow_updates}")
        super().__init__(device, dtype)
        builder, _ = _builder_and_url(model)
        self.model_name, self.num_flow_updates, self.compile = model, num_flow_updates, bool(compile)
        self.params = {"model": model, "num_flow_updates": num_flow_updates}
        net = builder(weights=None, progress=False)
        if not random_init:
            path = find_weights(model, weights)
            # weights_only: a checkpoint is data, never code to unpickle.
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            log.info("loaded %s weights from %s", model, path)
        self.net = net.eval().to(self.device)
        self._forward = torch.compile(self.net) if self.compile else self.net

    def _flow(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        h, w = prev.shape[1:3]
        a, _ = pad_to_multiple(rgb_input(prev))
        b, _ = pad_to_multiple(rgb_input(nxt))
        with autocast(self.device, self.dtype):
            flow = self._forward(a, b, num_flow_updates=self.num_flow_updates)[-1]
        return flow[:, :, :h, :w].float()

    def __repr__(self) -> str:
        return (
            f"RAFTFlow(model={self.model_name!r}, device={str(self.device)!r}, updates={self.num_flow_updates}, "
            f"dtype={self.dtype}, compile={self.compile})"
        )
