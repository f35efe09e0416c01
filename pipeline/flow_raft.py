"""RAFT optical flow (torchvision's raft_small / raft_large) with the `FlowEstimator` contract.

Weights are never downloaded: they come from a checkpoint path the user gives, or from the
file torchvision would have cached (torch.hub's checkpoints folder) after an earlier download
elsewhere. RAFT needs sides divisible by 8 and at least 128, so frames are padded (replicated
border) and the flow cropped back. Frames are RGB (the estimator's `input` is "rgb": decoders send
colour, never grey copied to three channels), scaled to [-1, 1] as torchvision's OpticalFlow preset does. Flow is frame 0 -> frame 1, x right, y down, pixels (OpenCV's convention).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


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
        raise FileNotFoundError(f"no {model} weights at {str(cached)!r}; pass a checkpoint path "
                                f"(the file published at {url}) - weights are never downloaded")
    return cached


def pad_to_multiple(x: torch.Tensor, multiple: int = 8,
                    minimum: int = MIN_SIDE) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (N, C, H, W) bottom and right (replicated) to sides divisible by `multiple`, >= `minimum`.

    Returns the padded tensor and the original (H, W) to crop back to.
    """
    h, w = x.shape[-2:]
    ph = max(minimum, h + (-h) % multiple) - h
    pw = max(minimum, w + (-w) % multiple) - w
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def check_rgb_pairs(prev: np.ndarray, nxt: np.ndarray) -> None:
    """Raise ValueError unless prev and nxt are equal-shape (N, H, W, 3) uint8 RGB arrays."""
    for name, arr in (("prev", prev), ("nxt", nxt)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 4 or arr.shape[3] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"{name} must be (N, H, W, 3) uint8 RGB, got "
                             f"{getattr(arr, 'dtype', type(arr).__name__)} {getattr(arr, 'shape', '')}")
    if prev.shape != nxt.shape:
        raise ValueError(f"prev and nxt must have one shape, got {prev.shape} and {nxt.shape}")


class RAFTFlow:
    """Batched RAFT estimator: est(prev, nxt) with (N, H, W, 3) uint8 RGB -> (N, H, W, 2) float32.

    random_init=True builds the network with random weights (for wiring tests only).
    """

    name = "torch-raft"
    input = "rgb"

    def __init__(self, weights: str | Path | None = None, *, model: str = "raft_small", device: str = "cpu",
                 num_flow_updates: int = 12, random_init: bool = False):
        if num_flow_updates < 1:
            raise ValueError(f"num_flow_updates must be >= 1, got {num_flow_updates}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available")
        builder, _ = _builder_and_url(model)
        self.model_name, self.device, self.num_flow_updates = model, torch.device(device), num_flow_updates
        self.params = {"model": model, "num_flow_updates": num_flow_updates}
        self.net = builder(weights=None, progress=False)
        if not random_init:
            path = find_weights(model, weights)
            # weights_only: a checkpoint is data, never code to unpickle.
            self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            log.info("loaded %s weights from %s", model, path)
        self.net = self.net.eval().to(self.device)

    def _to_input(self, frames: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float in [-1, 1] on the device."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float()
        return x * (2.0 / 255.0) - 1.0

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """Flow prev -> nxt for each pair of (N, H, W, 3) uint8 RGB frames (padded internally to
        sides divisible by 8, >= 128)."""
        check_rgb_pairs(prev, nxt)
        n, h, w = prev.shape[:3]
        if n == 0:
            return np.zeros((0, h, w, 2), np.float32)
        a, _ = pad_to_multiple(self._to_input(prev))
        b, _ = pad_to_multiple(self._to_input(nxt))
        with torch.inference_mode():
            flow = self.net(a, b, num_flow_updates=self.num_flow_updates)[-1]
        return np.ascontiguousarray(flow[:, :, :h, :w].permute(0, 2, 3, 1).float().cpu().numpy())

    def __repr__(self) -> str:
        return f"RAFTFlow(model={self.model_name!r}, device={str(self.device)!r}, updates={self.num_flow_updates})"
