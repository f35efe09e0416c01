"""Optical-flow conventions shared by every estimator, and the estimator factory.

Direction: field i is the flow from frame t to frame t+step, in pixels of the stored
resolution, x to the right and y down (OpenCV's convention): I_t(p) ~ I_{t+step}(p + d(p)).

Quantization (TSN's convention, rounding rather than truncating):
    q = clip(round(255 * (d + b) / (2b)), 0, 255)     d = q * 2b / 255 - b
so zero motion maps to 128 (127.5 rounded half to even is 128) and one level is 2b/255 px.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipeline.flow_params import PARAM_TYPES, DISParams, FarnebackParams, RAFTParams, TVL1Params

DEFAULT_BOUND = 20.0
QUANTIZATION = "q = clip(round(255 * (d + b) / (2 * b)), 0, 255); d = q * 2 * b / 255 - b"

ALGORITHMS = ("tvl1", "farneback", "dis", "raft_small", "raft_large")
BACKENDS = ("opencv", "torch")
_IMPLEMENTED = {"opencv": ("tvl1", "farneback", "dis"), "torch": ("tvl1", "raft_small", "raft_large")}


def quantize(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Map float flow (pixels) to uint8 with the shared convention; values beyond +-bound clip."""
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    q = np.rint((np.asarray(flow, dtype=np.float32) + bound) * (255.0 / (2.0 * bound)))
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantize(q: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Inverse of `quantize` up to half a level (bound / 255 px)."""
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    return np.asarray(q, dtype=np.float32) * np.float32(2.0 * bound / 255.0) - np.float32(bound)


@dataclass(frozen=True, kw_only=True)
class FlowConfig:
    """Which flow to compute and how; every field here changes the stored flow."""

    algorithm: str = "tvl1"
    backend: str = "opencv"  # "torch" is the batched TV-L1 (CPU or CUDA)
    device: str = "cpu"  # torch backend only: "cpu" or "cuda[:N]"
    step: int = 1
    bound: float = DEFAULT_BOUND
    params: TVL1Params | FarnebackParams | DISParams | RAFTParams | None = None
    batch_size: int = 16  # frame pairs per estimator call (torch backend batches them)
    threads: int = 1  # OpenCV threads per worker; Ray runs one worker per core

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown flow algorithm {self.algorithm!r}; choose one of {ALGORITHMS}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown flow backend {self.backend!r}; choose one of {BACKENDS}")
        if self.algorithm not in _IMPLEMENTED[self.backend]:
            raise ValueError(f"the {self.backend} backend implements {_IMPLEMENTED[self.backend]}, "
                             f"not {self.algorithm!r}")
        if self.backend == "opencv" and self.device != "cpu":
            raise ValueError(f"the opencv backend runs on cpu only, not {self.device!r}")
        if self.step < 1:
            raise ValueError(f"step must be >= 1, got {self.step}")
        if self.bound <= 0:
            raise ValueError(f"bound must be positive, got {self.bound}")
        if self.batch_size < 1 or self.threads < 1:
            raise ValueError("batch_size and threads must be >= 1")
        if self.params is None:
            object.__setattr__(self, "params", PARAM_TYPES[self.algorithm]())
        elif not isinstance(self.params, PARAM_TYPES[self.algorithm]):
            raise ValueError(f"{self.algorithm} needs {PARAM_TYPES[self.algorithm].__name__}, got {type(self.params).__name__}")

    def params_dict(self) -> dict:
        """The algorithm parameters as a plain dict (stored in each sample's metadata)."""
        return dataclasses.asdict(self.params)

    def output_dict(self) -> dict:
        """Every setting that changes the stored flow bytes (not batch size, threads or device)."""
        return {"algorithm": self.algorithm, "backend": self.backend, "step": self.step,
                "bound": self.bound, "params": self.params_dict()}


def params_from_dict(algorithm: str, values: dict) -> TVL1Params | FarnebackParams | DISParams | RAFTParams:
    """Build the typed parameter record of `algorithm` from a dict, naming any unknown key."""
    cls = PARAM_TYPES.get(algorithm)
    if cls is None:
        raise ValueError(f"unknown flow algorithm {algorithm!r}; choose one of {ALGORITHMS}")
    names = {f.name for f in dataclasses.fields(cls)}
    values = {("lambda_" if k == "lambda" else k): v for k, v in values.items()}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {algorithm} parameter(s) {unknown}; known: {sorted(names)}")
    return cls(**values)


class FlowEstimator(Protocol):
    """Computes dense flow for a batch of grayscale frame pairs.

    prev, nxt: (N, H, W) uint8 grayscale. Returns (N, H, W, 2) float32, x then y, in pixels.
    """

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray: ...


def make_estimator(cfg: FlowConfig) -> FlowEstimator:
    """Build the estimator `cfg` names. Imports lazily so a CPU worker never imports torch."""
    if cfg.algorithm.startswith("raft"):
        from pipeline import flow_raft

        return flow_raft.RAFTFlow(cfg.params.weights, model=cfg.algorithm, device=cfg.device,
                                  num_flow_updates=cfg.params.num_flow_updates)
    if cfg.backend == "torch":
        from pipeline import flow_torch

        return flow_torch.TorchTVL1(cfg.params, device=cfg.device)
    from pipeline import flow_cpu

    factories = {"tvl1": flow_cpu.OpenCVTVL1, "farneback": flow_cpu.Farneback, "dis": flow_cpu.DIS}
    return factories[cfg.algorithm](cfg.params, threads=cfg.threads)
