"""Frozen records passed between pipeline stages.

Each stage takes and returns these plain values, so stages are testable without Ray
and the Ray layer only moves them around.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "test", "val")


@dataclass(frozen=True)
class VideoRef:
    """One input video: where it is and what it is labelled.

    key: the sample key (only [A-Za-z0-9_-]), unique in the dataset, derived from `source`.
    uri: absolute local path or URL the worker opens.
    source: path relative to the INPUT root (what users recognise).
    """

    key: str
    uri: str
    source: str
    label: str
    label_id: int
    split: str = "train"
    boxes: VideoBoxes | None = None  # per-frame action boxes (`build --boxes`), None when unannotated


@dataclass(frozen=True)
class VideoInfo:
    """Stream metadata read from ffmpeg itself (no ffprobe needed)."""

    width: int  # as displayed (after rotation and sample aspect ratio)
    height: int
    fps: float  # nominal frame rate of the stream (0.0 when unknown)
    duration: float  # seconds (0.0 when unknown)
    stream_index: int  # absolute index of the video stream in the container
    codec: str = ""
    rotation: int = 0  # degrees, as ffmpeg reports the display matrix

    @property
    def est_frames(self) -> int:
        """Frame count estimated from duration and rate (a file may decode fewer)."""
        return int(round(self.duration * self.fps)) if self.fps > 0 else 0


@dataclass(frozen=True)
class FrameChunk:
    """Consecutive decoded frames of one video, the unit of flow compute.

    `frames[:owned]` are the frames this chunk owns (global indices start..start+owned-1);
    the frames after them are look-ahead copies of the next chunk's first frames, so flow
    pairs (t, t+step) that start in this chunk can be computed here.
    """

    video_key: str
    index: int  # chunk number within the video, 0-based
    start: int  # global index of frames[0]
    owned: int
    frames: np.ndarray  # (n, H, W, 3) uint8 RGB, n >= owned
    pts: tuple[float, ...]  # seconds, one per row of `frames`
    last: bool  # True for the video's final chunk


@dataclass(frozen=True)
class EncodedChunk:
    """The encoded output of one FrameChunk: JPEG frames and quantized, encoded flow fields."""

    video_key: str
    index: int
    start: int
    owned: int  # frames the source chunk owned (kept or not), so coverage can be checked
    frame_bytes: tuple[bytes, ...]  # one per kept frame
    frame_index: tuple[int, ...]  # global index of each kept frame
    frame_pts: tuple[float, ...]
    flow_bytes: tuple[bytes, ...]  # one per kept flow field
    flow_pairs: tuple[tuple[int, int], ...]  # (from, to) global frame indices per field
    size: tuple[int, int]  # (width, height) of the stored frames
    last: bool
    warped_bytes: tuple[bytes, ...] = ()  # with --flow-warp: one warped field per flow field
    cameras: tuple[dict, ...] = ()  # with --flow-warp: each field's camera motion (warp.CameraMotion.as_meta)


@dataclass(frozen=True)
class VideoResult:
    """The outcome for one input video: its samples' members, or the reason it failed."""

    ref: VideoRef
    status: str  # "ok" | "error"
    error: str = ""
    error_kind: str = ""  # "transient" | "permanent" for an error (see pipeline.failures)
    samples: Iterable[dict] = ()  # webdataset sample dicts ("__key__" + member bytes); stream_video's are a generator
    frames: int = 0
    flow_fields: int = 0
    info: VideoInfo | None = None
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Track:
    """One annotated actor of a video: its label and a box in each annotated source frame.

    frames are 0-based indices of the video's frames as decoded at the source rate;
    boxes are (x1, y1, x2, y2) in pixels of the source frame as displayed, (x1, y1) the
    top-left corner and (x2, y2) the bottom-right one (a box over pixel columns 0..9 has
    x1 = 0, x2 = 10).
    """

    track: int
    label: str
    label_id: int
    frames: tuple[int, ...]
    boxes: tuple[tuple[float, float, float, float], ...]


@dataclass(frozen=True)
class VideoBoxes:
    """A video's annotations as imported (pipeline.boxes): its tracks and where they came from.

    file, format: the annotation file and its format; labels: the file's label names (a
    track's label_id indexes them); size: the (width, height) the file says the video's
    frames have, None when it says nothing; tolerance: pixels a box may stick out of the
    frame before it is an error (such boxes are clipped to the frame).
    """

    file: str
    format: str
    video: str
    tracks: tuple[Track, ...]
    labels: tuple[str, ...] = ()
    size: tuple[int, int] | None = None
    tolerance: float = 1.0
