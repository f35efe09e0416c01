"""One video's whole path in one place: the stages chained in-process, and the video's result.

`process_video` runs decode -> flow -> encode -> samples here, without Ray (the local
executor, tests); `finish_video` and `stream_video` turn a video's encoded chunks, computed
wherever, into its `VideoResult`, a failure included as an error row.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from pipeline import encode
from pipeline.flow.estimators import FlowEstimator, make_estimator
from pipeline.records import EncodedChunk, VideoRef, VideoResult
from pipeline.stages.chunks import video_jobs
from pipeline.stages.config import WorkerConfig
from pipeline.stages.fields import process_chunks
from pipeline.stages.plan import VideoFailure, VideoPlan, failure_reason
from pipeline.stages.samples import (
    ChunkSummary,
    assemble_video,
    check_box_frames,
    check_coverage,
    stream_parts,
    video_meta,
)


def process_video(ref: VideoRef, cfg: WorkerConfig, estimator: FlowEstimator | None = None) -> VideoResult:
    """Decode, compute flow, encode and assemble one video in this process (no Ray)."""
    estimator = estimator or make_estimator(cfg.flow)
    t0 = time.perf_counter()
    plan, encoded = None, []
    for item in video_jobs(ref, cfg):
        if isinstance(item, VideoFailure):
            return VideoResult(ref=ref, status="error", error=item.reason, error_kind=item.kind)
        if isinstance(item, VideoPlan):
            plan = item
        else:
            encoded.extend(process_chunks([item], estimator, cfg))
    if plan is None:  # video_jobs yields the plan (or a failure) before any chunk
        raise RuntimeError(f"{ref.source}: no plan was made for this video")
    return finish_video(ref, plan, encoded, cfg, seconds=time.perf_counter() - t0)


def finish_video(
    ref: VideoRef, plan: VideoPlan, encoded: list[EncodedChunk], cfg: WorkerConfig, seconds: float = 0.0
) -> VideoResult:
    """Assemble samples, turning an assembly failure into an error result for this video."""
    try:
        samples = assemble_video(ref, plan, encoded, cfg)
    except (ValueError, RuntimeError) as exc:
        return VideoResult(ref=ref, status="error", error=failure_reason(ref, exc), info=plan.info)
    frames = sum(len(encode.load_meta(s[encode.META])["frames"]) for s in samples)
    fields = sum(len(encode.load_meta(s[encode.META])["flow_fields"]) for s in samples)
    decoded = max(c.start + c.owned for c in encoded)  # clips mode stores fewer frames than it decodes
    return VideoResult(
        ref=ref,
        status="ok",
        samples=tuple(samples),
        frames=frames,
        flow_fields=fields,
        info=plan.info,
        stats={"seconds": seconds, "decoded_frames": decoded},
    )


def stream_video(
    ref: VideoRef, plan: VideoPlan, summaries: list[ChunkSummary], chunks: Iterable[EncodedChunk], cfg: WorkerConfig
) -> VideoResult:
    """Like `finish_video`, but the samples are produced while `chunks` (in index order) are
    read, so a writer holds one part of a video at a time, however long the video is.

    Coverage is checked on the summaries first: a video with a gap is an error result
    before any of its samples reaches a shard.
    """
    if plan.keep_frames is not None:  # clips mode: a few frames, one small sample
        return finish_video(ref, plan, list(chunks), cfg)
    try:
        frames, fields = check_coverage(ref, plan, summaries, cfg.flow.step)
        check_box_frames(ref, plan, cfg, frames)
    except (ValueError, RuntimeError) as exc:
        return VideoResult(ref=ref, status="error", error=failure_reason(ref, exc), info=plan.info)
    meta = video_meta(ref, plan, cfg, summaries[0].size)
    samples = stream_parts(ref, meta, chunks, frames, cfg.sample.max_frames)
    return VideoResult(
        ref=ref,
        status="ok",
        samples=samples,
        frames=frames,
        flow_fields=fields,
        info=plan.info,
        stats={"decoded_frames": frames},
    )
