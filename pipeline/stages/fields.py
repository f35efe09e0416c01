"""Stage 2, flow + encode: compute a chunk's flow fields and encode them with its frames.

On CPU builds `process_chunks` does both in one task; on GPU builds `compute_fields` (or a
flow actor's batcher) runs on the GPU and `encode_chunk` after it, on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pipeline import encode
from pipeline.flow.config import FlowConfig
from pipeline.flow.estimators import FlowEstimator
from pipeline.records import EncodedChunk
from pipeline.stages.chunks import ChunkJob, flow_inputs
from pipeline.stages.config import WorkerConfig
from pipeline.stages.warped import WarpedFields, compute_warped


def compute_fields(jobs: list[ChunkJob], estimator: FlowEstimator, cfg: FlowConfig) -> list[np.ndarray]:
    """Float flow (F, H, W, 2) of every pair of several chunks, in batches of cfg.batch_for(h, w) pairs.

    Pairs from different chunks (and videos) share a batch when their sizes match, which
    is what keeps a GPU estimator busy; the result lists one array per job.
    """
    inputs = [flow_inputs(job, cfg.step) for job in jobs]
    out: list[list[np.ndarray]] = [[] for _ in jobs]
    by_size: dict[tuple, list[int]] = {}
    for j, (prev, _) in enumerate(inputs):
        by_size.setdefault(prev.shape[1:], []).append(j)
    for group in by_size.values():
        prev = _concat([inputs[j][0] for j in group])
        nxt = _concat([inputs[j][1] for j in group])
        owner = [j for j in group for _ in range(len(inputs[j][0]))]
        size = cfg.batch_for(*prev.shape[1:3])
        for b in range(0, len(prev), size):
            for j, fl in zip(owner[b : b + size], estimator(prev[b : b + size], nxt[b : b + size]), strict=True):
                out[j].append(fl)
    return [
        np.stack(o) if o else np.zeros((0, job.size[1], job.size[0], 2), np.float32)
        for o, job in zip(out, jobs, strict=True)
    ]


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def flow_bytes(job: ChunkJob, estimator: FlowEstimator, cfg: WorkerConfig) -> tuple[bytes, ...]:
    """Compute and encode the job's fields a batch at a time: float flow is never held for the
    whole chunk (64 float fields at 1280x720 would be 470 MB)."""
    prev, nxt = flow_inputs(job, cfg.flow.step)
    size = cfg.flow.batch_for(prev.shape[1], prev.shape[2]) if getattr(estimator, "batched", True) else 1
    return tuple(
        _encode_field(fl, cfg)
        for b in range(0, len(prev), size)
        for fl in estimator(prev[b : b + size], nxt[b : b + size])
    )


def encode_chunk(
    job: ChunkJob,
    fields: Iterable[np.ndarray] | tuple[bytes, ...],
    cfg: WorkerConfig,
    warped: WarpedFields | None = None,
) -> EncodedChunk:
    """The chunk's encoded output: its frames (encoded at decode), its fields and (--flow-warp)
    its warped fields, given as arrays (float or quantized) to encode here, or as encoded bytes."""
    encoded = tuple(f if isinstance(f, bytes) else _encode_field(f, cfg) for f in fields)
    if len(encoded) != len(job.fields):
        raise RuntimeError(f"{job.video_key}: {len(encoded)} flow fields for {len(job.fields)} pairs")
    if (warped is not None) != (cfg.warp is not None) or (warped is not None and len(warped.fields) != len(encoded)):
        raise RuntimeError(f"{job.video_key}: warped fields do not match the flow fields or --flow-warp")
    step = cfg.flow.step
    return EncodedChunk(
        video_key=job.video_key,
        index=job.index,
        start=job.start,
        frame_bytes=job.frame_bytes,
        frame_index=job.frame_index,
        frame_pts=job.frame_pts,
        flow_bytes=encoded,
        flow_pairs=tuple((t, t + step) for t in job.fields),
        size=job.size,
        last=job.last,
        owned=job.owned,
        warped_bytes=tuple(f if isinstance(f, bytes) else _encode_field(f, cfg) for f in warped.fields)
        if warped
        else (),
        cameras=warped.cameras if warped else (),
    )


def _encode_field(field: np.ndarray, cfg: WorkerConfig) -> bytes:
    # A GPU actor may hand over fields already quantized (uint8), a quarter of the bytes.
    if field.dtype == np.uint8:
        return encode.encode_flow_q(field, cfg.encode.flow_quality)
    return encode.encode_flow(field, cfg.flow.bound, cfg.encode.flow_quality)


def process_chunk(job: ChunkJob, estimator: FlowEstimator, cfg: WorkerConfig) -> EncodedChunk:
    """Stage 2 for one chunk."""
    return process_chunks([job], estimator, cfg)[0]


def process_chunks(jobs: list[ChunkJob], estimator: FlowEstimator, cfg: WorkerConfig) -> list[EncodedChunk]:
    """Stage 2 for a batch of chunks (possibly of several videos)."""
    warped = compute_warped(jobs, estimator, cfg)
    return [encode_chunk(job, flow_bytes(job, estimator, cfg), cfg, wf) for job, wf in zip(jobs, warped, strict=True)]
