"""Optical-flow conventions shared by every estimator, and the estimator factory.

Direction: field i is the flow from frame t to frame t+step, in pixels of the stored
resolution, x to the right and y down (OpenCV's convention): I_t(p) ~ I_{t+step}(p + d(p)).

Quantization (TSN's convention, rounding rather than truncating):
    q = clip(round(255 * (d + b) / (2b)), 0, 255)     d = q * 2b / 255 - b
so zero motion maps to 128 (127.5 rounded half to even is 128) and one level is 2b/255 px.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pipeline.flow.params import (DEFAULT_BOUND, PARAM_TYPES, DISParams, FarnebackParams, RAFTParams,  # noqa: F401
                                  SEARAFTParams, TVL1Params)

QUANTIZATION = "q = clip(round(255 * (d + b) / (2 * b)), 0, 255); d = q * 2 * b / 255 - b"

ALGORITHMS = ("tvl1", "farneback", "dis", "raft_small", "raft_large", "sea_raft_s", "sea_raft_m")
LEARNED = ("raft_small", "raft_large", "sea_raft_s", "sea_raft_m")  # networks: torch only, fed RGB
BACKENDS = ("opencv", "torch")
_IMPLEMENTED = {"opencv": ("tvl1", "farneback", "dis"), "torch": ("tvl1",) + LEARNED}
DTYPES = ("fp32", "fp16", "bf16")


def quantize(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Map float flow (pixels) to uint8 with the shared convention; values beyond +-bound clip."""
    return quantize_inplace(np.array(flow, dtype=np.float32), bound)


