"""Batched TV-L1 optical flow in torch, the same algorithm as OpenCV's DualTVL1OpticalFlow.

The model and every numerical step mirror opencv_contrib's modules/optflow/src/tvl1flow.cpp
(Zach, Pock and Bischof's duality-based TV-L1 in Sanchez, Meinhardt-Llopis and Facciolo's
formulation), with the same parameter names and defaults (`TVL1Params`):

* pyramid: each level is the previous one resized by `scale_step` with bilinear interpolation
  (``cv::resize(..., INTER_LINEAR)``, no pre-smoothing, which is what OpenCV does), until a side
  would drop below 16 pixels or `nscales` levels exist;
* per level: centred gradient of I1, then `warps` times: bicubic warp of I1 and of its gradient
  by the current flow (zero outside the image, as ``cv::remap`` with its default constant
  border), the linearised data term, then up to `outer_iterations` x `inner_iterations`
  primal-dual steps (thresholding with lambda*theta, divergence, primal update, forward
  gradient, dual update with tau/theta), a median filter of the flow at the start of every
  outer iteration, and OpenCV's stopping rule: a pair stops iterating in this warp once the
  summed squared flow change of one step is at most epsilon^2 * H * W;
* between levels: bilinear upsampling of the flow, multiplied by 1 / scale_step.

Batching: N pairs of one size run together; every step is a tensor op over the batch, on CPU
or CUDA with the same code (no Python loop over pairs). The stopping rule is kept per pair
exactly: a pair that has stopped keeps its flow and dual variables (masked updates) while
the others go on. Every `sync_every` steps (1 on CPU, 10 on CUDA: each check is a host sync,
the only one in the solver loop) the stopped pairs leave the working set, so a batch does not
pay for its slowest pair on every pair; the loop ends when no pair is left. sync_every=0 never
checks: every pair runs the full outer x inner iterations with no host sync at all (a fixed
iteration count for the GPU's queue, the stop rule still applied through the masks). The
result does not depend on `sync_every`; only the speed does (bench/gpu_flow.py measures both).
Pass compile=True to run each iteration through torch.compile (fused kernels; worth it on
CUDA, off by default), and dtype=torch.float16/bfloat16 for reduced-precision iterations.
Pyramid resampling taps are cached on the device, so no level pays a host-to-device copy.

Flow direction and units are OpenCV's: (N, 2, H, W), x then y in pixels, from I0 to I1:
I0(p) ~ I1(p + u(p)). Intensities are on OpenCV's scale, 0..255 (lambda depends on it).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.flow.device import DeviceEstimator, torch_dtype
from pipeline.flow.params import TVL1Params

log = logging.getLogger(__name__)

MIN_LEVEL_SIDE = 16  # OpenCV stops adding pyramid levels below 16 pixels a side
_FLT_EPSILON = float(np.finfo(np.float32).eps)  # std::numeric_limits<float>::epsilon()


# ----------------------------------------------------------------------------- resizing


@functools.lru_cache(maxsize=256)
def _resize_taps(out_len: int, in_len: int, src_per_dst: float) -> tuple[np.ndarray, ...]:
    """Neighbour indices and weights of cv::resize INTER_LINEAR along one axis.

    OpenCV maps output pixel d to source coordinate (d + 0.5) * src_per_dst - 0.5 and
    replicates the border, which clamped neighbour indices reproduce exactly.
    """
    src = (np.arange(out_len, dtype=np.float64) + 0.5) * src_per_dst - 0.5
    i0 = np.floor(src)
    frac = (src - i0).astype(np.float32)
    lo = np.clip(i0, 0, in_len - 1).astype(np.int64)
    hi = np.clip(i0 + 1, 0, in_len - 1).astype(np.int64)
    return lo, hi, 1.0 - frac, frac


@functools.lru_cache(maxsize=512)
def _device_taps(
    out_len: int, in_len: int, src_per_dst: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """`_resize_taps` as tensors on `device`, copied once: a blocking copy per level would be a host sync."""
    lo, hi, w_lo, w_hi = _resize_taps(out_len, in_len, src_per_dst)
    return (
        torch.from_numpy(lo).to(device),
        torch.from_numpy(hi).to(device),
        torch.from_numpy(w_lo).to(device, dtype),
        torch.from_numpy(w_hi).to(device, dtype),
    )


def _resize_axis(x: torch.Tensor, dim: int, out_len: int, src_per_dst: float) -> torch.Tensor:
    """Linear interpolation of x along `dim` (a gather, so exact: no TF32 matmul)."""
    lo, hi, w_lo, w_hi = _device_taps(out_len, x.shape[dim], src_per_dst, x.device, x.dtype)
    shape = [1] * x.ndim
    shape[dim] = out_len
    return x.index_select(dim, lo) * w_lo.view(shape) + x.index_select(dim, hi) * w_hi.view(shape)


def resize_bilinear(x: torch.Tensor, size: tuple[int, int], src_per_dst: tuple[float, float]) -> torch.Tensor:
    """Resize (..., H, W) to `size` = (h, w) as cv::resize INTER_LINEAR does (rows, then columns).

    `src_per_dst` is (y, x) source pixels per output pixel: 1 / fx when OpenCV is given a
    scale factor, in / out when it is given a size.
    """
    rows = _resize_axis(x, x.ndim - 2, size[0], src_per_dst[0])
    return _resize_axis(rows, x.ndim - 1, size[1], src_per_dst[1])


def pyramid_sizes(height: int, width: int, params: TVL1Params) -> list[tuple[int, int]]:
    """Level sizes, finest first, as OpenCV's calc builds them (cvRound of size * scale_step)."""
    sizes = [(height, width)]
    for _ in range(1, params.nscales):
        h, w = sizes[-1]
        nh, nw = round(h * params.scale_step), round(w * params.scale_step)
        if nh < MIN_LEVEL_SIDE or nw < MIN_LEVEL_SIDE:
            break
        sizes.append((nh, nw))
    return sizes


