"""One video's path through the pipeline, without Ray: decode -> flow -> encode -> samples.

The three stages are separate functions because Ray runs them in different places:
`video_jobs` streams decoded chunks (a CPU task), `process_chunks` computes and encodes flow
for chunks (a CPU task; on GPU builds `compute_fields` runs in an actor and `encode_chunk`
after it), `assemble_video` turns the encoded chunks of a video into webdataset samples (the
shard writer). `process_video` chains them in-process.

What crosses between them is what the next stage needs and no more: the decoder JPEG-encodes
each kept frame from its YUV planes where it was decoded and hands flow only the luma planes
(or RGB, for an estimator whose `input` is "rgb"); flow hands on encoded fields.
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

from pipeline import boxes, decode, encode, failures
from pipeline.flow import warp
from pipeline.decode import DecodeConfig, DecodeError
from pipeline.flow.config import FlowConfig
from pipeline.flow.estimators import FlowEstimator, make_estimator
from pipeline.flow.quantize import QUANTIZATION
from pipeline.records import EncodedChunk, VideoInfo, VideoRef, VideoResult
from pipeline.flow.warp import WarpConfig

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
    """Decided before the first chunk: the stream, and which frames and fields to keep.

    In clips mode the layout comes from the frame count the header promises (`expected_frames`),
    so the video is decoded once; the decoder and the writer settle it on the count actually
    decoded (`settle_plan`), which is what the layout always depends on.
    """

    info: VideoInfo
    total_frames: int | None  # known up front only in clips mode (expected, or counted)
    keep_frames: frozenset[int] | None  # None: every frame (dense)
    keep_fields: frozenset[int] | None  # field i is the pair (i, i + step)
    clips: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (centre frame, its L field starts)


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


@dataclass(frozen=True)
class VideoFailure:
    """A per-video failure, carried as data so the build goes on."""

    reason: str
    kind: str = failures.PERMANENT  # failures.TRANSIENT when retrying may help


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
    boxes.check_frame_size(ref.boxes, info.width, info.height)
    if not cfg.sample.clips:
        return VideoPlan(info=info, total_frames=None, keep_frames=None, keep_fields=None)
    expected = expected_frames(info, cfg.decode)
    if expected > cfg.flow.step:
        try:
            return clips_plan(info, expected, cfg)
        except ValueError:
            pass  # too short by the header: count the frames before calling it too short
    return clips_plan(info, count_frames(ref.uri, cfg.decode, info), cfg)


def clips_plan(info: VideoInfo, total: int, cfg: WorkerConfig) -> VideoPlan:
    """The clips-mode plan of a video of `total` decoded frames (ValueError when too short)."""
    s, step = cfg.sample, cfg.flow.step
    starts = clip_starts(total - step, s.clips, s.clip_len)
    clips = tuple((st + s.clip_len // 2, tuple(range(st, st + s.clip_len))) for st in starts)
    fields = frozenset(f for _, fs in clips for f in fs)
    return VideoPlan(info=info, total_frames=total, keep_frames=frozenset(c for c, _ in clips),
                     keep_fields=fields, clips=clips)


def settle_plan(plan: VideoPlan, total: int, cfg: WorkerConfig) -> VideoPlan:
    """The plan for `total` frames actually decoded: `plan` itself when its count was right."""
    if plan.keep_frames is None or plan.total_frames == total:
        return plan
    return clips_plan(plan.info, total, cfg)


def expected_frames(info: VideoInfo, cfg: DecodeConfig) -> int:
    """Frames the decode should give by the header (duration x rate), 0 when unknown."""
    rate = cfg.fps or info.fps
    return int(round(info.duration * rate)) if rate > 0 and info.duration > 0 else 0


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
        proc = subprocess.run([decode.resolve_ffmpeg(), "-hide_banner", "-nostdin", *decode.guarded_input(path)],
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
    """Stream the video's frames as ChunkJobs; a decode failure raises DecodeError.

    Dense: one job per `chunk_frames` frames, sent while the rest decodes. Clips mode: the
    frames the clips use are held while the video decodes once, then sent as one job.
    """
    if plan.keep_frames is not None:
        yield _clips_job(ref, plan, cfg)
        return
    step, kind, quality = cfg.flow.step, cfg.flow.input, cfg.encode.rgb_quality
    rows = ((_flow_frame(f, kind), pts, encode.encode_planes(*decode.split_planes(f), quality))
            for f, pts in decode.iter_planes(ref.uri, cfg.decode, plan.info))
    groups = decode.group_chunks(rows, chunk_frames=cfg.sample.chunk_frames, overlap=step)
    for index, start, owned, group, last in groups:
        n = len(group)
        yield ChunkJob(video_key=ref.key, index=index, start=start, owned=owned, last=last,
                       frame_ids=tuple(range(start, start + n)), frames=np.stack([g[0] for g in group]),
                       fields=tuple(start + r for r in range(owned) if r + step < n),
                       frame_index=tuple(range(start, start + owned)),
                       frame_pts=tuple(float(g[1]) for g in group[:owned]),
                       frame_bytes=tuple(g[2] for g in group[:owned]), size=_size(group[0][0]),
                       people=chunk_people(ref, plan, range(start, start + n), _size(group[0][0]), cfg))


def _flow_frame(frame: np.ndarray, kind: str) -> np.ndarray:
    """What flow takes of an I420 frame: its luma plane (a view), or RGB."""
    return decode.split_planes(frame)[0] if kind == "gray" else decode.planes_to_rgb(frame)


def _size(flow_frame: np.ndarray) -> tuple[int, int]:
    return flow_frame.shape[1], flow_frame.shape[0]


def needed_frames(plan: VideoPlan, step: int) -> frozenset[int]:
    """The frames a clips-mode plan uses: kept frames and both ends of every kept field."""
    return plan.keep_frames | {f + d for f in plan.keep_fields for d in (0, step)}


def _clips_job(ref: VideoRef, plan: VideoPlan, cfg: WorkerConfig) -> ChunkJob:
    """Decode once, holding the frames the clips use; settle the plan on the decoded count.

    The clip layout depends on the frame count, taken from the header before decoding. When
    the decode gives another count (a header that lies, a file cut short) the layout moves,
    and the video is decoded a second time only if the new layout needs frames not held.
    """
    step = cfg.flow.step
    held, total = _hold(ref, plan, needed_frames(plan, step), cfg)
    settled = settle_plan(plan, total, cfg)
    need = needed_frames(settled, step)
    if not need <= held.keys():
        log.info("%s: decoded %d frames, the header said %d: decoding again for the clips", ref.source,
                 total, plan.total_frames)
        held, again = _hold(ref, plan, need, cfg)
        if again != total:
            raise DecodeError(ref.uri, f"decoded {total} frames, then {again}: the decode is not repeatable")
    kind, quality = cfg.flow.input, cfg.encode.rgb_quality
    ids = sorted(need)
    keep = sorted(settled.keep_frames)
    size = _size(decode.split_planes(held[ids[0]][0])[0])
    return ChunkJob(video_key=ref.key, index=0, start=0, owned=total, last=True, frame_ids=tuple(ids),
                    frames=np.stack([_flow_frame(held[i][0], kind) for i in ids]),
                    fields=tuple(sorted(settled.keep_fields)), frame_index=tuple(keep),
                    frame_pts=tuple(held[i][1] for i in keep),
                    frame_bytes=tuple(encode.encode_planes(*decode.split_planes(held[i][0]), quality) for i in keep),
                    size=size, people=chunk_people(ref, settled, ids, size, cfg))


def _hold(ref: VideoRef, plan: VideoPlan, need: frozenset[int], cfg: WorkerConfig) -> tuple[dict, int]:
    """One decode pass: {frame index: (I420 frame, pts)} for the frames in `need`, and the count."""
    held, total = {}, 0
    for total, (frame, pts) in enumerate(decode.iter_planes(ref.uri, cfg.decode, plan.info), start=1):
        if total - 1 in need:
            held[total - 1] = (frame, float(pts))
    return held, total


def chunk_people(ref: VideoRef, plan: VideoPlan, frame_ids, size: tuple[int, int],
                 cfg: WorkerConfig) -> dict[int, list] | None:
    """The annotated boxes of a chunk's frames in stored pixels, when warped flow needs them."""
    if cfg.warp is None or ref.boxes is None or not len(frame_ids):
        return None
    rate = boxes.source_rate(cfg.decode.fps, plan.info.fps)
    source = (plan.info.width, plan.info.height)
    found = {i: [b[:4] for b in boxes.frame_boxes(ref.boxes, i, rate, source, size)] for i in frame_ids}
    return {i: b for i, b in found.items() if b}


