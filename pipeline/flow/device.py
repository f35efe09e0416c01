"""What every torch estimator shares: device checks, uint8 quantization on the device, and the
overlapped batch pipeline (pinned host buffers, side-stream copies) that keeps a GPU busy.

A batch goes through three calls, so that a caller holding several batches overlaps them:

    staged = est.stage(prev, nxt)      # host -> device copy starts (CUDA: copy stream, pinned source)
    pending = est.launch(staged, b)    # flow on the compute stream, quantized to uint8 there, then the
                                       # device -> host copy queued on a third stream
    q = est.result(pending)            # waits for that copy alone: (N, H, W, 2) uint8

A caller that stages batch k+1 before launching batch k, and takes result k-1 after launching
batch k, has the copy in of k+1 and the copy out of k-1 run while k computes, and moves uint8
both ways (frames in, quantized fields out: a quarter of float32's bytes). On CPU the same
calls run in order without streams, so the CPU tests exercise the same logic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.flow.params import check_frames
from pipeline.flow.quantize import DEFAULT_BOUND

log = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # params.DTYPES


def torch_device(device: str | torch.device) -> torch.device:
    """The torch device `device` names; ValueError unless it is cpu or an available cuda[:N]."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"bad torch device {device!r}: {exc}") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N], got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available")
    return dev


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """fp32 / fp16 / bf16 (or the torch dtype itself) -> torch dtype; ValueError otherwise."""
    if isinstance(dtype, torch.dtype) and dtype in TORCH_DTYPES.values():
        return dtype
    if dtype in TORCH_DTYPES:
        return TORCH_DTYPES[dtype]
    raise ValueError(f"dtype must be one of {sorted(TORCH_DTYPES)}, got {dtype!r}")


def quantize_tensor(flow: torch.Tensor, bound: float = DEFAULT_BOUND) -> torch.Tensor:
    """`pipeline.flow.quantize.quantize` on the device: (N, 2, H, W) float -> (N, H, W, 2) uint8, same bytes.

    float32 throughout and round-half-to-even (torch.round, like np.rint), so the result is
    byte-identical to quantizing the same float32 flow on the host.
    """
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    q = torch.round((flow.float() + bound) * (255.0 / (2.0 * bound))).clamp_(0, 255)
    return q.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@dataclass
class Staged:
    """A batch on its way to (or on) the device: uint8 frames and the event that ends their copy."""

    prev: torch.Tensor
    nxt: torch.Tensor
    event: Any = None  # torch.cuda.Event on CUDA
    host: Any = None  # the pinned source, kept until the copy is launched


@dataclass
class Pending:
    """A launched batch: its (N, H, W, 2) uint8 fields, on the host once `event` has fired."""

    out: torch.Tensor
    event: Any = None


class DeviceEstimator:
    """Base of the torch estimators: subclasses set `input` and `name` and implement `_flow`.

    est(prev, nxt) keeps the numpy `FlowEstimator` contract (float32 fields); `stage`, `launch`
    and `result` are the overlapped path (module docstring) that yields uint8 fields.
    """

    input = "gray"  # or "rgb"
    name = "torch"

    def __init__(self, device: str | torch.device = "cpu", dtype: str | torch.dtype = "fp32") -> None:
        self.device = torch_device(device)
        self.dtype = torch_dtype(dtype)
        self.streams = None
        if self.device.type == "cuda":
            # Non-default streams: the copies in and out run beside the compute stream.
            self.streams = {k: torch.cuda.Stream(self.device) for k in ("copy", "compute", "d2h")}

    def _flow(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """(N, H, W[, 3]) uint8 frames on the device -> (N, 2, H, W) float flow prev -> nxt."""
        raise NotImplementedError

    # -- the overlapped path ------------------------------------------------------------------
    def stage(self, prev: np.ndarray, nxt: np.ndarray) -> Staged:
        """Start copying a batch to the device (from a pinned buffer, on the copy stream)."""
        check_frames(prev, nxt, self.input)
        if self.streams is None:
            return Staged(torch.from_numpy(np.ascontiguousarray(prev)), torch.from_numpy(np.ascontiguousarray(nxt)))
        host = torch.empty((2, *prev.shape), dtype=torch.uint8, pin_memory=True)
        host[0].numpy()[...] = prev
        host[1].numpy()[...] = nxt
        copy = self.streams["copy"]
        with torch.cuda.stream(copy):
            dev = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(copy)
        return Staged(dev[0], dev[1], event, host)

    def launch(self, staged: Staged, bound: float = DEFAULT_BOUND) -> Pending:
        """Compute and quantize a staged batch; on CUDA also queue its copy back, without waiting."""
        q = self._on_compute(staged, lambda a, b: self._quantized(a, b, bound))
        if self.streams is None:
            return Pending(q)
        compute, d2h = self.streams["compute"], self.streams["d2h"]
        done = torch.cuda.Event()
        done.record(compute)
        with torch.cuda.stream(d2h):
            d2h.wait_event(done)
            out = torch.empty(q.shape, dtype=torch.uint8, pin_memory=True)
            out.copy_(q, non_blocking=True)
            q.record_stream(d2h)
            event = torch.cuda.Event()
            event.record(d2h)
        return Pending(out, event)

    def result(self, pending: Pending) -> np.ndarray:
        """The (N, H, W, 2) uint8 fields of a launched batch (waits for its copy back only)."""
        if pending.event is not None:
            pending.event.synchronize()
        return pending.out.numpy()

    def quantized(self, prev: np.ndarray, nxt: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
        """One batch through stage, launch and result: (N, H, W, 2) uint8 quantized fields."""
        return self.result(self.launch(self.stage(prev, nxt), bound))

    def _on_compute(self, staged: Staged, fn):
        """fn(prev, nxt) on the compute stream, once the batch's copy in has landed."""
        if self.streams is None:
            return fn(staged.prev, staged.nxt)
        compute = self.streams["compute"]
        with torch.cuda.stream(compute):
            compute.wait_event(staged.event)
            staged.prev.record_stream(compute)  # allocated on the copy stream, used here
            return fn(staged.prev, staged.nxt)

    def _quantized(self, prev: torch.Tensor, nxt: torch.Tensor, bound: float) -> torch.Tensor:
        n, h, w = prev.shape[:3]
        if n == 0:
            return torch.zeros((0, h, w, 2), dtype=torch.uint8, device=prev.device)
        with torch.inference_mode():
            return quantize_tensor(self._flow(prev, nxt), bound)

    # -- the float contract ---------------------------------------------------------------------
    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """Flow prev -> nxt per pair: (N, H, W, 2) float32, x then y, in pixels."""
        staged = self.stage(prev, nxt)
        n, h, w = prev.shape[:3]
        if n == 0:
            return np.zeros((0, h, w, 2), np.float32)
        with torch.inference_mode():
            flow = self._on_compute(staged, lambda a, b: self._flow(a, b).permute(0, 2, 3, 1).float().cpu())
        return np.ascontiguousarray(flow.numpy(), dtype=np.float32)
