"""Stage 2b, warped flow (--flow-warp): the flow of camera-compensated frame pairs.

Each pair's camera motion is estimated on a CPU (feature matching, RANSAC) and its second
frame warped back; the warped pairs then go through whichever estimator computes the plain flow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.flow import warp
from pipeline.flow.estimators import FlowEstimator
from pipeline.stages.chunks import ChunkJob, flow_inputs
from pipeline.stages.config import WorkerConfig


@dataclass(frozen=True)
class WarpInputs:
    """A chunk's warped pairs, ready for the estimator, in the form it takes (grey (n, H, W),
    or RGB (n, H, W, 3) for estimators that take RGB): first frames and camera-compensated
    second frames."""

    firsts: np.ndarray
    seconds: np.ndarray
    cameras: tuple[dict, ...]  # per pair: warp.CameraMotion.as_meta()


@dataclass(frozen=True)
class WarpedFields:
    """A chunk's warped flow fields (F, H, W, 2) (float px, or uint8 quantized) and camera motions."""

    fields: np.ndarray
    cameras: tuple[dict, ...]


def quantized(w: WarpedFields, bound: float) -> WarpedFields:
    """The same warped fields quantized to uint8 (a quarter of the bytes through the object store)."""
    from pipeline.flow.quantize import quantize

    return WarpedFields(fields=quantize(w.fields, bound), cameras=w.cameras)


def warp_inputs(job: ChunkJob, cfg: WorkerConfig, boxes: Mapping[int, list] | None = None) -> WarpInputs:
    """Estimate the camera motion of each pair the chunk computes and warp its second frame back.

    Runs on a CPU (feature matching, RANSAC, remap); the flow of the warped pairs is then
    computed like any other pairs, by whichever estimator computes the plain flow.
    boxes: global frame index -> person boxes (x0, y0, x1, y1) in stored pixels; a pair's
    camera motion is then estimated outside the boxes of both its frames.
    """
    if cfg.warp is None:
        raise ValueError("warp_inputs needs a warp config (--flow-warp); cfg.warp is None")
    warp_cfg, step = cfg.warp, cfg.flow.step
    firsts_in, seconds_in = flow_inputs(job, step)  # in the estimator's form: luma, or RGB
    grey = firsts_in.ndim == 3
    firsts, seconds, cams = [], [], []
    for i, t in enumerate(job.fields):
        a, b = firsts_in[i], seconds_in[i]
        ga, gb = (a, b) if grey else (cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY))
        people = [*boxes.get(t, []), *boxes.get(t + step, [])] if boxes else []
        mask = warp.exclusion_mask(ga.shape, people) if people else None
        cam = warp.estimate_camera(ga, gb, warp_cfg, mask)
        firsts.append(a)  # the job's frames are already in the estimator's form
        seconds.append(warp.compensate(a, b, cam.matrix, warp_cfg.border))
        cams.append(cam.as_meta())
    empty = np.zeros((0, *firsts_in.shape[1:]), np.uint8)
    return WarpInputs(
        firsts=np.stack(firsts) if cams else empty, seconds=np.stack(seconds) if cams else empty, cameras=tuple(cams)
    )


def compute_warped(jobs: list[ChunkJob], estimator: FlowEstimator, cfg: WorkerConfig) -> list[WarpedFields | None]:
    """Warped flow of every pair of several chunks (one entry per job; None each without --flow-warp)."""
    if cfg.warp is None:
        return [None] * len(jobs)
    out: list[WarpedFields | None] = []
    for job in jobs:
        wi = warp_inputs(job, cfg, job.people)
        w, h = job.size
        b = cfg.flow.batch_for(h, w)
        fields = [estimator(wi.firsts[i : i + b], wi.seconds[i : i + b]) for i in range(0, len(wi.cameras), b)]
        out.append(
            WarpedFields(
                fields=np.concatenate(fields) if fields else np.zeros((0, h, w, 2), np.float32), cameras=wi.cameras
            )
        )
    return out
