"""Stage 3, samples: turn a video's encoded chunks into its webdataset samples.

Coverage is checked first (every decoded frame and pair present exactly once, or the video
is an error row); a dense video becomes parts of `max_frames` frames, a clips-mode video one
sample. Stored members re-packed without recomputing go through the same functions
(`pipeline.build.reuse`), so both paths give equal bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pipeline import boxes, encode
from pipeline.flow.quantize import QUANTIZATION
from pipeline.records import EncodedChunk, VideoRef
from pipeline.stages.config import WorkerConfig
from pipeline.stages.plan import VideoPlan, clip_layout, settle_plan


@dataclass(frozen=True)
class ChunkSummary:
    """An EncodedChunk without its bytes: what coverage checks need, small enough for the driver."""

    index: int
    start: int
    owned: int
    frame_index: tuple[int, ...]
    flow_pairs: tuple[tuple[int, int], ...]
    size: tuple[int, int]
    last: bool


def summarize(chunk: EncodedChunk) -> ChunkSummary:
    """The summary of an encoded chunk."""
    return ChunkSummary(
        index=chunk.index,
        start=chunk.start,
        owned=chunk.owned,
        frame_index=chunk.frame_index,
        flow_pairs=chunk.flow_pairs,
        size=chunk.size,
        last=chunk.last,
    )


def check_coverage(
    ref: VideoRef, plan: VideoPlan, chunks: Sequence[EncodedChunk | ChunkSummary], step: int
) -> tuple[int, int]:
    """Check the chunks cover the video without gaps; return (decoded frames, flow fields).

    This is the count-what-you-write check: every decoded frame and every pair must be
    present exactly once, or the video is reported as an error instead of written short.
    """
    chunks = sorted(chunks, key=lambda c: c.index)
    if not chunks or not chunks[-1].last or [c.index for c in chunks] != list(range(len(chunks))):
        raise RuntimeError(f"{ref.source}: incomplete chunk sequence")
    total = _total_frames(chunks)
    if plan.keep_frames is None:
        got = [i for c in chunks for i in c.frame_index]
        pairs = [p[0] for c in chunks for p in c.flow_pairs]
        if got != list(range(total)) or pairs != list(range(max(0, total - step))):
            raise RuntimeError(
                f"{ref.source}: {len(got)} frames and {len(pairs)} fields encoded, {total} frames decoded"
            )
    else:
        got = sorted(i for c in chunks for i in c.frame_index)
        pairs = sorted(p[0] for c in chunks for p in c.flow_pairs)
        keep_frames, keep_fields = clip_layout(plan)
        if plan.total_frames != total or got != sorted(keep_frames) or pairs != sorted(keep_fields):
            raise RuntimeError(f"{ref.source}: the clips encoded do not match the plan for {total} decoded frames")
    if total <= step:
        raise ValueError(
            f"{ref.source}: too short: {total} frame(s) decoded, need at least {step + 1} "
            f"for one flow field at --step {step}"
        )
    return total, max(0, total - step)


def _total_frames(chunks: Sequence[EncodedChunk | ChunkSummary]) -> int:
    return chunks[-1].start + chunks[-1].owned


def video_meta(ref: VideoRef, plan: VideoPlan, cfg: WorkerConfig, size: tuple[int, int]) -> dict:
    """Metadata shared by every part of a video (per-part frame lists are added later)."""
    info, f = plan.info, cfg.flow
    fps = cfg.decode.fps or info.fps
    warped = {"warp": {**cfg.warp.output_dict(), "method": "homography"}} if cfg.warp is not None else {}
    return {
        **warped,
        "schema_version": encode.schema_version(cfg.warp is not None),
        "kind": "video",
        "video_id": ref.key,
        "source": ref.source,
        "label": ref.label,
        "label_id": ref.label_id,
        "split": ref.split,
        "fps": fps,
        "source_fps": info.fps,
        "source_size": [info.width, info.height],
        "size": list(size),
        "mode": cfg.sample.mode,
        "decode": cfg.decode.output_dict(),
        "flow": {
            **f.output_dict(),
            "quantization": QUANTIZATION,
            "codec": "jpg",
            "quality": cfg.encode.flow_quality,
            "layout": "x_over_y",
        },
        "rgb": {"codec": "jpg", "quality": cfg.encode.rgb_quality},
    }


def part_key(ref: VideoRef, part: int, parts: int) -> str:
    """Sample key of a part: the video id alone when the video is one sample."""
    return ref.key if parts == 1 else f"{ref.key}_part{part:03d}"


def check_box_frames(ref: VideoRef, plan: VideoPlan, cfg: WorkerConfig, total: int) -> None:
    """ValueError (an error row) when the video's boxes name a frame past its `total` decoded frames."""
    if ref.boxes is not None:
        boxes.check_frames(ref.boxes, total, boxes.source_rate(cfg.decode.fps, plan.info.fps))


class Field(NamedTuple):
    """A flow field on its way into a sample: its frame pair, its member bytes and, with
    --flow-warp, its warped member and camera motion."""

    start: int
    end: int
    data: bytes
    warped: bytes | None = None
    camera: dict | None = None


