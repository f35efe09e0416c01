"""Estimator parameter records, with OpenCV's and torchvision's names and defaults, how a torch
estimator runs (`TorchOptions`), and the frame-batch check every estimator applies to its input.

Kept below `pipeline.flow.estimators` (the table and the factory) so that the estimators import
their parameters without importing the table that builds them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

DTYPES = ("fp32", "fp16", "bf16")  # pipeline.flow.device maps each to its torch dtype


@dataclass(frozen=True, kw_only=True)
class TVL1Params:
    """TV-L1 parameters with OpenCV's DualTVL1OpticalFlow names and defaults."""

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    nscales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    gamma: float = 0.0
    median_filtering: int = 5
    use_initial_flow: bool = False

    def __post_init__(self) -> None:
        if self.nscales < 1 or self.warps < 1:
            raise ValueError(f"nscales and warps must be >= 1, got {self.nscales}, {self.warps}")
        if not 0 < self.scale_step < 1:
            raise ValueError(f"scale_step must be in (0, 1), got {self.scale_step}")
        if self.tau <= 0 or self.lambda_ <= 0 or self.theta <= 0 or self.epsilon <= 0:
            raise ValueError("tau, lambda, theta and epsilon must be positive")


@dataclass(frozen=True, kw_only=True)
class FarnebackParams:
    """cv2.calcOpticalFlowFarneback parameters (OpenCV's names)."""

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2
    flags: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.pyr_scale < 1:
            raise ValueError(f"pyr_scale must be in (0, 1), got {self.pyr_scale}")
        if self.poly_n not in (5, 7):
            raise ValueError(f"poly_n must be 5 or 7, got {self.poly_n}")
        if self.levels < 1 or self.winsize < 1 or self.iterations < 1:
            raise ValueError("levels, winsize and iterations must be >= 1")


@dataclass(frozen=True, kw_only=True)
class DISParams:
    """cv2.DISOpticalFlow parameters; `preset` is ultrafast, fast or medium."""

    preset: str = "medium"
    finest_scale: int | None = None
    patch_size: int | None = None
    patch_stride: int | None = None
    gradient_descent_iterations: int | None = None
    variational_refinement_iterations: int | None = None
    use_mean_normalization: bool = True
    use_spatial_propagation: bool = True

    def __post_init__(self) -> None:
        if self.preset not in ("ultrafast", "fast", "medium"):
            raise ValueError(f"DIS preset must be ultrafast, fast or medium, got {self.preset!r}")


@dataclass(frozen=True, kw_only=True)
class RAFTParams:
    """torchvision RAFT: a local checkpoint (never downloaded) and the refinement steps."""

    weights: str | None = None  # None: the file torchvision caches after a download elsewhere
    num_flow_updates: int = 12

    def __post_init__(self) -> None:
        if self.num_flow_updates < 1:
            raise ValueError(f"num_flow_updates must be >= 1, got {self.num_flow_updates}")


@dataclass(frozen=True, kw_only=True)
class SEARAFTParams:
    """SEA-RAFT (Wang, Lipson and Deng, ECCV 2024): a local checkpoint and the refinement steps.

    The official evaluation runs 4 updates for the S and M models (12 for "L", which is the M
    network run longer), at the frames' own resolution here.
    """

    weights: str | None = None  # required to compute flow: a state dict saved from the official model
    iters: int = 4

    def __post_init__(self) -> None:
        if self.iters < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")


@dataclass(frozen=True, kw_only=True)
class TorchOptions:
    """How a torch estimator runs (not what it computes): `--flow-param compile=1 dtype=bf16 sync_every=N`.

    dtype: precision of TV-L1's iterated state, or of the network under autocast (fp32, fp16, bf16).
    sync_every: TV-L1 steps between host checks of the epsilon stop (None: the device's default,
    1 on CPU and 10 on CUDA; 0: never check, every pair runs all iterations; the flow is the
    same either way, since a pair that has stopped is frozen by a mask).
    """

    compile: bool = False
    dtype: str = "fp32"
    sync_every: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.sync_every is not None and (isinstance(self.sync_every, bool) or self.sync_every < 0):
            raise ValueError(f"sync_every must be >= 0, got {self.sync_every!r}")
        if not isinstance(self.compile, (bool, int)) or self.compile not in (0, 1):
            raise ValueError(f"compile must be 0 or 1, got {self.compile!r}")
        object.__setattr__(self, "compile", bool(self.compile))


TORCH_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(TorchOptions))


def check_frames(prev: np.ndarray, nxt: np.ndarray, kind: str) -> None:
    """Raise ValueError unless prev, nxt are equal-shape uint8 batches of `kind` ("gray": (N, H, W),
    "rgb": (N, H, W, 3)) with frames of at least 3x3 pixels."""
    want = "(N, H, W) grayscale" if kind == "gray" else "(N, H, W, 3) RGB"
    for name, arr in (("prev", prev), ("nxt", nxt)):
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, got {type(arr).__name__}")
        if arr.ndim != (3 if kind == "gray" else 4) or (kind == "rgb" and arr.shape[-1] != 3):
            raise ValueError(f"{name} must be {want}, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ValueError(f"{name} must be uint8, got {arr.dtype}")
    if prev.shape != nxt.shape:
        raise ValueError(f"prev and nxt must have one shape, got {prev.shape} and {nxt.shape}")
    if prev.shape[1] < 3 or prev.shape[2] < 3:
        raise ValueError(f"frames must be at least 3x3 pixels, got {prev.shape[1:3]}")