def _downscale(x: torch.Tensor, size: tuple[int, int], scale_step: float) -> torch.Tensor:
    """One pyramid step: cv::resize(src, dst, Size(), scale_step, scale_step, INTER_LINEAR)."""
    return resize_bilinear(x, size, (1.0 / scale_step, 1.0 / scale_step))


def _upscale_flow(u: torch.Tensor, size: tuple[int, int], scale_step: float) -> torch.Tensor:
    """Flow to the next finer level: resize to its size, x and y times 1 / scale_step (not u3)."""
    h, w = u.shape[-2:]
    up = resize_bilinear(u, size, (h / size[0], w / size[1]))
    factor = torch.ones(u.shape[1], 1, 1, dtype=u.dtype, device=u.device)
    factor[:2] = 1.0 / scale_step
    return up * factor


# ----------------------------------------------------------------------------- finite differences


def centered_gradient(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's centeredGradient: half the central difference, one-sided (still halved) at borders.

    Replicating the border and taking the central difference gives exactly those border values.
    """
    pad = F.pad(img[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    dx = 0.5 * (pad[:, 1:-1, 2:] - pad[:, 1:-1, :-2])
    dy = 0.5 * (pad[:, 2:, 1:-1] - pad[:, :-2, 1:-1])
    return dx, dy


def forward_gradient(u: torch.Tensor) -> torch.Tensor:
    """OpenCV's forwardGradient of (N, C, H, W): (N, C, 2, H, W), zero on the last column/row."""
    dx = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1))
    dy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return torch.stack((dx, dy), dim=2)


def divergence(p: torch.Tensor) -> torch.Tensor:
    """OpenCV's divergence of (N, C, 2, H, W): backward differences with p = 0 before row/col 0."""
    px, py = p[:, :, 0], p[:, :, 1]
    return px - F.pad(px[..., :, :-1], (1, 0)) + py - F.pad(py[..., :-1, :], (0, 0, 1, 0))


# ----------------------------------------------------------------------------- median filter


def _oddeven_merge_pairs(n: int) -> list[tuple[int, int]]:
    """Comparators of Batcher's odd-even merge sort for n a power of two."""
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                pairs.extend(
                    (i + j, i + j + k) for i in range(min(k, n - j - k)) if (i + j) // (2 * p) == (i + j + k) // (2 * p)
                )
            k //= 2
        p *= 2
    return pairs


