"""The estimator protocol and the one table of estimators: name -> params type, input, backends
(each with its factory and the devices it runs on), learned or not, batch sizes, and what else
its flow depends on. Every list of algorithm or backend names is derived from `ESTIMATORS`;
adding an estimator is its module, a factory here and one row.

Direction: field i is the flow from frame t to frame t+step, in pixels of the stored
resolution, x to the right and y down (OpenCV's convention): I_t(p) ~ I_{t+step}(p + d(p)).

Factories import their module when called, so a CPU worker never imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.flow.params import DISParams, FarnebackParams, RAFTParams, SEARAFTParams, TorchOptions, TVL1Params

INPUTS = ("gray", "rgb")
DEVICE_TYPES = ("cpu", "cuda")


class FlowEstimator(Protocol):
    """Computes dense flow for a batch of frame pairs.

    prev, nxt: (N, H, W) uint8 grayscale, or (N, H, W, 3) uint8 RGB where the estimator's
    `input` attribute is "rgb" (the learned ones: grey copied to three channels is not RGB).
    Returns (N, H, W, 2) float32, x then y, in pixels. An estimator whose `batched` is False
    computes pairs one by one, so callers gain nothing from batches and pass one pair per call.
    """

    input: str

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray: ...


class FlowSettings(Protocol):
    """What a factory reads from a `pipeline.flow.config.FlowConfig`. A protocol rather than the
    class itself: FlowConfig validates against this module's table, so this module cannot import it."""

    @property
    def algorithm(self) -> str: ...

    @property
    def backend(self) -> str: ...

    @property
    def device(self) -> str: ...

    @property
    def params(self) -> Any: ...

    @property
    def threads(self) -> int: ...

    @property
    def torch_options(self) -> TorchOptions: ...


Factory = Callable[[FlowSettings], FlowEstimator]


@dataclass(frozen=True, kw_only=True)
class Backend:
    """One backend's build of an estimator: the factory, and the device types it runs on."""

    factory: Factory
    devices: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = [d for d in self.devices if d not in DEVICE_TYPES]
        if not self.devices or unknown:
            raise ValueError(f"devices must be a non-empty subset of {DEVICE_TYPES}, got {self.devices!r}")


@dataclass(frozen=True, kw_only=True)
class EstimatorSpec:
    """One row of the table.

    params: the parameter record (a frozen dataclass); its defaults are the estimator's defaults.
    backends: backend name -> Backend.
    input: what it takes, "gray" (N, H, W) or "rgb" (N, H, W, 3) uint8 frames.
    learned: a network with weights from a local file.
    cpu_batch: frame pairs per call on CPU (small batches stay in cache; every core has a worker).
    cuda_batch_pixels: frame pixels per call on CUDA (a GPU needs many pairs in flight, and
        memory grows with pixels); the batch is this over H * W, clamped to 8..256.
    packages: Python packages beyond the backend's own whose code computes this flow (their
        versions join the build's tools fingerprint, `pipeline.tools`).
    cached_weights: algorithm -> the weights file used when params give none (raises OSError
        when it is absent); None where there is no such default.
    """

    params: type
    backends: Mapping[str, Backend]
    input: str = "gray"
    learned: bool = False
    cpu_batch: int = 16
    cuda_batch_pixels: int = 11_000_000
    packages: tuple[str, ...] = ()
    cached_weights: Callable[[str], Path] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.params, type) and dataclasses.is_dataclass(self.params)):
            raise ValueError(f"params must be a dataclass type, got {self.params!r}")
        if not self.backends:
            raise ValueError("an estimator needs at least one backend")
        if self.input not in INPUTS:
            raise ValueError(f"input must be one of {INPUTS}, got {self.input!r}")
        if self.cpu_batch < 1 or self.cuda_batch_pixels < 1:
            raise ValueError(
                f"cpu_batch and cuda_batch_pixels must be >= 1, got {self.cpu_batch}, {self.cuda_batch_pixels}"
            )


def _opencv_tvl1(cfg: FlowSettings) -> FlowEstimator:
    from pipeline.flow.opencv import OpenCVTVL1

    return OpenCVTVL1(cfg.params, threads=cfg.threads)


def _farneback(cfg: FlowSettings) -> FlowEstimator:
    from pipeline.flow.opencv import Farneback

    return Farneback(cfg.params, threads=cfg.threads)


def _dis(cfg: FlowSettings) -> FlowEstimator:
    from pipeline.flow.opencv import DIS

    return DIS(cfg.params, threads=cfg.threads)


def _torch_tvl1(cfg: FlowSettings) -> FlowEstimator:
    from pipeline.flow.tvl1_torch import TorchTVL1

    opts = cfg.torch_options
    return TorchTVL1(cfg.params, device=cfg.device, compile=opts.compile, dtype=opts.dtype, sync_every=opts.sync_every)


def _raft(cfg: FlowSettings, *, model: str) -> FlowEstimator:
    from pipeline.flow.raft import RAFTFlow

    opts = cfg.torch_options
    return RAFTFlow(
        cfg.params.weights,
        model=model,
        device=cfg.device,
        num_flow_updates=cfg.params.num_flow_updates,
        compile=opts.compile,
        dtype=opts.dtype,
    )