def safe_plan(ref: VideoRef, cfg: WorkerConfig) -> VideoPlan | VideoFailure:
    """`plan_video`, with a per-video failure returned as data."""
    try:
        return plan_video(ref, cfg)
    except (DecodeError, ValueError, OSError) as exc:
        return VideoFailure(reason=_reason(ref, exc), kind=failures.kind_of(exc))


def video_jobs(ref: VideoRef, cfg: WorkerConfig) -> Iterator[VideoPlan | ChunkJob | VideoFailure]:
    """Yield the plan, then one ChunkJob per chunk; a decode failure is yielded, not raised."""
    plan = safe_plan(ref, cfg)
    yield plan
    if isinstance(plan, VideoFailure):
        return
    try:
        yield from chunk_jobs(ref, plan, cfg)
    except (DecodeError, ValueError, OSError) as exc:
        yield VideoFailure(reason=_reason(ref, exc), kind=failures.kind_of(exc))


def _reason(ref: VideoRef, exc: Exception) -> str:
    text = str(exc)
    return text if ref.uri in text or ref.source in text else f"{ref.source}: {text}"


# --- stage 2: flow + encode ------------------------------------------------------------------

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
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]) if len(frames) else \
        np.zeros(frames.shape[:3], np.uint8)


def frames_job(frames: np.ndarray, key: str, index: int, start: int, owned: int, last: bool, *,
               kind: str = "gray", step: int = 1, rgb_quality: int = 90) -> ChunkJob:
    """A dense ChunkJob of RGB frames (N, H, W, 3) already in memory, as a decoder would send
    it: flow frames in the estimator's form `kind`, owned frames JPEG-encoded (tests, benchmarks)."""
    n = len(frames)
    return ChunkJob(video_key=key, index=index, start=start, owned=owned, last=last,
                    frame_ids=tuple(range(start, start + n)), frames=gray(frames) if kind == "gray" else frames,
                    fields=tuple(start + r for r in range(owned) if r + step < n),
                    frame_index=tuple(range(start, start + owned)), frame_pts=tuple(float(start + r) for r in range(owned)),
                    frame_bytes=tuple(encode.encode_rgb(f, rgb_quality) for f in frames[:owned]),
                    size=(frames.shape[2], frames.shape[1]))