@functools.lru_cache(maxsize=8)
def median_network(n: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """A selection network for the median of n values: (i, j, keep_min, keep_max) steps.

    Batcher's network for the next power of two, minus comparators that touch the padding
    (padding values would be +inf and never move), minus every comparator whose outputs
    cannot reach the median position; each kept step computes only the outputs used later.
    """
    size = 1 << max(0, (n - 1).bit_length())
    pairs = [(i, j) for i, j in _oddeven_merge_pairs(size) if j < n]
    needed, steps = {n // 2}, []
    for i, j in reversed(pairs):
        want_min, want_max = i in needed, j in needed
        if want_min or want_max:
            steps.append((i, j, want_min, want_max))
            needed |= {i, j}
    return tuple(reversed(steps))


def median_filter(u: torch.Tensor, ksize: int, network: tuple | None = None) -> torch.Tensor:
    """cv::medianBlur of each (H, W) plane of (N, C, H, W) with an odd ksize x ksize window.

    Borders replicate, as OpenCV's float median does. Elementwise min/max network over the
    ksize^2 shifted views: no unfolded copy, and torch.compile fuses it into one kernel.
    `network` is median_network(ksize * ksize), passed in by compiled callers.
    """
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f"median window must be odd and >= 1, got {ksize}")
    network = median_network(ksize * ksize) if network is None else network
    r = ksize // 2
    pad = F.pad(u, (r, r, r, r), mode="replicate")
    h, w = u.shape[-2:]
    vals = [pad[..., dy : dy + h, dx : dx + w] for dy in range(ksize) for dx in range(ksize)]
    for i, j, keep_min, keep_max in network:
        a, b = vals[i], vals[j]
        if keep_min:
            vals[i] = torch.minimum(a, b)
        if keep_max:
            vals[j] = torch.maximum(a, b)
    return vals[(ksize * ksize) // 2]


# ----------------------------------------------------------------------------- one level


def warp_bicubic(stack: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample (N, K, H, W) at p + flow(p), bicubic (a = -0.75 as OpenCV), zero outside.

    Mirrors buildFlowMap + remap(..., INTER_CUBIC) with remap's default constant-zero border.
    """
    h, w = stack.shape[-2:]
    xs = torch.arange(w, device=flow.device, dtype=torch.float32)
    ys = torch.arange(h, device=flow.device, dtype=torch.float32)
    gx = (xs + flow[:, 0].float()) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys[:, None] + flow[:, 1].float()) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(stack, grid, mode="bicubic", padding_mode="zeros", align_corners=True)


def tvl1_step(
    u: torch.Tensor,
    p: torch.Tensor,
    g: torch.Tensor,
    grad: torch.Tensor,
    rho_c: torch.Tensor,
    active: torch.Tensor,
    l_t: float,
    theta: float,
    taut: float,
):
    """One inner iteration (estimateV, divergence, estimateU, forwardGradient, estimateDualVariables).

    u: (N, C, H, W) flow (C = 3 when gamma adds the illumination term u3); p: (N, C, 2, H, W)
    dual variables; g: (N, C, H, W) warped gradient (and gamma); grad = |grad I1w|^2; active:
    (N,) bool, pairs still iterating. Returns the new u, p and each pair's squared change.
    """
    # estimateV: thresholding step. Clamping -rho/|grad|^2 to +-lambda*theta reproduces
    # OpenCV's three cases; where |grad|^2 <= FLT_EPSILON the step is below 1e-4 px either way.
    rho = rho_c + (g * u).sum(dim=1, keepdim=True)
    step = (-rho / grad.clamp_min(_FLT_EPSILON)).clamp(-l_t, l_t)
    v = u + step * g
    # estimateU: primal update and OpenCV's error, the summed squared change of u.
    u_new = v + theta * divergence(p)
    err = (u_new - u).float().square().sum(dim=(1, 2, 3))
    # estimateDualVariables: projected dual step on the forward gradient of the new u.
    du = forward_gradient(u_new)
    norm = torch.sqrt(du[:, :, 0].square() + du[:, :, 1].square())
    p_new = (p + taut * du) / (1.0 + taut * norm)[:, :, None]
    u = torch.where(active[:, None, None, None], u_new, u)
    p = torch.where(active[:, None, None, None, None], p_new, p)
    return u, p, err


def tvl1_median(u: torch.Tensor, active: torch.Tensor, ksize: int, network: tuple) -> torch.Tensor:
    """Median-filter the x and y planes (not u3) of pairs still iterating, as OpenCV does."""
    flow = torch.where(active[:, None, None, None], median_filter(u[:, :2], ksize, network), u[:, :2])
    return torch.cat((flow, u[:, 2:]), dim=1) if u.shape[1] > 2 else flow


@functools.lru_cache(maxsize=4)
def _kernels(compiled: bool):
    """The per-iteration functions, optionally through torch.compile (fuses each into few kernels)."""
    if not compiled:
        return tvl1_step, tvl1_median
    return (torch.compile(tvl1_step, dynamic=True), torch.compile(tvl1_median, dynamic=True))


@dataclass
class _Work:
    """The pairs still iterating in one warp, and their per-warp tensors.

    rows indexes the full batch; the other tensors hold only those rows. Dropping pairs
    that have stopped keeps a batch from paying for its slowest pair on every pair.
    """

    rows: torch.Tensor
    u: torch.Tensor
    p: torch.Tensor
    g: torch.Tensor
    grad: torch.Tensor
    rho_c: torch.Tensor
    active: torch.Tensor

    def store(self, u: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this working set back into the full-batch u and p."""
        if self.rows.numel() == u.shape[0]:
            return self.u, self.p
        u[self.rows], p[self.rows] = self.u, self.p
        return u, p

    def select(self, keep: torch.Tensor) -> _Work:
        """The working set restricted to positions `keep` (all of them still active)."""
        return _Work(
            rows=self.rows[keep],
            u=self.u[keep],
            p=self.p[keep],
            g=self.g[keep],
            grad=self.grad[keep],
            rho_c=self.rho_c[keep],
            active=self.active[keep],
        )


class _Solver:
    """The per-level TV-L1 solve for a batch (OpenCV's procOneScale)."""

    def __init__(self, params: TVL1Params, dtype: torch.dtype, compiled: bool, sync_every: int):
        self.params, self.dtype, self.sync_every = params, dtype, sync_every
        self.step, self.median = _kernels(compiled)
        ksize = params.median_filtering
        self.network = median_network(ksize * ksize) if ksize > 1 else ()
        self.pair_steps = 0  # inner iterations summed over the pairs run, for diagnostics

    def solve(self, i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Refine u (N, C, H, W) on one level; i0, i1 are (N, H, W) float32 on the same device."""
        i1x, i1y = centered_gradient(i1)
        source = torch.stack((i1, i1x, i1y), dim=1)
        # The dual variables start at zero once per level, not per warp (as OpenCV).
        p = torch.zeros((*u.shape[:2], 2, *u.shape[2:]), dtype=self.dtype, device=u.device)
        for _ in range(self.params.warps):
            u, p = self._iterate(self._linearise(i0, source, u, p))
        return u

    def _linearise(self, i0: torch.Tensor, source: torch.Tensor, u: torch.Tensor, p: torch.Tensor) -> _Work:
        """Warp I1 and its gradient by u and linearise the data term (buildFlowMap, remap, calcGradRho)."""
        warped = warp_bicubic(source, u)
        i1w, gx, gy = warped[:, 0:1], warped[:, 1:2], warped[:, 2:3]
        grad = gx.square() + gy.square()
        rho_c = i1w - gx * u[:, 0:1].float() - gy * u[:, 1:2].float() - i0[:, None]
        extra = (torch.full_like(gx, self.params.gamma),) if u.shape[1] > 2 else ()
        g = torch.cat((gx, gy, *extra), dim=1)  # with gamma, u3's coefficient in rho
        n = u.shape[0]
        return _Work(
            rows=torch.arange(n, device=u.device),
            u=u,
            p=p,
            g=g.to(self.dtype),
            grad=grad.to(self.dtype),
            rho_c=rho_c.to(self.dtype),
            active=torch.ones(n, dtype=torch.bool, device=u.device),
        )

    def _iterate(self, work: _Work) -> tuple[torch.Tensor, torch.Tensor]:
        """Outer and inner iterations of one warp, each pair stopping as OpenCV's loop does."""
        prm = self.params
        u, p = work.u, work.p
        scaled_eps = prm.epsilon * prm.epsilon * u.shape[-1] * u.shape[-2]
        l_t, taut = prm.lambda_ * prm.theta, prm.tau / prm.theta
        count = 0
        for _ in range(prm.outer_iterations):
            if prm.median_filtering > 1:
                work.u = self.median(work.u, work.active, prm.median_filtering, self.network)
            for _ in range(prm.inner_iterations):
                work.u, work.p, err = self.step(
                    work.u, work.p, work.g, work.grad, work.rho_c, work.active, l_t, prm.theta, taut
                )
                work.active = work.active & (err > scaled_eps)
                self.pair_steps += work.rows.numel()
                count += 1
                if self.sync_every and count % self.sync_every == 0:
                    left = int(work.active.sum())  # the one host sync
                    if left < work.rows.numel():
                        u, p = work.store(u, p)
                        if left == 0:
                            return u, p
                        work = work.select(work.active.nonzero()[:, 0])
        return work.store(u, p)


# ----------------------------------------------------------------------------- public API


def check_tensor_pair(i0: torch.Tensor, i1: torch.Tensor) -> None:
    """Raise ValueError unless i0, i1 are equal-shape (N, H, W) floating tensors on one device."""
    if not (isinstance(i0, torch.Tensor) and isinstance(i1, torch.Tensor)):
        raise ValueError(f"I0 and I1 must be torch tensors, got {type(i0).__name__}, {type(i1).__name__}")
    if i0.ndim != 3 or i0.shape != i1.shape:
        raise ValueError(f"I0 and I1 must both be (N, H, W) of one shape, got {tuple(i0.shape)}, {tuple(i1.shape)}")
    if i0.shape[-1] < 3 or i0.shape[-2] < 3:
        raise ValueError(f"frames must be at least 3x3 pixels, got {tuple(i0.shape[-2:])}")
    if not (i0.is_floating_point() and i1.is_floating_point()):
        raise ValueError(f"I0 and I1 must be floating point (0..255 scale), got {i0.dtype}, {i1.dtype}")
    if i0.device != i1.device:
        raise ValueError(f"I0 and I1 must be on one device, got {i0.device}, {i1.device}")


def check_params(params: TVL1Params | None) -> TVL1Params:
    """Default to TVL1Params(); raise ValueError for another record or an even median window."""
    params = TVL1Params() if params is None else params
    if not isinstance(params, TVL1Params):
        raise ValueError(f"torch TV-L1 needs TVL1Params, got {type(params).__name__}")
    if params.median_filtering > 1 and params.median_filtering % 2 == 0:
        raise ValueError(f"median_filtering must be odd (or <= 1 for none), got {params.median_filtering}")
    return params


def _initial_flows(
    init_flow: torch.Tensor | None, n: int, sizes, params: TVL1Params, device: torch.device
) -> torch.Tensor:
    """The flow (N, C, h, w) at the coarsest level: zeros, or the initial flow scaled down level by level."""
    channels = 3 if params.gamma != 0 else 2
    h, w = sizes[-1]
    u = torch.zeros(n, channels, h, w, dtype=torch.float32, device=device)
    if init_flow is None or not params.use_initial_flow:
        return u
    if tuple(init_flow.shape) != (n, 2, *sizes[0]):
        raise ValueError(f"init_flow must be (N, 2, H, W) = {(n, 2, *sizes[0])}, got {tuple(init_flow.shape)}")
    flow = init_flow.to(device=device, dtype=torch.float32)
    for size in sizes[1:]:
        # calc with useInitialFlow: resize by scale_step and scale the vectors by it.
        flow = _downscale(flow, size, params.scale_step) * params.scale_step
    u[:, :2] = flow
    return u


def default_sync_every(device: torch.device) -> int:
    """Steps between stop checks when none is given: every step on CPU (no sync cost there),
    every 10 on CUDA (each check waits for the queue to drain)."""
    return 10 if device.type == "cuda" else 1


def tvl1_flow(
    i0: torch.Tensor,
    i1: torch.Tensor,
    params: TVL1Params | None = None,
    *,
    init_flow: torch.Tensor | None = None,
    compile: bool = False,
    dtype: torch.dtype = torch.float32,
    sync_every: int | None = None,
) -> torch.Tensor:
    """Dual TV-L1 flow from i0 to i1 for a batch, as OpenCV's DualTVL1OpticalFlow::calc.

    i0, i1: (N, H, W) float tensors, intensities 0..255, on any device (the work runs there).
    Returns (N, 2, H, W) float32 flow (x, y in pixels): i0(p) ~ i1(p + flow(p)).
    init_flow: (N, 2, H, W), used when params.use_initial_flow (zeros otherwise).
    compile: run the per-iteration steps through torch.compile (worth it on CUDA).
    dtype: float32, or float16/bfloat16 for the iterated state (warps and pyramids stay float32).
    sync_every: steps between checks that every pair has stopped (default 1 on CPU, 10 on CUDA;
    0: never, every pair runs all iterations with no host sync; the flow is the same).
    """
    params = check_params(params)
    check_tensor_pair(i0, i1)
    dtype = torch_dtype(dtype)
    if sync_every is not None and (isinstance(sync_every, bool) or sync_every < 0):
        raise ValueError(f"sync_every must be >= 0, got {sync_every}")
    n, h, w = i0.shape
    if n == 0:
        return torch.zeros(0, 2, h, w, dtype=torch.float32, device=i0.device)
    if sync_every is None:
        sync_every = default_sync_every(i0.device)
    sizes = pyramid_sizes(h, w, params)
    i0s, i1s = [i0.float()], [i1.float()]
    for size in sizes[1:]:
        i0s.append(_downscale(i0s[-1], size, params.scale_step))
        i1s.append(_downscale(i1s[-1], size, params.scale_step))
    solver = _Solver(params, dtype, compile, sync_every)
    u = _initial_flows(init_flow, n, sizes, params, i0.device).to(dtype)
    for level in range(len(sizes) - 1, -1, -1):
        u = solver.solve(i0s[level], i1s[level], u)
        if level:
            u = _upscale_flow(u.float(), sizes[level - 1], params.scale_step).to(dtype)
    log.debug("tvl1: %d pairs %dx%d, %d levels, %d pair-iterations", n, w, h, len(sizes), solver.pair_steps)
    return u[:, :2].float()


class TorchTVL1(DeviceEstimator):
    """Batched TV-L1 estimator (CPU or CUDA) with the numpy contract of `FlowEstimator`.

    est(prev, nxt) with (N, H, W) uint8 grayscale -> (N, H, W, 2) float32 flow prev -> nxt;
    stage / launch / result (pipeline.flow.device) give uint8 fields with overlapped copies.
    """

    input = "gray"
    name = "torch-tvl1"

    def __init__(
        self,
        params: TVL1Params | None = None,
        device: str = "cpu",
        *,
        compile: bool = False,
        dtype: str | torch.dtype = "fp32",
        sync_every: int | None = None,
    ):
        self.params = check_params(params)
        super().__init__(device, dtype)
        if sync_every is not None and (isinstance(sync_every, bool) or sync_every < 0):
            raise ValueError(f"sync_every must be >= 0, got {sync_every}")
        self.compile, self.sync_every = bool(compile), sync_every

    def _flow(self, prev: torch.Tensor, nxt: torch.Tensor, init: torch.Tensor | None = None) -> torch.Tensor:
        return tvl1_flow(
            prev.float(),
            nxt.float(),
            self.params,
            init_flow=init,
            compile=self.compile,
            dtype=self.dtype,
            sync_every=self.sync_every,
        )

    def __call__(self, prev: np.ndarray, nxt: np.ndarray, init_flow: np.ndarray | None = None) -> np.ndarray:
        """Flow for each pair; init_flow (N, H, W, 2) is used only when params.use_initial_flow."""
        if init_flow is None:
            return super().__call__(prev, nxt)
        staged = self.stage(prev, nxt)
        init = torch.from_numpy(np.asarray(init_flow, np.float32)).permute(0, 3, 1, 2)
        with torch.inference_mode():
            flow = self._on_compute(staged, lambda a, b: self._flow(a, b, init).permute(0, 2, 3, 1).cpu())
        return np.ascontiguousarray(flow.numpy(), dtype=np.float32)

    def __repr__(self) -> str:
        return (
            f"TorchTVL1(device={str(self.device)!r}, compile={self.compile}, dtype={self.dtype}, "
            f"sync_every={self.sync_every}, params={self.params})"
        )
