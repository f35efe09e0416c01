"""Before the first chunk: probe a video and decide which frames and fields it keeps.

In clips mode the layout comes from the frame count the header promises, and is settled on
the count actually decoded (`settle_plan`); a failure is carried as data (`VideoFailure`)
so the build goes on.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

from pipeline import boxes, decode, failures
from pipeline.decode import DecodeConfig, DecodeError
from pipeline.records import VideoInfo, VideoRef
from pipeline.stages.config import WorkerConfig


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
class VideoFailure:
    """A per-video failure, carried as data so the build goes on."""

    reason: str
    kind: str = failures.PERMANENT  # failures.TRANSIENT when retrying may help


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
        raise DecodeError(ref.uri, explain_probe_failure(ref.uri) or exc.reason, exc.kind) from exc
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
    return VideoPlan(
        info=info, total_frames=total, keep_frames=frozenset(c for c, _ in clips), keep_fields=fields, clips=clips
    )


def settle_plan(plan: VideoPlan, total: int, cfg: WorkerConfig) -> VideoPlan:
    """The plan for `total` frames actually decoded: `plan` itself when its count was right."""
    if plan.keep_frames is None or plan.total_frames == total:
        return plan
    return clips_plan(plan.info, total, cfg)


def clip_layout(plan: VideoPlan) -> tuple[frozenset[int], frozenset[int]]:
    """(kept frames, kept fields) of a clips-mode plan; ValueError for a dense plan, which keeps all."""
    if plan.keep_frames is None or plan.keep_fields is None:
        raise ValueError(f"a dense plan (keep_frames={plan.keep_frames}) has no clip layout")
    return plan.keep_frames, plan.keep_fields


def expected_frames(info: VideoInfo, cfg: DecodeConfig) -> int:
    """Frames the decode should give by the header (duration x rate), 0 when unknown."""
    rate = cfg.fps or info.fps
    return int(round(info.duration * rate)) if rate > 0 and info.duration > 0 else 0


def check_pixels(info: VideoInfo, cfg: WorkerConfig) -> None:
    """Refuse a video whose declared or stored frame size exceeds cfg.max_pixels, before decoding."""
    out_w, out_h = cfg.decode.output_size(info.width, info.height)
    for what, (w, h) in (("declared resolution", (info.width, info.height)), ("stored frame size", (out_w, out_h))):
        if w * h > cfg.max_pixels:
            raise ValueError(
                f"{what} {w}x{h} ({_pixels(w * h)}) exceeds the limit of "
                f"{_pixels(cfg.max_pixels)} (max_pixels); not decoded"
            )


def _pixels(n: int) -> str:
    return f"{n / 1e6:.1f} Mpx" if n >= 100_000 else f"{n} px"


# ffmpeg lines that say plainly why a file could not be opened, though its last lines may not.
_PROBE_CAUSES = (
    (
        re.compile(r"Picture size (\d+)x(\d+) is invalid"),
        "declared resolution {0}x{1} is invalid or too large to decode; not decoded",
    ),
    (
        re.compile(r"no decoder found for: ?(\S+)|Decoder \(codec (\S+)\) not found"),
        "unsupported codec {0}: this ffmpeg has no decoder for it",
    ),
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
        proc = subprocess.run(
            [decode.resolve_ffmpeg(), "-hide_banner", "-nostdin", *decode.guarded_input(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
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


def safe_plan(ref: VideoRef, cfg: WorkerConfig) -> VideoPlan | VideoFailure:
    """`plan_video`, with a per-video failure returned as data."""
    try:
        return plan_video(ref, cfg)
    except (DecodeError, ValueError, OSError) as exc:
        return VideoFailure(reason=failure_reason(ref, exc), kind=failures.kind_of(exc))


def failure_reason(ref: VideoRef, exc: Exception) -> str:
    """The failure's message, naming the video's source unless it already names the file."""
    text = str(exc)
    return text if ref.uri in text or ref.source in text else f"{ref.source}: {text}"