def _rows(frames: np.ndarray, rows: list[int]) -> np.ndarray:
    if rows and rows == list(range(rows[0], rows[0] + len(rows))):
        return frames[rows[0]:rows[0] + len(rows)]
    return frames[rows]


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
            for j, fl in zip(owner[b:b + size], estimator(prev[b:b + size], nxt[b:b + size])):
                out[j].append(fl)
    return [np.stack(o) if o else np.zeros((0, job.size[1], job.size[0], 2), np.float32) for o, job in zip(out, jobs)]


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def flow_bytes(job: ChunkJob, estimator: FlowEstimator, cfg: WorkerConfig) -> tuple[bytes, ...]:
    """Compute and encode the job's fields a batch at a time: float flow is never held for the
    whole chunk (64 float fields at 1280x720 would be 470 MB)."""
    prev, nxt = flow_inputs(job, cfg.flow.step)
    size = cfg.flow.batch_for(prev.shape[1], prev.shape[2]) if getattr(estimator, "batched", True) else 1
    return tuple(_encode_field(fl, cfg) for b in range(0, len(prev), size)
                 for fl in estimator(prev[b:b + size], nxt[b:b + size]))


def encode_chunk(job: ChunkJob, fields: Iterable[np.ndarray] | tuple[bytes, ...], cfg: WorkerConfig,
                 warped: "WarpedFields | None" = None) -> EncodedChunk:
    """The chunk's encoded output: its frames (encoded at decode), its fields and (--flow-warp)
    its warped fields, given as arrays (float or quantized) to encode here, or as encoded bytes."""
    encoded = tuple(f if isinstance(f, bytes) else _encode_field(f, cfg) for f in fields)
    if len(encoded) != len(job.fields):
        raise RuntimeError(f"{job.video_key}: {len(encoded)} flow fields for {len(job.fields)} pairs")
    if (warped is not None) != (cfg.warp is not None) or (warped is not None and len(warped.fields) != len(encoded)):
        raise RuntimeError(f"{job.video_key}: warped fields do not match the flow fields or --flow-warp")
    step = cfg.flow.step
    return EncodedChunk(video_key=job.video_key, index=job.index, start=job.start, frame_bytes=job.frame_bytes,
                        frame_index=job.frame_index, frame_pts=job.frame_pts, flow_bytes=encoded,
                        flow_pairs=tuple((t, t + step) for t in job.fields), size=job.size, last=job.last,
                        owned=job.owned,
                        warped_bytes=tuple(f if isinstance(f, bytes) else _encode_field(f, cfg)
                                           for f in warped.fields) if warped else (),
                        cameras=warped.cameras if warped else ())


def _encode_field(field: np.ndarray, cfg: WorkerConfig) -> bytes:
    # A GPU actor may hand over fields already quantized (uint8), a quarter of the bytes.
    if field.dtype == np.uint8:
        return encode.encode_flow_q(field, cfg.encode.flow_quality)
    return encode.encode_flow(field, cfg.flow.bound, cfg.encode.flow_quality)


def process_chunks(jobs: list[ChunkJob], estimator: FlowEstimator, cfg: WorkerConfig) -> list[EncodedChunk]:
    """Stage 2 for a batch of chunks (possibly of several videos)."""
    warped = compute_warped(jobs, estimator, cfg)
    return [encode_chunk(job, flow_bytes(job, estimator, cfg), cfg, wf) for job, wf in zip(jobs, warped)]


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
    from pipeline.flow.quantize import quantize

    return WarpedFields(fields=quantize(w.fields, bound), cameras=w.cameras)


