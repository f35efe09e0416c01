"""OpenCV flow estimators on CPU: TV-L1, Farneback and DIS, with the `FlowEstimator` contract.

est(prev, nxt) with prev, nxt (N, H, W) uint8 grayscale returns (N, H, W, 2) float32 flow from
prev to nxt, x right and y down in pixels (OpenCV's convention). Each estimator builds its
OpenCV object once and sets OpenCV's thread count: Ray runs one worker per core, so OpenCV's
own thread pool (TV-L1 and DIS use one) would oversubscribe the cores unless it is capped.
cv2.setNumThreads is process-wide, so the last estimator built in a process sets it.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from pipeline.flow.params import DISParams, FarnebackParams, TVL1Params, check_frames

log = logging.getLogger(__name__)

_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def check_pair_batch(prev: np.ndarray, nxt: np.ndarray) -> None:
    """Raise ValueError unless prev and nxt are equal-shape (N, H, W) uint8 arrays, H, W >= 3."""
    check_frames(prev, nxt, "gray")


def _set_threads(threads: int) -> None:
    """Cap OpenCV's worker threads for this process (see the module docstring)."""
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    cv2.setNumThreads(threads)


def _check_params(params, cls):
    """Default `params` to cls(), and reject a record of another algorithm."""
    params = cls() if params is None else params
    if not isinstance(params, cls):
        raise ValueError(f"expected {cls.__name__}, got {type(params).__name__}")
    return params


def _run_pairs(fn, prev: np.ndarray, nxt: np.ndarray, init_flow: np.ndarray | None = None) -> np.ndarray:
    """Apply fn(prev_i, nxt_i, init_i) to each pair and stack the (H, W, 2) float32 results."""
    check_pair_batch(prev, nxt)
    n, h, w = prev.shape
    if init_flow is not None and np.shape(init_flow) != (n, h, w, 2):
        raise ValueError(f"init_flow must be (N, H, W, 2) = {(n, h, w, 2)}, got {np.shape(init_flow)}")
    if n == 1 and init_flow is None:  # the flow task's call: OpenCV's own array, not copied
        return fn(np.ascontiguousarray(prev[0]), np.ascontiguousarray(nxt[0]), None)[None]
    out = np.empty((n, h, w, 2), np.float32)
    for i in range(n):
        init = None if init_flow is None else np.array(init_flow[i], np.float32)
        out[i] = fn(np.ascontiguousarray(prev[i]), np.ascontiguousarray(nxt[i]), init)
    return out


class _PairEstimator:
    """Shared by the OpenCV estimators: typed params, thread count, and the batch contract
    (N pairs in, (N, H, W, 2) float32 out) over a per-pair `_one`."""

    name = ""
    input = "gray"  # every OpenCV estimator here takes luma (N, H, W) uint8
    batched = False  # pairs are computed one by one: a larger batch only adds a copy
    params_type: type = object

    def __init__(self, params=None, threads: int = 1):
        self.params = _check_params(params, self.params_type)
        self.threads = threads
        _set_threads(threads)

    def _one(self, prev: np.ndarray, nxt: np.ndarray, init: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, prev: np.ndarray, nxt: np.ndarray, init_flow: np.ndarray | None = None) -> np.ndarray:
        """Flow prev -> nxt per pair; init_flow (N, H, W, 2) is used where the params ask for it."""
        return _run_pairs(self._one, prev, nxt, init_flow)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threads={self.threads}, params={self.params})"


class OpenCVTVL1(_PairEstimator):
    """cv2.optflow.DualTVL1OpticalFlow with every `TVL1Params` field, one pair at a time."""

    name = "opencv-tvl1"
    params_type = TVL1Params

    def __init__(self, params: TVL1Params | None = None, threads: int = 1):
        super().__init__(params, threads)
        p = self.params
        if p.median_filtering > 1 and p.median_filtering not in (3, 5):
            # cv::medianBlur on float images supports 3x3 and 5x5 windows only.
            raise ValueError(f"OpenCV TV-L1 needs median_filtering of 0, 1, 3 or 5, got {p.median_filtering}")
        # Positional: the Python binding names the arguments lambda_ and innnerIterations (sic).
        self._tvl1 = cv2.optflow.DualTVL1OpticalFlow_create(
            p.tau,
            p.lambda_,
            p.theta,
            p.nscales,
            p.warps,
            p.epsilon,
            p.inner_iterations,
            p.outer_iterations,
            p.scale_step,
            p.gamma,
            p.median_filtering,
            p.use_initial_flow,
        )
        log.debug("built %r", self)

    def _one(self, prev: np.ndarray, nxt: np.ndarray, init: np.ndarray | None) -> np.ndarray:
        # calc() lowers the object's scale count for small frames and keeps it lowered: restore
        # it so one estimator gives the same flow whatever sizes it saw before.
        self._tvl1.setScalesNumber(self.params.nscales)
        if self.params.use_initial_flow:
            init = np.zeros((*prev.shape, 2), np.float32) if init is None else init
            return self._tvl1.calc(prev, nxt, init)
        return self._tvl1.calc(prev, nxt, None)


class Farneback(_PairEstimator):
    """cv2.calcOpticalFlowFarneback with `FarnebackParams`, one pair at a time."""

    name = "opencv-farneback"
    params_type = FarnebackParams

    def _one(self, prev: np.ndarray, nxt: np.ndarray, init: np.ndarray | None) -> np.ndarray:
        p = self.params
        if p.flags & cv2.OPTFLOW_USE_INITIAL_FLOW and init is None:
            init = np.zeros((*prev.shape, 2), np.float32)  # the flag needs a flow to start from
        return cv2.calcOpticalFlowFarneback(
            prev, nxt, init, p.pyr_scale, p.levels, p.winsize, p.iterations, p.poly_n, p.poly_sigma, p.flags
        )


class DIS(_PairEstimator):
    """cv2.DISOpticalFlow from a preset, with the non-None `DISParams` fields overriding it."""

    name = "opencv-dis"
    params_type = DISParams

    def __init__(self, params: DISParams | None = None, threads: int = 1):
        super().__init__(params, threads)
        self._dis = self._build(self.params)
        log.debug("built %r", self)

    @staticmethod
    def _build(p: DISParams):
        dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[p.preset])
        overrides = {
            "setFinestScale": p.finest_scale,
            "setPatchSize": p.patch_size,
            "setPatchStride": p.patch_stride,
            "setGradientDescentIterations": p.gradient_descent_iterations,
            "setVariationalRefinementIterations": p.variational_refinement_iterations,
        }
        for setter, value in overrides.items():
            if value is not None:
                getattr(dis, setter)(int(value))
        dis.setUseMeanNormalization(bool(p.use_mean_normalization))
        dis.setUseSpatialPropagation(bool(p.use_spatial_propagation))
        return dis

    def _one(self, prev: np.ndarray, nxt: np.ndarray, init: np.ndarray | None) -> np.ndarray:  # noqa: ARG002 (the _PairEstimator signature)
        return self._dis.calc(prev, nxt, None)  # DIS takes no initial flow
