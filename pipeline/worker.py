"""One video's path through the pipeline, without Ray: decode -> flow -> encode -> samples.

The three stages are separate functions because Ray runs them in different places:
`video_jobs` streams decoded chunks (a CPU task), `encode_chunk` computes and encodes flow
for one chunk (a CPU task or a GPU actor), `assemble_video` turns the encoded chunks of a
video into webdataset samples (the shard writer). `process_video` chains them in-process.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, NamedTuple

import cv2
import numpy as np

from pipeline import decode, encode, warp
from pipeline.decode import DecodeConfig, DecodeError
from pipeline.flow import QUANTIZATION, FlowConfig, FlowEstimator, make_estimator
from pipeline.records import EncodedChunk, FrameChunk, VideoInfo, VideoRef, VideoResult
from pipeline.warp import WarpConfig

log = logging.getLogger(__name__)

# 8K UHD: larger frames are refused before decoding, so a tiny file that declares a huge size
# cannot make a worker allocate gigabytes (one rgb24 frame at this limit is about 100 MB).
DEFAULT_MAX_PIXELS = 7680 * 4320


@dataclass(frozen=True, kw_only=True)
class EncodeConfig:
    """JPEG qualities of stored frames and flow fields (see docs/FORMAT.md for the choice)."""

    rgb_quality: int = 90
    flow_quality: int = 95

    def __post_init__(self) -> None:
        for name in ("rgb_quality", "flow_quality"):
            if not 1 <= getattr(self, name) <= 100:
                raise ValueError(f"{name} must be within 1..100, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class SampleConfig:
    """What each video sample keeps: every frame (dense) or N clips of L flow fields."""

    clips: int = 0  # 0: dense; N > 0: N uniformly spaced clips per video
    clip_len: int = 10  # L flow fields per clip, the RGB frame at the clip's centre
    max_frames: int = 1500  # frames per sample part: a longer video becomes consecutive parts
    chunk_frames: int = 64  # frames per unit of flow compute (a Ray task)

    def __post_init__(self) -> None:
        if self.clips < 0 or self.clip_len < 1:
            raise ValueError(f"clips must be >= 0 and clip_len >= 1, got {self.clips}, {self.clip_len}")
        if self.max_frames < 2 or self.chunk_frames < 1:
            raise ValueError(f"max_frames must be >= 2 and chunk_frames >= 1, got {self.max_frames}, {self.chunk_frames}")

    @property
    def mode(self) -> str:
        return "clips" if self.clips else "dense"


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """Everything one video's processing depends on."""

    decode: DecodeConfig = field(default_factory=DecodeConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    max_pixels: int = DEFAULT_MAX_PIXELS  # a video whose source or stored frame is larger is an error row
    warp: WarpConfig | None = None  # --flow-warp: also store camera-compensated (warped) flow

    def __post_init__(self) -> None:
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 4:
            raise ValueError(f"max_pixels={self.max_pixels!r} must be an integer >= 4")

    def output_dict(self) -> dict:
        """Every setting that changes the stored bytes (hashed into dataset versions)."""
        s = self.sample
        out = {"decode": self.decode.output_dict(), "flow": self.flow.output_dict(),
               "encode": {"rgb_quality": self.encode.rgb_quality, "flow_quality": self.encode.flow_quality},
               "sample": {"mode": s.mode, "clips": s.clips, "clip_len": s.clip_len, "max_frames": s.max_frames},
               "limits": {"max_pixels": self.max_pixels}}
        if self.warp is not None:  # only when on: ids of builds without warped flow stay as they were
            out["warp"] = self.warp.output_dict()
        return out


@dataclass(frozen=True)
class VideoPlan:
    """Decided before the first chunk: the stream, and which frames and fields to keep."""

    info: VideoInfo
    total_frames: int | None  # known up front only in clips mode (counted by a cheap pass)
    keep_frames: frozenset[int] | None  # None: every frame (dense)
    keep_fields: frozenset[int] | None  # field i is the pair (i, i + step)
    clips: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (centre frame, its L field starts)


@dataclass(frozen=True)
class ChunkJob:
    """A chunk of frames plus what to keep of it: the input of `encode_chunk`."""

    chunk: FrameChunk
    keep_frames: frozenset[int] | None
    keep_fields: frozenset[int] | None


@dataclass(frozen=True)
class VideoFailure:
    """A per-video failure, carried as data so the build goes on."""

    reason: str


# --- planning -----------------------------------------------------------------------------

def clip_starts(num_fields: int, clips: int, clip_len: int) -> list[int]:
    """First field of each of `clips` uniformly spaced windows of `clip_len` fields."""
    if num_fields < clip_len:
        raise ValueError(f"too short for --clip-len {clip_len}: only {num_fields} flow fields")
    last = num_fields - clip_len
    if clips == 1:
        return [last // 2]
    return [int(round(c * last / (clips - 1))) for c in range(clips)]


def plan_video(ref: VideoRef, cfg: WorkerConfig) -> VideoPlan:
    """Probe the video and decide what to keep; raises DecodeError or ValueError with a reason."""
    try:
        info = decode.probe(ref.uri)
    except DecodeError as exc:
        raise DecodeError(ref.uri, explain_probe_failure(ref.uri) or exc.reason) from exc
    if info.codec in ("", "none"):
        raise ValueError("unsupported codec: ffmpeg has no decoder for this video stream's codec")
    check_pixels(info, cfg)
    s, step = cfg.sample, cfg.flow.step
    if not s.clips:
        return VideoPlan(info=info, total_frames=None, keep_frames=None, keep_fields=None)
    total = count_frames(ref.uri, cfg.decode, info)
    starts = clip_starts(total - step, s.clips, s.clip_len)
    clips = tuple((st + s.clip_len // 2, tuple(range(st, st + s.clip_len))) for st in starts)
    fields = frozenset(f for _, fs in clips for f in fs)
    return VideoPlan(info=info, total_frames=total, keep_frames=frozenset(c for c, _ in clips),
                     keep_fields=fields, clips=clips)


def check_pixels(info: VideoInfo, cfg: WorkerConfig) -> None:
    """Refuse a video whose declared or stored frame size exceeds cfg.max_pixels, before decoding."""
    out_w, out_h = cfg.decode.output_size(info.width, info.height)
    for what, (w, h) in (("declared resolution", (info.width, info.height)), ("stored frame size", (out_w, out_h))):
        if w * h > cfg.max_pixels:
            raise ValueError(f"{what} {w}x{h} ({_pixels(w * h)}) exceeds the limit of "
                             f"{_pixels(cfg.max_pixels)} (max_pixels); not decoded")


def _pixels(n: int) -> str:
    return f"{n / 1e6:.1f} Mpx" if n >= 100_000 else f"{n} px"


# ffmpeg lines that say plainly why a file could not be opened, though its last lines may not.
_PROBE_CAUSES = (
    (re.compile(r"Picture size (\d+)x(\d+) is invalid"),
     "declared resolution {0}x{1} is invalid or too large to decode; not decoded"),
    (re.compile(r"no decoder found for: ?(\S+)|Decoder \(codec (\S+)\) not found"),
     "unsupported codec {0}: this ffmpeg has no decoder for it"),
)


def explain_probe_failure(uri: str) -> str | None:
    """A clear reason from ffmpeg's full banner when probing failed, or None.

    Only runs on the failure path: it reads the same banner again and looks for the line
    that names the cause (e.g. an absurd declared size), which is often not among the last.
    """
    try:
        path = decode.local_path(uri)
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            return None  # missing, empty or special files: the probe's own reason is already clear
        proc = subprocess.run([decode.resolve_ffmpeg(), "-hide_banner", "-nostdin", "-i", path],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=60, check=False)
    except (DecodeError, OSError, subprocess.TimeoutExpired):
        return None
    text = proc.stderr.decode("utf-8", errors="replace")
    for pattern, reason in _PROBE_CAUSES:
        m = pattern.search(text)
        if m:
            return reason.format(*[g for g in m.groups() if g is not None])
    return None


def count_frames(uri: str, cfg: DecodeConfig, info: VideoInfo) -> int:
    """Exact number of frames the decode settings give, counted by a cheap low-resolution pass."""
    # The frame count depends on the fps filter only, so decoding at 16x16 gives the same count.
    cheap = DecodeConfig(resize="16x16", fps=cfg.fps)
    return sum(1 for _ in decode.iter_frames(uri, cheap, info))


# --- stage 1: decode -------------------------------------------------------------------------

def chunk_jobs(ref: VideoRef, plan: VideoPlan, cfg: WorkerConfig) -> Iterator[ChunkJob]:
    """Stream the video's frames as ChunkJobs; a decode failure raises DecodeError."""
    chunks = decode.iter_chunks(ref.key, ref.uri, cfg.decode, chunk_frames=cfg.sample.chunk_frames,
                                overlap=cfg.flow.step, info=plan.info)
    for chunk in chunks:
        yield ChunkJob(chunk=_trim(chunk, plan, cfg.flow.step), keep_frames=plan.keep_frames,
                       keep_fields=plan.keep_fields)


def safe_plan(ref: VideoRef, cfg: WorkerConfig) -> VideoPlan | VideoFailure:
    """`plan_video`, with a per-video failure returned as data."""
    try:
        return plan_video(ref, cfg)
    except (DecodeError, ValueError, OSError) as exc:
        return VideoFailure(reason=_reason(ref, exc))


def video_jobs(ref: VideoRef, cfg: WorkerConfig) -> Iterator[VideoPlan | ChunkJob | VideoFailure]:
    """Yield the plan, then one ChunkJob per chunk; a decode failure is yielded, not raised."""
    plan = safe_plan(ref, cfg)
    yield plan
    if isinstance(plan, VideoFailure):
        return
    try:
        yield from chunk_jobs(ref, plan, cfg)
    except (DecodeError, ValueError, OSError) as exc:
        yield VideoFailure(reason=_reason(ref, exc))


def _reason(ref: VideoRef, exc: Exception) -> str:
    text = str(exc)
    return text if ref.uri in text or ref.source in text else f"{ref.source}: {text}"


def _trim(chunk: FrameChunk, plan: VideoPlan, step: int) -> FrameChunk:
    """Drop frames no kept frame or field needs (clips mode), so less crosses the object store."""
    if plan.keep_frames is None:
        return chunk
    need = set(plan.keep_frames) | {f + d for f in plan.keep_fields for d in (0, step)}
    rows = [i for i in range(len(chunk.frames)) if chunk.start + i in need]
    if len(rows) == len(chunk.frames):
        return chunk
    # Rows that are not needed are zeroed rather than removed, so row i is still frame start+i.
    frames = chunk.frames.copy()
    mask = np.ones(len(frames), bool)
    mask[rows] = False
    frames[mask] = 0
    return FrameChunk(video_key=chunk.video_key, index=chunk.index, start=chunk.start, owned=chunk.owned,
                      frames=frames, pts=chunk.pts, last=chunk.last)


# --- stage 2: flow + encode ------------------------------------------------------------------

def chunk_pairs(job: ChunkJob, step: int) -> list[int]:
    """Rows t of the chunk whose field (t, t+step) is computed here."""
    ch = job.chunk
    rows = [r for r in range(ch.owned) if r + step < len(ch.frames)]
    if job.keep_fields is not None:
        rows = [r for r in rows if ch.start + r in job.keep_fields]
    return rows


def gray(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) RGB uint8 -> (N, H, W) luma uint8, as the estimators take it."""
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]) if len(frames) else \
        np.zeros(frames.shape[:3], np.uint8)


def compute_fields(jobs: list[ChunkJob], estimator: FlowEstimator, cfg: FlowConfig) -> list[np.ndarray]:
    """Flow for every needed pair of several chunks, in batches of cfg.batch_for(h, w) pairs.

    Pairs from different chunks (and videos) share a batch when their sizes match, which
    is what keeps a GPU estimator busy; the result lists one (F, H, W, 2) array per job.
    """
    pairs = [(j, r) for j, job in enumerate(jobs) for r in chunk_pairs(job, cfg.step)]
    out: list[list[np.ndarray]] = [[] for _ in jobs]
    by_size: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for j, r in pairs:
        by_size.setdefault(jobs[j].chunk.frames.shape[1:3], []).append((j, r))
    results: dict[tuple[int, int], np.ndarray] = {}
    to_input = gray if getattr(estimator, "input", "gray") == "gray" else np.asarray  # learned ones take RGB
    for (h, w), group in by_size.items():
        size = cfg.batch_for(h, w)
        for b in range(0, len(group), size):
            batch = group[b:b + size]
            prev = to_input(np.stack([jobs[j].chunk.frames[r] for j, r in batch]))
            nxt = to_input(np.stack([jobs[j].chunk.frames[r + cfg.step] for j, r in batch]))
            for (j, r), fl in zip(batch, estimator(prev, nxt)):
                results[(j, r)] = fl
    for j, r in pairs:
        out[j].append(results[(j, r)])
    return [np.stack(o) if o else np.zeros((0, 1, 1, 2), np.float32) for o in out]


def encode_chunk(job: ChunkJob, fields: np.ndarray, cfg: WorkerConfig,
                 warped: "WarpedFields | None" = None) -> EncodedChunk:
    """JPEG-encode a chunk's kept frames, its computed flow fields and (--flow-warp) its warped fields."""
    ch, step = job.chunk, cfg.flow.step
    rows = [r for r in range(ch.owned) if job.keep_frames is None or ch.start + r in job.keep_frames]
    pair_rows = chunk_pairs(job, step)
    if len(pair_rows) != len(fields):
        raise RuntimeError(f"{ch.video_key}: {len(fields)} flow fields for {len(pair_rows)} pairs")
    if (warped is not None) != (cfg.warp is not None) or (warped is not None and len(warped.fields) != len(fields)):
        raise RuntimeError(f"{ch.video_key}: warped fields do not match the flow fields or --flow-warp")
    h, w = ch.frames.shape[1:3]
    return EncodedChunk(
        video_key=ch.video_key, index=ch.index, start=ch.start,
        frame_bytes=tuple(encode.encode_rgb(ch.frames[r], cfg.encode.rgb_quality) for r in rows),
        frame_index=tuple(ch.start + r for r in rows), frame_pts=tuple(float(ch.pts[r]) for r in rows),
        flow_bytes=tuple(_encode_field(f, cfg) for f in fields),
        flow_pairs=tuple((ch.start + r, ch.start + r + step) for r in pair_rows),
        size=(w, h), last=ch.last, owned=ch.owned,
        warped_bytes=tuple(_encode_field(f, cfg) for f in warped.fields) if warped else (),
        cameras=warped.cameras if warped else ())


def _encode_field(field: np.ndarray, cfg: WorkerConfig) -> bytes:
    # A GPU actor may hand over fields already quantized (uint8), a quarter of the bytes.
    if field.dtype == np.uint8:
        return encode.encode_flow_q(field, cfg.encode.flow_quality)
    return encode.encode_flow(field, cfg.flow.bound, cfg.encode.flow_quality)


def process_chunks(jobs: list[ChunkJob], estimator: FlowEstimator, cfg: WorkerConfig) -> list[EncodedChunk]:
    """Stage 2 for a batch of chunks (possibly of several videos)."""
    fields = compute_fields(jobs, estimator, cfg.flow)
    warped = compute_warped(jobs, estimator, cfg)
    return [encode_chunk(job, f, cfg, wf) for job, f, wf in zip(jobs, fields, warped)]


# --- stage 2b: warped flow (--flow-warp) -----------------------------------------------------

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
    from pipeline.flow import quantize

    return WarpedFields(fields=quantize(w.fields, bound), cameras=w.cameras)


def warp_inputs(job: ChunkJob, cfg: WorkerConfig, rgb: bool = False,
                boxes: Mapping[int, list] | None = None) -> WarpInputs:
    """Estimate the camera motion of each pair the chunk computes and warp its second frame back.

    Runs on a CPU (feature matching, RANSAC, remap); the flow of the warped pairs is then
    computed like any other pairs, by whichever estimator computes the plain flow.
    boxes: global frame index -> person boxes (x0, y0, x1, y1) in stored pixels; a pair's
    camera motion is then estimated outside the boxes of both its frames.
    """
    frames, step, start = job.chunk.frames, cfg.flow.step, job.chunk.start
    rows = chunk_pairs(job, step)
    g = gray(frames)
    firsts, seconds, cams = [], [], []
    for r in rows:
        people = [*boxes.get(start + r, []), *boxes.get(start + r + step, [])] if boxes else []
        mask = warp.exclusion_mask(g[r].shape, people) if people else None
        cam = warp.estimate_camera(g[r], g[r + step], cfg.warp, mask)
        src = frames if rgb else g
        firsts.append(src[r])
        seconds.append(warp.compensate(src[r], src[r + step], cam.matrix, cfg.warp.border))
        cams.append(cam.as_meta())
    empty = np.zeros((0, *(frames.shape[1:] if rgb else g.shape[1:])), np.uint8)
    return WarpInputs(firsts=np.stack(firsts) if rows else empty, seconds=np.stack(seconds) if rows else empty,
                      cameras=tuple(cams))


def compute_warped(jobs: list[ChunkJob], estimator: FlowEstimator, cfg: WorkerConfig) -> list[WarpedFields | None]:
    """Warped flow of every pair of several chunks (one entry per job; None each without --flow-warp)."""
    if cfg.warp is None:
        return [None] * len(jobs)
    rgb = getattr(estimator, "input", "gray") == "rgb"  # learned estimators take RGB
    out = []
    for job in jobs:
        wi = warp_inputs(job, cfg, rgb)
        h, w = job.chunk.frames.shape[1:3]
        b = cfg.flow.batch_for(h, w)
        fields = [estimator(wi.firsts[i:i + b], wi.seconds[i:i + b]) for i in range(0, len(wi.cameras), b)]
        out.append(WarpedFields(fields=np.concatenate(fields) if fields else np.zeros((0, h, w, 2), np.float32),
                                cameras=wi.cameras))
    return out


# --- stage 3: samples ----------------------------------------------------------------------

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
    return ChunkSummary(index=chunk.index, start=chunk.start, owned=chunk.owned, frame_index=chunk.frame_index,
                        flow_pairs=chunk.flow_pairs, size=chunk.size, last=chunk.last)


def check_coverage(ref: VideoRef, plan: VideoPlan, chunks: list[EncodedChunk], step: int) -> tuple[int, int]:
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
            raise RuntimeError(f"{ref.source}: {len(got)} frames and {len(pairs)} fields encoded, "
                               f"{total} frames decoded")
    elif plan.total_frames != total:
        raise RuntimeError(f"{ref.source}: decoded {total} frames, the counting pass saw {plan.total_frames}")
    if total <= step:
        raise ValueError(f"{ref.source}: too short: {total} frame(s) decoded, need at least {step + 1} "
                         f"for one flow field at --step {step}")
    return total, max(0, total - step)


def _total_frames(chunks: list[EncodedChunk]) -> int:
    return chunks[-1].start + chunks[-1].owned


def video_meta(ref: VideoRef, plan: VideoPlan, cfg: WorkerConfig, size: tuple[int, int]) -> dict:
    """Metadata shared by every part of a video (per-part frame lists are added later)."""
    info, f = plan.info, cfg.flow
    fps = cfg.decode.fps or info.fps
    warped = {"warp": {**cfg.warp.output_dict(), "method": "homography"}} if cfg.warp is not None else {}
    return {
        **warped,
        "schema_version": encode.schema_version(cfg.warp is not None), "kind": "video", "video_id": ref.key,
        "source": ref.source,
        "label": ref.label, "label_id": ref.label_id, "split": ref.split, "fps": fps, "source_fps": info.fps,
        "source_size": [info.width, info.height], "size": list(size), "mode": cfg.sample.mode,
        "decode": cfg.decode.output_dict(),
        "flow": {**f.output_dict(), "quantization": QUANTIZATION, "codec": "jpg",
                 "quality": cfg.encode.flow_quality, "layout": "x_over_y"},
        "rgb": {"codec": "jpg", "quality": cfg.encode.rgb_quality},
    }


def part_key(ref: VideoRef, part: int, parts: int) -> str:
    """Sample key of a part: the video id alone when the video is one sample."""
    return ref.key if parts == 1 else f"{ref.key}_part{part:03d}"


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
    return [Field(a, b, data, w, cam) for (a, b), data, w, cam in
            zip(c.flow_pairs, c.flow_bytes, c.warped_bytes or (None,) * n, c.cameras or (None,) * n)]


def _field_meta(f: Field) -> dict:
    return {"from": f.start, "to": f.end} if f.camera is None else {"from": f.start, "to": f.end, "camera": f.camera}


def _sample(key: str, meta: dict, frames: list, fields: list[Field]) -> dict:
    meta = {**meta, "key": key,
            "frames": [{"index": i, "pts": round(p, 6)} for i, p, _ in frames],
            "flow_fields": [_field_meta(f) for f in fields]}
    warped = [f.warped for f in fields] if encode.has_warped(meta) else None
    return encode.to_sample(key, meta, [b for *_, b in frames], [f.data for f in fields], warped)


def assemble_video(ref: VideoRef, plan: VideoPlan, chunks: list[EncodedChunk], cfg: WorkerConfig) -> list[dict]:
    """Turn a video's encoded chunks into its webdataset samples (parts of max_frames frames)."""
    chunks = sorted(chunks, key=lambda c: c.index)
    check_coverage(ref, plan, chunks, cfg.flow.step)
    frames = [(i, p, b) for c in chunks for i, p, b in zip(c.frame_index, c.frame_pts, c.frame_bytes)]
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
    return [_part(ref, meta, k, parts, frames[k * max_frames:(k + 1) * max_frames],
                  [f for f in fields if k * max_frames <= f[0] < (k + 1) * max_frames]) for k in range(parts)]


def _part(ref: VideoRef, meta: dict, k: int, parts: int, frames: list, fields: list) -> dict:
    return _sample(part_key(ref, k, parts), {**meta, "part": k, "num_parts": parts, "clips": []}, frames, fields)


def stream_video(ref: VideoRef, plan: VideoPlan, summaries: list[ChunkSummary],
                 chunks: Iterable[EncodedChunk], cfg: WorkerConfig) -> VideoResult:
    """Like `finish_video`, but the samples are produced while `chunks` (in index order) are
    read, so a writer holds one part of a video at a time, however long the video is.

    Coverage is checked on the summaries first: a video with a gap is an error result
    before any of its samples reaches a shard.
    """
    if plan.keep_frames is not None:  # clips mode: a few frames, one small sample
        return finish_video(ref, plan, list(chunks), cfg)
    try:
        frames, fields = check_coverage(ref, plan, summaries, cfg.flow.step)
    except (ValueError, RuntimeError) as exc:
        return VideoResult(ref=ref, status="error", error=_reason(ref, exc), info=plan.info)
    meta = video_meta(ref, plan, cfg, summaries[0].size)
    samples = _stream_parts(ref, meta, chunks, frames, cfg.sample.max_frames)
    return VideoResult(ref=ref, status="ok", samples=samples, frames=frames, flow_fields=fields, info=plan.info)


def _stream_parts(ref: VideoRef, meta: dict, chunks: Iterable[EncodedChunk], total: int,
                  max_frames: int) -> Iterator[dict]:
    """Dense parts, each emitted as soon as the chunks holding its frames have been read.

    A field (t, t+step) is encoded by the chunk that owns frame t, so once frame
    (k+1) * max_frames - 1 has arrived, part k has all its frames and fields.
    """
    parts = -(-total // max_frames)
    frames: list = []
    fields: list = []
    k = 0
    for c in chunks:
        frames.extend(zip(c.frame_index, c.frame_pts, c.frame_bytes))
        fields.extend(chunk_fields(c))
        while len(frames) >= max_frames and k < parts - 1:
            hi = (k + 1) * max_frames
            yield _part(ref, meta, k, parts, frames[:max_frames], [f for f in fields if f[0] < hi])
            frames, fields = frames[max_frames:], [f for f in fields if f[0] >= hi]
            k += 1
    yield _part(ref, meta, k, parts, frames, fields)


def clip_sample(ref: VideoRef, meta: dict, frames: list, fields: list, clips: list[dict]) -> dict:
    """A clips-mode video's single sample; `clips` holds positions into frames and fields."""
    return _sample(ref.key, {**meta, "part": 0, "num_parts": 1, "clips": clips}, frames, fields)


def _clips_sample(ref: VideoRef, plan: VideoPlan, meta: dict, frames: list, fields: list) -> dict:
    frame_pos = {i: n for n, (i, _, _) in enumerate(frames)}
    field_pos = {f.start: n for n, f in enumerate(fields)}
    clips = [{"frame": frame_pos[c], "flow": [field_pos[f] for f in fs]} for c, fs in plan.clips]
    return clip_sample(ref, meta, frames, fields, clips)


def process_video(ref: VideoRef, cfg: WorkerConfig, estimator: FlowEstimator | None = None) -> VideoResult:
    """Decode, compute flow, encode and assemble one video in this process (no Ray)."""
    estimator = estimator or make_estimator(cfg.flow)
    t0 = time.perf_counter()
    plan, encoded = None, []
    for item in video_jobs(ref, cfg):
        if isinstance(item, VideoFailure):
            return VideoResult(ref=ref, status="error", error=item.reason)
        if isinstance(item, VideoPlan):
            plan = item
        else:
            encoded.extend(process_chunks([item], estimator, cfg))
    return finish_video(ref, plan, encoded, cfg, seconds=time.perf_counter() - t0)


def finish_video(ref: VideoRef, plan: VideoPlan, encoded: list[EncodedChunk], cfg: WorkerConfig,
                 seconds: float = 0.0) -> VideoResult:
    """Assemble samples, turning an assembly failure into an error result for this video."""
    try:
        samples = assemble_video(ref, plan, encoded, cfg)
    except (ValueError, RuntimeError) as exc:
        return VideoResult(ref=ref, status="error", error=_reason(ref, exc), info=plan.info)
    frames = sum(len(encode.load_meta(s[encode.META])["frames"]) for s in samples)
    fields = sum(len(encode.load_meta(s[encode.META])["flow_fields"]) for s in samples)
    return VideoResult(ref=ref, status="ok", samples=tuple(samples), frames=frames, flow_fields=fields,
                       info=plan.info, stats={"seconds": seconds})