def quantize_inplace(values: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """`quantize` of a float32 array that may be overwritten (no temporaries: the encoder's path)."""
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    if values.dtype != np.float32:
        raise ValueError(f"quantize_inplace needs float32 values, got {values.dtype}")
    # float32 throughout, in the formula's order: the same bytes as the expression written out.
    values += np.float32(bound)
    values *= np.float32(255.0 / (2.0 * bound))
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


def dequantize(q: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Inverse of `quantize` up to half a level (bound / 255 px)."""
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    return np.asarray(q, dtype=np.float32) * np.float32(2.0 * bound / 255.0) - np.float32(bound)


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


def default_batch_size(algorithm: str, device: str, height: int, width: int) -> int:
    """Frame pairs per estimator call when --batch-size is not given, by estimator and frame size.

    On CUDA the batch is sized by pixels (a GPU needs many pairs in flight to be busy, and memory
    grows with pixels): about 128 TV-L1 pairs, 32 RAFT or 64 SEA-RAFT pairs at 340x256. On CPU
    small batches stay in cache and every core already has its own worker.
    """
    if not device.startswith("cuda"):
        return 4 if algorithm in LEARNED else 16
    budget = {"tvl1": 11_000_000, "raft_small": 5_600_000, "raft_large": 2_800_000,
              "sea_raft_s": 5_600_000, "sea_raft_m": 5_600_000}.get(algorithm, 11_000_000)
    return int(min(256, max(8, budget // max(1, height * width))))


@dataclass(frozen=True, kw_only=True)
class FlowConfig:
    """Which flow to compute and how; every field here changes the stored flow."""

    algorithm: str = "tvl1"
    backend: str = "opencv"  # "torch" is the batched TV-L1 (CPU or CUDA)
    device: str = "cpu"  # torch backend only: "cpu" or "cuda[:N]"
    step: int = 1
    bound: float = DEFAULT_BOUND
    params: TVL1Params | FarnebackParams | DISParams | RAFTParams | SEARAFTParams | None = None
    batch_size: int | None = None  # frame pairs per estimator call; None: default_batch_size
    threads: int = 1  # OpenCV threads per worker; Ray runs one worker per core
    torch_options: TorchOptions = field(default_factory=TorchOptions)  # torch backend only

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
        if (self.batch_size is not None and self.batch_size < 1) or self.threads < 1:
            raise ValueError("batch_size and threads must be >= 1")
        if self.backend != "torch" and self.torch_options != TorchOptions():
            raise ValueError(f"compile, dtype and sync_every apply to the torch backend, not {self.backend!r}")
        if self.params is None:
            object.__setattr__(self, "params", PARAM_TYPES[self.algorithm]())
        elif not isinstance(self.params, PARAM_TYPES[self.algorithm]):
            raise ValueError(f"{self.algorithm} needs {PARAM_TYPES[self.algorithm].__name__}, got {type(self.params).__name__}")

    def params_dict(self) -> dict:
        """The algorithm parameters as a plain dict (stored in each sample's metadata)."""
        return dataclasses.asdict(self.params)

    @property
    def input(self) -> str:
        """What the estimator takes: "gray" (N, H, W) or "rgb" (N, H, W, 3) uint8 frames."""
        return "rgb" if self.algorithm in LEARNED else "gray"

    def batch_for(self, height: int, width: int) -> int:
        """Pairs per estimator call for frames of this size: --batch-size, or the default."""
        return self.batch_size or default_batch_size(self.algorithm, self.device, height, width)

    def output_dict(self) -> dict:
        """Every setting that changes the stored flow bytes (not batch size, threads, device,
        compile or sync_every; a reduced precision does change them and is recorded). Weights
        count by their content hash in the build's tools (`pipeline.tools`), not by their path:
        the same weights elsewhere give the same bytes."""
        params = {k: v for k, v in self.params_dict().items() if k != "weights"}
        out = {"algorithm": self.algorithm, "backend": self.backend, "step": self.step,
               "bound": self.bound, "params": params}
        if self.torch_options.dtype != "fp32":
            out["dtype"] = self.torch_options.dtype
        return out


def split_torch_options(values: dict) -> tuple[dict, TorchOptions]:
    """Split `--flow-param` values into the algorithm's parameters and the TorchOptions."""
    params = {k: v for k, v in values.items() if k not in TORCH_OPTION_NAMES}
    options = TorchOptions(**{k: v for k, v in values.items() if k in TORCH_OPTION_NAMES})
    return params, options


def params_from_dict(algorithm: str, values: dict) -> TVL1Params | FarnebackParams | DISParams | RAFTParams | SEARAFTParams:
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
    """Computes dense flow for a batch of frame pairs.

    prev, nxt: (N, H, W) uint8 grayscale, or (N, H, W, 3) uint8 RGB where the estimator's
    `input` attribute is "rgb" (the learned ones: grey copied to three channels is not RGB).
    Returns (N, H, W, 2) float32, x then y, in pixels. An estimator whose `batched` is False
    computes pairs one by one, so callers gain nothing from batches and pass one pair per call.
    """

    input: str

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray: ...


def make_estimator(cfg: FlowConfig) -> FlowEstimator:
    """Build the estimator `cfg` names. Imports lazily so a CPU worker never imports torch."""
    opts = cfg.torch_options
    if cfg.algorithm.startswith("raft"):
        from pipeline.flow import raft as flow_raft

        return flow_raft.RAFTFlow(cfg.params.weights, model=cfg.algorithm, device=cfg.device,
                                  num_flow_updates=cfg.params.num_flow_updates, compile=opts.compile, dtype=opts.dtype)
    if cfg.algorithm.startswith("sea_raft"):
        from pipeline.flow import searaft

        return searaft.SEARAFTFlow(cfg.params.weights, variant=cfg.algorithm[-1].upper(), device=cfg.device,
                                        iters=cfg.params.iters, compile=opts.compile, dtype=opts.dtype)
    if cfg.backend == "torch":
        from pipeline.flow import tvl1_torch

        return tvl1_torch.TorchTVL1(cfg.params, device=cfg.device, compile=opts.compile, dtype=opts.dtype,
                                    sync_every=opts.sync_every)
    from pipeline.flow import opencv as flow_cpu

    factories = {"tvl1": flow_cpu.OpenCVTVL1, "farneback": flow_cpu.Farneback, "dis": flow_cpu.DIS}
    return factories[cfg.algorithm](cfg.params, threads=cfg.threads)
