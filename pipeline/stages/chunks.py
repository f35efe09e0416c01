"""Stage 1, decode: stream a video's frames as `ChunkJob`s, the unit of flow compute.

The decoder JPEG-encodes each kept frame from its YUV planes where it was decoded and hands
flow only the luma planes (or RGB, for an estimator whose `input` is "rgb"). Also here: which
rows of a job the flow stage pairs (`pair_rows`, `flow_inputs`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline import boxes, decode, encode, failures
from pipeline.decode import DecodeError
from pipeline.records import VideoRef
from pipeline.stages.config import WorkerConfig
from pipeline.stages.plan import (
    VideoFailure,
    VideoPlan,
    clip_layout,
    expected_frames,
    failure_reason,
    safe_plan,
    settle_plan,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkJob:
    """A chunk as the flow stage takes it: the input of `process_chunks` / `compute_fields`.

    Frames are JPEG-encoded where they were decoded, so only what flow needs crosses to it:
    `frames` holds luma (n, H, W) uint8, or RGB (n, H, W, 3) for an estimator whose input is
    "rgb", one row per entry of `frame_ids` (consecutive frames in dense mode; in clips mode
    only the frames the clips use). `flow_inputs` gives the pairs.
    """

    video_key: str
    index: int  # chunk number within the video, 0-based
    start: int  # first frame this chunk owns
    owned: int  # frames start .. start + owned - 1 are this chunk's (kept or not)
    last: bool
    frame_ids: tuple[int, ...]  # global index of each row of `frames`
    frames: np.ndarray
    fields: tuple[int, ...]  # t of each field (t, t + step) computed from this chunk
    frame_index: tuple[int, ...]  # kept frames owned here, with their pts and JPEG bytes
    frame_pts: tuple[float, ...]
    frame_bytes: tuple[bytes, ...]
    size: tuple[int, int]  # (width, height) of the stored frames
    # --flow-warp with --boxes: global frame index -> person boxes in stored pixels, left out
    # of the camera-motion estimate (the actor's own motion is not the camera's)
    people: Mapping[int, list] | None = None


def chunk_jobs(
    ref: VideoRef, plan: VideoPlan, cfg: WorkerConfig, wanted: Callable[[int], bool] | None = None
) -> Iterator[ChunkJob]:
    """Stream the video's frames as ChunkJobs; a decode failure raises DecodeError.

    Dense: one job per `chunk_frames` frames, sent while the rest decodes. Clips mode: the
    frames the clips use are held while the video decodes once, then sent as one job.
    wanted(chunk index): False for a dense chunk another task computes: its frames are decoded
    (the video's checks, e.g. its frame count, still run here) but neither JPEG-encoded nor
    sent as a job.
    """
    if plan.keep_frames is not None:
        yield _clips_job(ref, plan, cfg)
        return
    step, kind, quality, cf = cfg.flow.step, cfg.flow.input, cfg.encode.rgb_quality, cfg.sample.chunk_frames
    rows = (
        (
            _flow_frame(f, kind),
            pts,
            encode.encode_planes(*decode.split_planes(f), quality) if wanted is None or wanted(i // cf) else b"",
        )
        for i, (f, pts) in enumerate(decode.iter_planes(ref.uri, cfg.decode, plan.info))
    )
    groups = decode.group_chunks(rows, chunk_frames=cf, overlap=step)
    first_pts = 0.0
    for index, start, owned, group, last in groups:
        first_pts = float(group[0][1]) if index == 0 else first_pts
        if last:  # the count is known: a video cut short fails before its last chunk is sent
            check_declared(ref, plan, start + owned, float(group[owned - 1][1]) - first_pts, cfg)
        if wanted is not None and not wanted(index):
            continue
        n = len(group)
        yield ChunkJob(
            video_key=ref.key,
            index=index,
            start=start,
            owned=owned,
            last=last,
            frame_ids=tuple(range(start, start + n)),
            frames=np.stack([g[0] for g in group]),
            fields=tuple(start + r for r in range(owned) if r + step < n),
            frame_index=tuple(range(start, start + owned)),
            frame_pts=tuple(float(g[1]) for g in group[:owned]),
            frame_bytes=tuple(g[2] for g in group[:owned]),
            size=_size(group[0][0]),
            people=chunk_people(ref, plan, range(start, start + n), _size(group[0][0]), cfg),
        )


def check_declared(ref: VideoRef, plan: VideoPlan, decoded: int, span: float, cfg: WorkerConfig) -> None:
    """DecodeError (permanent: the file is short) when fewer than `cfg.min_coverage` of the
    frames the container declares (duration x rate) were decoded, and the decoded frames also
    span less than that share of its duration; nothing when it declares no duration or rate.

    span: seconds from the first decoded frame's time to the last one's. A variable-rate video
    has fewer frames than duration x its nominal rate, but they span its whole duration.
    """
    declared = expected_frames(plan.info, cfg.decode)
    rate = cfg.decode.fps or plan.info.fps
    if not declared or decoded >= cfg.min_coverage * declared:
        return
    if span + 1.0 / rate < cfg.min_coverage * plan.info.duration:
        raise DecodeError(
            ref.uri,
            f"decoded {decoded} of {declared} declared frames, below --min-coverage "
            f"{cfg.min_coverage:g}: the file is cut short or damaged",
        )


def _flow_frame(frame: np.ndarray, kind: str) -> np.ndarray:
    """What flow takes of an I420 frame: its luma plane (a view), or RGB."""
    return decode.split_planes(frame)[0] if kind == "gray" else decode.planes_to_rgb(frame)


def _size(flow_frame: np.ndarray) -> tuple[int, int]:
    return flow_frame.shape[1], flow_frame.shape[0]


def needed_frames(plan: VideoPlan, step: int) -> frozenset[int]:
    """The frames a clips-mode plan uses: kept frames and both ends of every kept field."""
    frames, fields = clip_layout(plan)
    return frames | {f + d for f in fields for d in (0, step)}


def _clips_job(ref: VideoRef, plan: VideoPlan, cfg: WorkerConfig) -> ChunkJob:
    """Decode once, holding the frames the clips use; settle the plan on the decoded count.

    The clip layout depends on the frame count, taken from the header before decoding. When
    the decode gives another count (a header that lies, a file cut short) the layout moves,
    and the video is decoded a second time only if the new layout needs frames not held.
    """
    step = cfg.flow.step
    held, total, span = _hold(ref, plan, needed_frames(plan, step), cfg)
    check_declared(ref, plan, total, span, cfg)
    settled = settle_plan(plan, total, cfg)
    need = needed_frames(settled, step)
    if not need <= held.keys():
        log.info(
            "%s: decoded %d frames, the header said %d: decoding again for the clips",
            ref.source,
            total,
            plan.total_frames,
        )
        held, again, _ = _hold(ref, plan, need, cfg)
        if again != total:
            raise DecodeError(ref.uri, f"decoded {total} frames, then {again}: the decode is not repeatable")
    kind, quality = cfg.flow.input, cfg.encode.rgb_quality
    ids = sorted(need)
    keep_frames, keep_fields = clip_layout(settled)
    keep = sorted(keep_frames)
    size = _size(decode.split_planes(held[ids[0]][0])[0])
    return ChunkJob(
        video_key=ref.key,
        index=0,
        start=0,
        owned=total,
        last=True,
        frame_ids=tuple(ids),
        frames=np.stack([_flow_frame(held[i][0], kind) for i in ids]),
        fields=tuple(sorted(keep_fields)),
        frame_index=tuple(keep),
        frame_pts=tuple(held[i][1] for i in keep),
        frame_bytes=tuple(encode.encode_planes(*decode.split_planes(held[i][0]), quality) for i in keep),
        size=size,
        people=chunk_people(ref, settled, ids, size, cfg),
    )


def _hold(ref: VideoRef, plan: VideoPlan, need: frozenset[int], cfg: WorkerConfig) -> tuple[dict, int, float]:
    """One decode pass: {frame index: (I420 frame, pts)} for the frames in `need`, the count and
    the seconds from the first frame's time to the last one's."""
    held, total, first, pts = {}, 0, 0.0, 0.0
    for total, (frame, pts) in enumerate(decode.iter_planes(ref.uri, cfg.decode, plan.info), start=1):
        first = float(pts) if total == 1 else first
        if total - 1 in need:
            held[total - 1] = (frame, float(pts))
    return held, total, float(pts) - first


def chunk_people(
    ref: VideoRef, plan: VideoPlan, frame_ids, size: tuple[int, int], cfg: WorkerConfig
) -> dict[int, list] | None:
    """The annotated boxes of a chunk's frames in stored pixels, when warped flow needs them."""
    if cfg.warp is None or ref.boxes is None or not len(frame_ids):
        return None
    rate = boxes.source_rate(cfg.decode.fps, plan.info.fps)
    source = (plan.info.width, plan.info.height)
    found = {i: [b[:4] for b in boxes.frame_boxes(ref.boxes, i, rate, source, size)] for i in frame_ids}
    return {i: b for i, b in found.items() if b}


def video_jobs(ref: VideoRef, cfg: WorkerConfig) -> Iterator[VideoPlan | ChunkJob | VideoFailure]:
    """Yield the plan, then one ChunkJob per chunk; a decode failure is yielded, not raised."""
    plan = safe_plan(ref, cfg)
    yield plan
    if isinstance(plan, VideoFailure):
        return
    try:
        yield from chunk_jobs(ref, plan, cfg)
    except (DecodeError, ValueError, OSError) as exc:
        yield VideoFailure(reason=failure_reason(ref, exc), kind=failures.kind_of(exc))


# --- what flow takes of a chunk ---------------------------------------------------------------


def pair_rows(job: ChunkJob, step: int) -> list[tuple[int, int]]:
    """(row of t, row of t + step) in `job.frames` for every field t the job computes."""
    row = {f: r for r, f in enumerate(job.frame_ids)}
    return [(row[t], row[t + step]) for t in job.fields]


def flow_inputs(job: ChunkJob, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The first and second frames of every pair the job computes, in `job.fields` order:
    (F, H, W) uint8 luma, or (F, H, W, 3) RGB for estimators that take RGB. Views into the
    job's frames where the rows are consecutive (dense chunks), so nothing is copied."""
    rows = pair_rows(job, step)
    return _rows(job.frames, [a for a, _ in rows]), _rows(job.frames, [b for _, b in rows])


def gray(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) RGB uint8 -> (N, H, W) luma uint8 (for frames that come as RGB)."""
    return (
        np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
        if len(frames)
        else np.zeros(frames.shape[:3], np.uint8)
    )


def frames_job(
    frames: np.ndarray,
    key: str,
    index: int,
    start: int,
    owned: int,
    last: bool,
    *,
    kind: str = "gray",
    step: int = 1,
    rgb_quality: int = 90,
) -> ChunkJob:
    """A dense ChunkJob of RGB frames (N, H, W, 3) already in memory, as a decoder would send
    it: flow frames in the estimator's form `kind`, owned frames JPEG-encoded (tests, benchmarks)."""
    n = len(frames)
    return ChunkJob(
        video_key=key,
        index=index,
        start=start,
        owned=owned,
        last=last,
        frame_ids=tuple(range(start, start + n)),
        frames=gray(frames) if kind == "gray" else frames,
        fields=tuple(start + r for r in range(owned) if r + step < n),
        frame_index=tuple(range(start, start + owned)),
        frame_pts=tuple(float(start + r) for r in range(owned)),
        frame_bytes=tuple(encode.encode_rgb(f, rgb_quality) for f in frames[:owned]),
        size=(frames.shape[2], frames.shape[1]),
    )


def _rows(frames: np.ndarray, rows: list[int]) -> np.ndarray:
    if rows and rows == list(range(rows[0], rows[0] + len(rows))):
        return frames[rows[0] : rows[0] + len(rows)]
    return frames[rows]