def chunk_fields(c: EncodedChunk) -> list[Field]:
    """The fields of an encoded chunk, in order."""
    n = len(c.flow_bytes)
    return [
        Field(a, b, data, w, cam)
        for (a, b), data, w, cam in zip(
            c.flow_pairs, c.flow_bytes, c.warped_bytes or (None,) * n, c.cameras or (None,) * n, strict=True
        )
    ]


def _field_meta(f: Field) -> dict:
    return {"from": f.start, "to": f.end} if f.camera is None else {"from": f.start, "to": f.end, "camera": f.camera}


def _warped_members(key: str, fields: list[Field]) -> list[bytes]:
    """Each field's warped member; ValueError naming the sample when a field has none."""
    out = [f.warped for f in fields if f.warped is not None]
    if len(out) != len(fields):
        raise ValueError(f"{key}: {len(fields) - len(out)} of {len(fields)} flow fields have no warped member")
    return out


def _sample(key: str, meta: dict, frames: list, fields: list[Field], annotations: boxes.VideoBoxes | None) -> dict:
    meta = {
        **meta,
        "key": key,
        "frames": [{"index": i, "pts": round(p, 6)} for i, p, _ in frames],
        "flow_fields": [_field_meta(f) for f in fields],
    }
    if annotations is not None:
        meta = boxes.annotate(meta, annotations)
    warped = _warped_members(key, fields) if encode.has_warped(meta) else None
    return encode.to_sample(key, meta, [b for *_, b in frames], [f.data for f in fields], warped)


def assemble_video(ref: VideoRef, plan: VideoPlan, chunks: list[EncodedChunk], cfg: WorkerConfig) -> list[dict]:
    """Turn a video's encoded chunks into its webdataset samples (parts of max_frames frames)."""
    chunks = sorted(chunks, key=lambda c: c.index)
    if chunks and chunks[-1].last:
        plan = settle_plan(plan, _total_frames(chunks), cfg)  # clips: the layout of the decoded count
    total, _ = check_coverage(ref, plan, chunks, cfg.flow.step)
    check_box_frames(ref, plan, cfg, total)
    frames = [(i, p, b) for c in chunks for i, p, b in zip(c.frame_index, c.frame_pts, c.frame_bytes, strict=True)]
    fields = [f for c in chunks for f in chunk_fields(c)]
    meta = video_meta(ref, plan, cfg, chunks[0].size)
    if plan.keep_frames is not None:
        return [_clips_sample(ref, plan, meta, frames, fields)]
    return dense_samples(ref, meta, frames, fields, cfg.sample.max_frames)


def dense_samples(ref: VideoRef, meta: dict, frames: list, fields: list, max_frames: int) -> list[dict]:
    """A dense video's samples: parts of `max_frames` frames, each with the fields starting in it.

    frames: (index, pts, jpeg bytes); fields: `Field`s; both in order. Also
    used to re-pack stored members without recomputing them, so both paths give equal bytes.
    """
    parts = -(-len(frames) // max_frames)
    return [
        _part(
            ref,
            meta,
            k,
            parts,
            frames[k * max_frames : (k + 1) * max_frames],
            [f for f in fields if k * max_frames <= f[0] < (k + 1) * max_frames],
        )
        for k in range(parts)
    ]


def _part(ref: VideoRef, meta: dict, k: int, parts: int, frames: list, fields: list) -> dict:
    return _sample(
        part_key(ref, k, parts), {**meta, "part": k, "num_parts": parts, "clips": []}, frames, fields, ref.boxes
    )


def stream_parts(
    ref: VideoRef, meta: dict, chunks: Iterable[EncodedChunk], total: int, max_frames: int
) -> Iterator[dict]:
    """Dense parts, each emitted as soon as the chunks holding its frames have been read.

    A field (t, t+step) is encoded by the chunk that owns frame t, so once frame
    (k+1) * max_frames - 1 has arrived, part k has all its frames and fields.
    """
    parts = -(-total // max_frames)
    frames: list = []
    fields: list = []
    k = 0
    for c in chunks:
        frames.extend(zip(c.frame_index, c.frame_pts, c.frame_bytes, strict=True))
        fields.extend(chunk_fields(c))
        while len(frames) >= max_frames and k < parts - 1:
            hi = (k + 1) * max_frames
            yield _part(ref, meta, k, parts, frames[:max_frames], [f for f in fields if f[0] < hi])
            frames, fields = frames[max_frames:], [f for f in fields if f[0] >= hi]
            k += 1
    yield _part(ref, meta, k, parts, frames, fields)


def clip_sample(ref: VideoRef, meta: dict, frames: list, fields: list, clips: list[dict]) -> dict:
    """A clips-mode video's single sample; `clips` holds positions into frames and fields."""
    return _sample(ref.key, {**meta, "part": 0, "num_parts": 1, "clips": clips}, frames, fields, ref.boxes)


def _clips_sample(ref: VideoRef, plan: VideoPlan, meta: dict, frames: list, fields: list) -> dict:
    frame_pos = {i: n for n, (i, _, _) in enumerate(frames)}
    field_pos = {f.start: n for n, f in enumerate(fields)}
    clips = [{"frame": frame_pos[c], "flow": [field_pos[f] for f in fs]} for c, fs in plan.clips]
    return clip_sample(ref, meta, frames, fields, clips)