def warp_inputs(job: ChunkJob, cfg: WorkerConfig, rgb: bool = False,
                boxes: Mapping[int, list] | None = None) -> WarpInputs:
    """Estimate the camera motion of each pair the chunk computes and warp its second frame back.

    Runs on a CPU (feature matching, RANSAC, remap); the flow of the warped pairs is then
    computed like any other pairs, by whichever estimator computes the plain flow.
    boxes: global frame index -> person boxes (x0, y0, x1, y1) in stored pixels; a pair's
    camera motion is then estimated outside the boxes of both its frames.
    """
    step = cfg.flow.step
    firsts_in, seconds_in = flow_inputs(job, step)  # in the estimator's form: luma, or RGB
    grey = firsts_in.ndim == 3
    firsts, seconds, cams = [], [], []
    for i, t in enumerate(job.fields):
        a, b = firsts_in[i], seconds_in[i]
        ga, gb = (a, b) if grey else (cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY))
        people = [*boxes.get(t, []), *boxes.get(t + step, [])] if boxes else []
        mask = warp.exclusion_mask(ga.shape, people) if people else None
        cam = warp.estimate_camera(ga, gb, cfg.warp, mask)
        firsts.append(a)  # the job's frames are already in the estimator's form
        seconds.append(warp.compensate(a, b, cam.matrix, cfg.warp.border))
        cams.append(cam.as_meta())
    empty = np.zeros((0, *firsts_in.shape[1:]), np.uint8)
    return WarpInputs(firsts=np.stack(firsts) if cams else empty, seconds=np.stack(seconds) if cams else empty,
                      cameras=tuple(cams))


def compute_warped(jobs: list[ChunkJob], estimator: FlowEstimator, cfg: WorkerConfig) -> list[WarpedFields | None]:
    """Warped flow of every pair of several chunks (one entry per job; None each without --flow-warp)."""
    if cfg.warp is None:
        return [None] * len(jobs)
    rgb = getattr(estimator, "input", "gray") == "rgb"  # learned estimators take RGB
    out = []
    for job in jobs:
        wi = warp_inputs(job, cfg, rgb, job.people)
        w, h = job.size
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
    else:
        got = sorted(i for c in chunks for i in c.frame_index)
        pairs = sorted(p[0] for c in chunks for p in c.flow_pairs)
        if plan.total_frames != total or got != sorted(plan.keep_frames) or pairs != sorted(plan.keep_fields):
            raise RuntimeError(f"{ref.source}: the clips encoded do not match the plan for {total} decoded frames")
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
    return [Field(a, b, data, w, cam) for (a, b), data, w, cam in
            zip(c.flow_pairs, c.flow_bytes, c.warped_bytes or (None,) * n, c.cameras or (None,) * n)]


def _field_meta(f: Field) -> dict:
    return {"from": f.start, "to": f.end} if f.camera is None else {"from": f.start, "to": f.end, "camera": f.camera}


def _sample(key: str, meta: dict, frames: list, fields: list[Field], annotations: boxes.VideoBoxes | None) -> dict:
    meta = {**meta, "key": key,
            "frames": [{"index": i, "pts": round(p, 6)} for i, p, _ in frames],
            "flow_fields": [_field_meta(f) for f in fields]}
    if annotations is not None:
        meta = boxes.annotate(meta, annotations)
    warped = [f.warped for f in fields] if encode.has_warped(meta) else None
    return encode.to_sample(key, meta, [b for *_, b in frames], [f.data for f in fields], warped)


def assemble_video(ref: VideoRef, plan: VideoPlan, chunks: list[EncodedChunk], cfg: WorkerConfig) -> list[dict]:
    """Turn a video's encoded chunks into its webdataset samples (parts of max_frames frames)."""
    chunks = sorted(chunks, key=lambda c: c.index)
    if chunks and chunks[-1].last:
        plan = settle_plan(plan, _total_frames(chunks), cfg)  # clips: the layout of the decoded count
    total, _ = check_coverage(ref, plan, chunks, cfg.flow.step)
    check_box_frames(ref, plan, cfg, total)
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
    return _sample(part_key(ref, k, parts), {**meta, "part": k, "num_parts": parts, "clips": []}, frames, fields,
                   ref.boxes)


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
        check_box_frames(ref, plan, cfg, frames)
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
    return _sample(ref.key, {**meta, "part": 0, "num_parts": 1, "clips": clips}, frames, fields, ref.boxes)


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
            return VideoResult(ref=ref, status="error", error=item.reason, error_kind=item.kind)
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
