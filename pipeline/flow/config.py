"""Which flow a build computes and how (`FlowConfig`), checked against the estimator table, and
the helpers that turn `--flow-param` values into typed records."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.flow.estimators import backend_for, spec
from pipeline.flow.params import TORCH_OPTION_NAMES, TorchOptions
from pipeline.flow.quantize import DEFAULT_BOUND


def default_batch_size(algorithm: str, device: str, height: int, width: int) -> int:
    """Frame pairs per estimator call when --batch-size is not given, by estimator and frame size.

    On CUDA the batch is sized by pixels (a GPU needs many pairs in flight to be busy, and memory
    grows with pixels): about 128 TV-L1 pairs, 32 RAFT or 64 SEA-RAFT pairs at 340x256. On CPU
    small batches stay in cache and every core already has its own worker. The numbers are the
    estimator's row (`pipeline.flow.estimators.ESTIMATORS`).
    """
    row = spec(algorithm)
    if not device.startswith("cuda"):
        return row.cpu_batch
    return int(min(256, max(8, row.cuda_batch_pixels // max(1, height * width))))


@dataclass(frozen=True, kw_only=True)
class FlowConfig:
    """Which flow to compute and how; every field here changes the stored flow."""

    algorithm: str = "tvl1"
    backend: str = "opencv"  # "torch" is the batched TV-L1 (CPU or CUDA) and the learned estimators
    device: str = "cpu"  # torch backend only: "cpu" or "cuda[:N]"
    step: int = 1
    bound: float = DEFAULT_BOUND
    params: Any = None  # an instance of the algorithm's params type (its table row); None: its defaults
    batch_size: int | None = None  # frame pairs per estimator call; None: default_batch_size
    threads: int = 1  # OpenCV threads per worker; Ray runs one worker per core
    torch_options: TorchOptions = field(default_factory=TorchOptions)  # torch backend only

    def __post_init__(self) -> None:
        backend_for(self.algorithm, self.backend, self.device)  # names the algorithm, backend or device refused
        if self.step < 1:
            raise ValueError(f"step must be >= 1, got {self.step}")
        if self.bound <= 0:
            raise ValueError(f"bound must be positive, got {self.bound}")
        if (self.batch_size is not None and self.batch_size < 1) or self.threads < 1:
            raise ValueError("batch_size and threads must be >= 1")
        if self.backend != "torch" and self.torch_options != TorchOptions():
            raise ValueError(f"compile, dtype and sync_every apply to the torch backend, not {self.backend!r}")
        params_type = spec(self.algorithm).params
        if self.params is None:
            object.__setattr__(self, "params", params_type())
        elif not isinstance(self.params, params_type):
            raise ValueError(f"{self.algorithm} needs {params_type.__name__}, got {type(self.params).__name__}")

    def params_dict(self) -> dict:
        """The algorithm parameters as a plain dict (stored in each sample's metadata)."""
        return dataclasses.asdict(self.params)

    @property
    def input(self) -> str:
        """What the estimator takes: "gray" (N, H, W) or "rgb" (N, H, W, 3) uint8 frames."""
        return spec(self.algorithm).input

    def batch_for(self, height: int, width: int) -> int:
        """Pairs per estimator call for frames of this size: --batch-size, or the default."""
        return self.batch_size or default_batch_size(self.algorithm, self.device, height, width)

    def output_dict(self) -> dict:
        """Every setting that changes the stored flow bytes (not batch size, threads, device,
        compile or sync_every; a reduced precision does change them and is recorded). Weights
        count by their content hash in the build's tools (`pipeline.tools`), not by their path:
        the same weights elsewhere give the same bytes."""
        params = {k: v for k, v in self.params_dict().items() if k != "weights"}
        out = {
            "algorithm": self.algorithm,
            "backend": self.backend,
            "step": self.step,
            "bound": self.bound,
            "params": params,
        }
        if self.torch_options.dtype != "fp32":
            out["dtype"] = self.torch_options.dtype
        return out


def split_torch_options(values: dict) -> tuple[dict, TorchOptions]:
    """Split `--flow-param` values into the algorithm's parameters and the TorchOptions."""
    params = {k: v for k, v in values.items() if k not in TORCH_OPTION_NAMES}
    options = TorchOptions(**{k: v for k, v in values.items() if k in TORCH_OPTION_NAMES})
    return params, options


def params_from_dict(algorithm: str, values: dict) -> Any:
    """Build the typed parameter record of `algorithm` from a dict, naming any unknown key."""
    cls = spec(algorithm).params
    names = {f.name for f in dataclasses.fields(cls)}
    values = {("lambda_" if k == "lambda" else k): v for k, v in values.items()}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {algorithm} parameter(s) {unknown}; known: {sorted(names)}")
    return cls(**values)