def _sea_raft(cfg: FlowSettings, *, variant: str) -> FlowEstimator:
    from pipeline.flow.searaft import SEARAFTFlow

    opts = cfg.torch_options
    return SEARAFTFlow(
        cfg.params.weights,
        variant=variant,
        device=cfg.device,
        iters=cfg.params.iters,
        compile=opts.compile,
        dtype=opts.dtype,
    )


def _torchvision_weights(algorithm: str) -> Path:
    """The checkpoint torchvision caches after a download elsewhere (never downloaded here)."""
    from pipeline.flow.raft import find_weights

    return find_weights(algorithm)


_CPU = ("cpu",)
_CPU_CUDA = ("cpu", "cuda")

ESTIMATORS: dict[str, EstimatorSpec] = {
    "tvl1": EstimatorSpec(
        params=TVL1Params,
        backends={
            "opencv": Backend(factory=_opencv_tvl1, devices=_CPU),
            "torch": Backend(factory=_torch_tvl1, devices=_CPU_CUDA),
        },
    ),
    "farneback": EstimatorSpec(params=FarnebackParams, backends={"opencv": Backend(factory=_farneback, devices=_CPU)}),
    "dis": EstimatorSpec(params=DISParams, backends={"opencv": Backend(factory=_dis, devices=_CPU)}),
    "raft_small": EstimatorSpec(
        params=RAFTParams,
        backends={"torch": Backend(factory=partial(_raft, model="raft_small"), devices=_CPU_CUDA)},
        input="rgb",
        learned=True,
        cpu_batch=4,
        cuda_batch_pixels=5_600_000,
        packages=("torchvision",),
        cached_weights=_torchvision_weights,
    ),
    "raft_large": EstimatorSpec(
        params=RAFTParams,
        backends={"torch": Backend(factory=partial(_raft, model="raft_large"), devices=_CPU_CUDA)},
        input="rgb",
        learned=True,
        cpu_batch=4,
        cuda_batch_pixels=2_800_000,
        packages=("torchvision",),
        cached_weights=_torchvision_weights,
    ),
    "sea_raft_s": EstimatorSpec(
        params=SEARAFTParams,
        backends={"torch": Backend(factory=partial(_sea_raft, variant="S"), devices=_CPU_CUDA)},
        input="rgb",
        learned=True,
        cpu_batch=4,
        cuda_batch_pixels=5_600_000,
    ),
    "sea_raft_m": EstimatorSpec(
        params=SEARAFTParams,
        backends={"torch": Backend(factory=partial(_sea_raft, variant="M"), devices=_CPU_CUDA)},
        input="rgb",
        learned=True,
        cpu_batch=4,
        cuda_batch_pixels=5_600_000,
    ),
}


def algorithms_for(backend: str | None = None) -> tuple[str, ...]:
    """The algorithms `backend` implements (every algorithm for None), in table order."""
    return tuple(name for name, row in ESTIMATORS.items() if backend is None or backend in row.backends)


def all_backends() -> tuple[str, ...]:
    """Every backend of the table, in order of first appearance."""
    return tuple(dict.fromkeys(b for row in ESTIMATORS.values() for b in row.backends))


ALGORITHMS = algorithms_for()
BACKENDS = all_backends()
LEARNED = tuple(name for name, row in ESTIMATORS.items() if row.learned)  # networks: torch only, fed RGB


def spec(algorithm: str) -> EstimatorSpec:
    """The table's row for `algorithm`; ValueError naming the known ones otherwise."""
    row = ESTIMATORS.get(algorithm)
    if row is None:
        raise ValueError(f"unknown flow algorithm {algorithm!r}; choose one of {algorithms_for()}")
    return row


def backend_for(algorithm: str, backend: str, device: str) -> Backend:
    """How `backend` builds `algorithm` on `device` ("cpu", "cuda[:N]"); ValueError naming what
    the table allows when it does not."""
    row = spec(algorithm)
    if backend not in all_backends():
        raise ValueError(f"unknown flow backend {backend!r}; choose one of {all_backends()}")
    if backend not in row.backends:
        raise ValueError(f"the {backend} backend implements {algorithms_for(backend)}, not {algorithm!r}")
    build = row.backends[backend]
    if device.split(":", 1)[0] not in build.devices:
        raise ValueError(f"the {backend} backend runs {algorithm} on {' or '.join(build.devices)} only, not {device!r}")
    return build


def auto_backend(algorithm: str, device: str) -> str:
    """The backend for `--flow-backend auto`: torch on cuda and where OpenCV has no such estimator,
    else opencv (the CPU path of a build)."""
    return "torch" if device.startswith("cuda") or "opencv" not in spec(algorithm).backends else "opencv"


def make_estimator(cfg: FlowSettings) -> FlowEstimator:
    """Build the estimator `cfg` (a FlowConfig) names, through its row of the table."""
    return backend_for(cfg.algorithm, cfg.backend, cfg.device).factory(cfg)
