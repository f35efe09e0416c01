"""Streaming video decode with ffmpeg-python: stream metadata, RGB frames with timestamps, chunks.

Everything comes from the ffmpeg binary itself (no ffprobe is needed):

- `probe` parses the stream banner that `ffmpeg -hide_banner -i FILE` prints.
- `iter_planes` pipes raw frames out of ffmpeg one at a time (never the whole video in memory)
  as full-range BT.601 YUV 4:2:0 planes, the colour space JPEG stores: the luma plane is what
  flow takes and the planes are JPEG-encoded as they are, so the build never converts a frame
  to RGB (half the bytes through the pipe, no colour conversion before or inside the encoder).
  Each frame's presentation time comes from a `showinfo` filter at the end of the filter
  chain, whose stderr lines a background thread parses while draining stderr.
- `iter_frames` is the same stream as RGB (exact-rounded, full-resolution chroma) for readers
  that want RGB; `planes_to_rgb` turns planes into RGB where an estimator needs it.
- `group_chunks` / `iter_chunks` group frames into chunks that own consecutive frames and carry
  the next few frames as look-ahead, the unit of flow compute.

Remote inputs (s3://, gs://, ... any fsspec URL) are downloaded whole to a local cache
first (`pipeline.storage.local_copy`, once per machine and object version) and decoded from
there, not streamed into ffmpeg's stdin: containers whose index sits at the end (an mp4 whose
moov atom follows the media data, as most cameras write it) cannot be read from a pipe, and a
probe followed by a decode, possibly in two processes, reads the object once.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
import queue
import re
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import ffmpeg
import numpy as np

from pipeline import failures, storage
from pipeline.records import FrameChunk, VideoInfo

log = logging.getLogger(__name__)

# swscale interpolation used for every resize: "area" averages source pixels when shrinking (the
# usual case: 320x240 -> short side 256 or smaller) without aliasing; accurate_rnd and
# full_chroma_int make the YUV -> RGB conversion exact-rounded and full-resolution in chroma.
SCALE_FLAGS = "area+accurate_rnd+full_chroma_int"
# The build's frames: YUV 4:2:0, full range, BT.601 matrix (JFIF's), whatever the source's matrix
# (swscale converts BT.709 and others). No RGB conversion happens, so the RGB-only flags above
# would only slow the scaler down (they doubled ffmpeg's CPU per frame).
PLANE_FLAGS = "area"
PLANE_FORMAT = {"pix_fmt": "yuv420p", "range": "full", "matrix": "bt601"}

# How long to wait for the timestamp of a frame that ffmpeg already wrote to stdout. showinfo
# logs a frame before the frame reaches the muxer, so the line is normally already there.
_PTS_WAIT_S = 30.0
_PROBE_TIMEOUT_S = 120  # reading a header is quick; a hang means a broken or blocking input

# Inputs are untrusted. A playlist (HLS), a concat list or a DASH manifest names other files or
# URLs for ffmpeg to open: a crafted one could make a worker fetch URLs or read local files
# outside INPUT into a dataset. So ffmpeg may open local files and pipes only, and only with
# demuxers of video containers (and still images) that read nothing but their own input.
PROTOCOLS = "file,pipe"
CONTAINERS = (
    "mov",
    "matroska",
    "avi",
    "flv",
    "asf",
    "mpeg",
    "mpegts",
    "mpegvideo",
    "m4v",
    "h264",
    "hevc",
    "ogg",
    "mxf",
    "nut",
    "dv",
    "yuv4mpegpipe",
    "mjpeg",
    "gif",
    "apng",
    "png_pipe",
    "jpeg_pipe",
    "bmp_pipe",
    "webp_pipe",
    "tiff_pipe",
)
INPUT_GUARDS = {"protocol_whitelist": PROTOCOLS, "format_whitelist": ",".join(CONTAINERS)}


def guarded_input(path: str) -> list[str]:
    """ffmpeg arguments that open `path` under INPUT_GUARDS."""
    return [arg for k, v in INPUT_GUARDS.items() for arg in (f"-{k}", v)] + ["-i", path]


@functools.lru_cache(maxsize=1)
def resolve_ffmpeg() -> str:
    """The ffmpeg binary: from PATH, else the one imageio-ffmpeg ships."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def ffmpeg_version(exe: str | None = None) -> tuple[int, int]:
    """(major, minor) of the ffmpeg binary; (99, 0) for git builds ("N-12345-g...") and unknowns.

    Decides between -fps_mode (ffmpeg >= 5.1) and the older -vsync spelling.
    """
    out = subprocess.run(
        [exe or resolve_ffmpeg(), "-hide_banner", "-version"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    ).stdout.decode("utf-8", errors="replace")
    m = re.search(r"ffmpeg version n?(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (99, 0)


class DecodeError(Exception):
    """A video could not be probed or decoded; the message names the file and the reason.

    kind: `failures.PERMANENT` (the file itself) unless the raiser knows better (a storage
    error while fetching, ffmpeg killed by a signal). Every argument is in `args`, so the
    error pickles intact (Ray moves it between processes).
    """

    def __init__(self, uri: str, reason: str, kind: str = failures.PERMANENT) -> None:
        super().__init__(uri, reason, kind)
        self.uri, self.reason, self.kind = uri, reason, kind

    def __str__(self) -> str:
        return f"{self.uri}: {self.reason}"


# --------------------------------------------------------------------------- config


def _even(num: int, den: int = 1) -> int:
    """The even integer nearest num/den (halves round up), never below 2: planes stay whole.

    Exact integer arithmetic, so e.g. 47 * 31 / 47 is exactly 31 (floats can land on 30.99...).
    """
    return max(2, 2 * ((num + den) // (2 * den)))


def _parse_resize(resize: str) -> tuple[str, int, int]:
    """("none", 0, 0) | ("short", N, 0) | ("fixed", W, H); ValueError naming a bad spec."""
    text = resize.strip().lower()
    if text == "none":
        return "none", 0, 0
    m = re.fullmatch(r"short:(\d+)", text)
    if m and int(m.group(1)) >= 2:
        return "short", int(m.group(1)), 0
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if m and int(m.group(1)) >= 2 and int(m.group(2)) >= 2:
        return "fixed", int(m.group(1)), int(m.group(2))
    raise ValueError(f"resize={resize!r} is not 'short:N', 'WxH' or 'none' (sizes >= 2)")


@dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    """How frames are decoded.

    resize: "short:N" (shorter side to N, aspect kept), "WxH" (e.g. "340x256") or "none".
    fps: resample to this rate with ffmpeg's fps filter; None keeps every decoded frame.
    threads: decoder threads per ffmpeg process (set it when many decoders share the cores).
    Output sizes are always rounded to even numbers (see `output_size`).
    """

    resize: str = "short:256"
    fps: float | None = None
    threads: int = 0  # ffmpeg decoder threads; 0 lets ffmpeg choose (all cores). Output is unaffected.

    def __post_init__(self) -> None:
        if not isinstance(self.resize, str):
            raise ValueError(f"resize={self.resize!r} must be a string")
        _parse_resize(self.resize)
        if self.fps is not None:
            if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)):
                raise ValueError(f"fps={self.fps!r} must be a number or None")
            if not math.isfinite(self.fps) or self.fps <= 0:
                raise ValueError(f"fps={self.fps!r} must be a positive finite number or None")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads={self.threads!r} must be an integer >= 0")

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """Stored (W, H) for a display size (width, height), both even and >= 2."""
        if width < 1 or height < 1:
            raise ValueError(f"video size {width}x{height} must be positive")
        kind, a, b = _parse_resize(self.resize)
        if kind == "fixed":
            return _even(a), _even(b)
        if kind == "none":
            return _even(width), _even(height)
        short = min(width, height)
        return _even(width * a, short), _even(height * a, short)

    def output_dict(self) -> dict:
        """The settings that change the decoded output (for content hashes and versions).

        `threads` is left out: it changes speed, not the frames.
        """
        return {
            "resize": self.resize.strip().lower(),
            "fps": None if self.fps is None else float(self.fps),
            "scale_flags": PLANE_FLAGS,
            **PLANE_FORMAT,
        }


# --------------------------------------------------------------------------- uris


def local_path(uri: str) -> str:
    """The absolute local path of a local path or file:// URI.

    Absolute paths keep ffmpeg from reading a name such as "a:b.mp4" as protocol "a".
    Other URIs raise DecodeError: they have no local path (`_check_file` fetches them).
    """
    if uri.startswith("file://"):
        parsed = urllib.parse.urlparse(uri)
        return os.path.abspath(urllib.parse.unquote(parsed.path))
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme:
        raise DecodeError(uri, f"URI scheme {scheme!r} names no local file")
    return os.path.abspath(uri)


def _check_file(uri: str) -> str:
    """The local path of `uri` (a local copy for a remote object), or DecodeError for a missing,
    non-regular or empty file."""
    if storage.is_remote(uri):
        return _fetch(uri)
    path = local_path(uri)
    if not os.path.exists(path):
        raise DecodeError(uri, "file not found")
    if not os.path.isfile(path):
        raise DecodeError(uri, "not a regular file")
    if os.path.getsize(path) == 0:
        raise DecodeError(uri, "empty file (0 bytes)")
    return path


def _fetch(uri: str) -> str:
    """A local copy of a remote object (see the module docstring), or DecodeError with the reason."""
    from fsspec.registry import known_implementations, registry

    scheme = storage.scheme(uri)
    if scheme not in known_implementations and scheme not in registry:
        raise DecodeError(uri, f"unknown URI scheme {scheme!r}")
    try:
        st = storage.stat(uri)
        if st is None:
            raise DecodeError(uri, "file not found")
        if not st.is_file:
            raise DecodeError(uri, "not a regular file")
        if st.size == 0:
            raise DecodeError(uri, "empty file (0 bytes)")
        return storage.local_copy(uri, st)
    except (OSError, ValueError) as exc:
        raise DecodeError(uri, f"cannot read it ({exc})", failures.kind_of(exc)) from exc


# --------------------------------------------------------------------------- probe

_STREAM_RE = re.compile(r"^(\s*)Stream #\d+:(\d+)\S*: (\w+): (.*)$")
_SIZE_RE = re.compile(r"(?:^|[ ,])(\d+)x(\d+)(?=[ ,]|$)")
_SAR_RE = re.compile(r"\[SAR (\d+):(\d+) DAR \d+:\d+\]")
_FPS_RE = re.compile(r"([\d.]+)(k?) fps")
_TBR_RE = re.compile(r"([\d.]+)(k?) tbr")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_MATRIX_RE = re.compile(r"display ?matrix: rotation of (-?[\d.]+) degrees", re.IGNORECASE)
_ROTATE_TAG_RE = re.compile(r"^\s*rotate\s*:\s*(-?\d+(?:\.\d+)?)\s*$")


def _stream_blocks(text: str) -> list[tuple[int, str, str, list[str]]]:
    """(index, kind, stream line tail, indented lines below it) for each stream of input #0."""
    blocks: list[tuple[int, str, str, list[str]]] = []
    indent = None
    for line in text.splitlines():
        m = _STREAM_RE.match(line)
        if m:
            indent = len(m.group(1))
            blocks.append((int(m.group(2)), m.group(3), m.group(4), []))
        elif indent is not None and len(line) - len(line.lstrip()) > indent:
            blocks[-1][3].append(line)
        else:
            indent = None  # a less indented line ends the stream's metadata / side data
    return blocks


def _rate(match: re.Match | None) -> float:
    if not match:
        return 0.0
    return float(match.group(1)) * (1000.0 if match.group(2) else 1.0)


def _rotation(detail: list[str]) -> int:
    """Rotation in degrees as ffmpeg reports it (display matrix, else the legacy rotate tag)."""
    for line in detail:
        m = _MATRIX_RE.search(line)
        if m:
            return int(round(float(m.group(1))))
    for line in detail:
        m = _ROTATE_TAG_RE.match(line)
        if m:
            return int(round(float(m.group(1))))
    return 0


def _video_info(index: int, tail: str, detail: list[str], duration: float) -> VideoInfo | None:
    """VideoInfo from one "Video:" stream line, or None when it has no size."""
    size = _SIZE_RE.search(tail)
    if not size or int(size.group(1)) < 1 or int(size.group(2)) < 1:
        return None
    width, height = int(size.group(1)), int(size.group(2))
    sar = _SAR_RE.search(tail)
    if sar and int(sar.group(1)) > 0 and int(sar.group(2)) > 0 and sar.group(1) != sar.group(2):
        # Non-square pixels: ffmpeg's convention keeps the height and stretches the width.
        width = max(1, int(round(width * int(sar.group(1)) / int(sar.group(2)))))
    rotation = _rotation(detail)
    if abs(rotation) % 180 == 90:
        width, height = height, width
    fps = _rate(_FPS_RE.search(tail)) or _rate(_TBR_RE.search(tail))
    return VideoInfo(
        width=width,
        height=height,
        fps=fps,
        duration=duration,
        stream_index=index,
        codec=tail.split(maxsplit=1)[0].rstrip(","),
        rotation=rotation,
    )


def parse_banner(uri: str, text: str) -> VideoInfo:
    """VideoInfo of the first real video stream (cover art skipped) from ffmpeg's input banner."""
    if "Invalid data found when processing input" in text:
        raise DecodeError(uri, "not a media file (Invalid data found when processing input)")
    if "Format not on whitelist" in text:
        raise DecodeError(
            uri,
            "container not allowed: a playlist or list that names other files or URLs "
            "(HLS, concat, DASH), or a format that is no video container; not opened",
        )
    if "Input #0" not in text:
        raise DecodeError(uri, f"ffmpeg could not open it: {_meaningful_lines(text.splitlines()) or 'no output'}")
    dur = _DURATION_RE.search(text)
    duration = int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3)) if dur else 0.0
    blocks = _stream_blocks(text)
    for index, kind, tail, detail in blocks:
        if kind != "Video" or "(attached pic)" in tail:
            continue
        info = _video_info(index, tail, detail, duration)
        if info is None:
            raise DecodeError(uri, f"unparsable video stream line: {tail.strip()!r}")
        return info
    if not blocks:
        raise DecodeError(uri, "no streams found (unparsable ffmpeg output)")
    raise DecodeError(uri, "no video stream")


def probe(uri: str) -> VideoInfo:
    """Stream metadata of the first real video stream of a local file, read from ffmpeg's banner."""
    path = _check_file(uri)
    # ffmpeg without an output exits 1 ("At least one output file must be specified"): expected.
    try:
        proc = subprocess.run(
            [resolve_ffmpeg(), "-hide_banner", "-nostdin", *guarded_input(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        # A header is read in well under a second: a hang is a machine or storage under strain
        # as often as a bad file, so it is worth another try (and --retry-errors).
        raise DecodeError(
            uri, f"ffmpeg did not read the header within {_PROBE_TIMEOUT_S} s", failures.TRANSIENT
        ) from exc
    text = proc.stderr.decode("utf-8", errors="replace")
    # A remote input's banner names its local copy: name the object instead in messages.
    return parse_banner(uri, text.replace(path, uri) if storage.is_remote(uri) else text)


# --------------------------------------------------------------------------- frames

_SHOWINFO_RE = re.compile(r"\bn:\s*(\d+)\s+pts:\s*(\S+)\s+pts_time:\s*(\S+)")
_LEVEL_RE = re.compile(r"\[(panic|fatal|error|warning)\]")


_ADDRESS_RE = re.compile(r"\s@\s0x[0-9a-fA-F]+(?=\])")
# Lines that name a cause; "Error opening input..." only says that opening failed.
_CAUSE_RE = re.compile(
    r"error|invalid|not supported|unsupported|not found|no such|could not|cannot|unable|"
    r"failed|unknown|denied|too large|corrupt|missing|not implemented",
    re.IGNORECASE,
)
_GENERIC_RE = re.compile(r"^(\[[^]]*\]\s*)?Error opening (input|output)( files?)?\b", re.IGNORECASE)


def _clean(line: str) -> str:
    """A stderr line without the object address ffmpeg puts in its prefix ("[in#0 @ 0x55d...]"),
    which differs on every run and would make error rows differ between identical builds."""
    return _ADDRESS_RE.sub("", line.strip())


def _last_lines(lines, n: int = 3) -> str:
    """The last few non-empty lines, joined, for error messages."""
    kept = [_clean(ln) for ln in lines if ln.strip()]
    return " | ".join(kept[-n:])


def _meaningful_lines(lines, n: int = 3) -> str:
    """The lines that say why ffmpeg failed, joined: those naming a cause (e.g. "Picture size
    30000x30000 is invalid", often far above the last lines), then the last generic error
    line; the last lines when none names anything."""
    kept = [_clean(ln) for ln in lines if ln.strip()]
    causes = [ln for ln in kept if _CAUSE_RE.search(ln)]
    specific = [ln for ln in causes if not _GENERIC_RE.search(ln)]
    generic = [ln for ln in causes if _GENERIC_RE.search(ln)]
    chosen = list(dict.fromkeys(specific[: n - 1] + generic[-1:] if specific else causes[-n:]))
    return " | ".join(chosen) if chosen else _last_lines(kept, n)


@functools.lru_cache(maxsize=1)
def showinfo_has_checksum() -> bool:
    """Whether this ffmpeg's showinfo filter takes `checksum` (newer builds; older always sum)."""
    proc = subprocess.run(
        [resolve_ffmpeg(), "-hide_banner", "-h", "filter=showinfo"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )  # the help text decides, whatever the exit status
    return "checksum" in proc.stdout + proc.stderr


def build_command(source: str, size: tuple[int, int], cfg: DecodeConfig, pix_fmt: str = "rgb24"):
    """The ffmpeg-python output node that decodes `source` to raw frames of `size` on stdout:
    RGB24, or with pix_fmt="yuv420p" the planes `iter_planes` reads (PLANE_FORMAT).

    `.compile(cmd=resolve_ffmpeg())` gives the argv (no shell is ever involved).

    `source` is a local path today; "pipe:0" (a byte stream on stdin) later for remote input.
    The first real video stream is mapped explicitly (0:V:0 skips cover art, audio may come
    first); audio, subtitles and data are dropped because only that stream is mapped.
    ffmpeg's default autorotation stays on, so frames come out upright in probe's size.
    """
    stream = ffmpeg.input(source, **INPUT_GUARDS, **({"threads": cfg.threads} if cfg.threads else {}))["V:0"]
    if cfg.fps is not None:
        stream = stream.filter("fps", fps=cfg.fps)
    width, height = size
    if pix_fmt == PLANE_FORMAT["pix_fmt"]:
        stream = stream.filter(
            "scale",
            width,
            height,
            flags=PLANE_FLAGS,
            out_range=PLANE_FORMAT["range"],
            out_color_matrix=PLANE_FORMAT["matrix"],
        )
    elif pix_fmt == "rgb24":
        stream = stream.filter("scale", width, height, flags=SCALE_FLAGS)
    else:
        raise ValueError(f"pix_fmt={pix_fmt!r}: rgb24 or {PLANE_FORMAT['pix_fmt']}")
    # showinfo last: one log line per frame actually sent to the output, in output order.
    # Its per-plane checksums cost CPU on every frame and are never read: off where supported.
    stream = stream.filter("showinfo", **({"checksum": 0} if showinfo_has_checksum() else {}))
    # passthrough: with no fps filter, variable-rate frames are neither duplicated nor dropped;
    # after the fps filter the rate is already constant, so passthrough changes nothing.
    timing = {"fps_mode": "passthrough"} if ffmpeg_version() >= (5, 1) else {"vsync": "0"}
    out = stream.output("pipe:", format="rawvideo", pix_fmt=pix_fmt, **timing)
    # level+info tags every line with its level (errors are easy to pick) and keeps showinfo's
    # info-level lines; -nostats avoids carriage-return progress lines on stderr.
    return out.global_args("-nostdin", "-nostats", "-hide_banner", "-loglevel", "level+info")


class _StderrReader(threading.Thread):
    """Drains ffmpeg's stderr (or ffmpeg blocks) and queues each showinfo pts_time in order."""

    def __init__(self, pipe) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.pts: queue.Queue = queue.Queue()
        self.errors: collections.deque[str] = collections.deque(maxlen=8)
        self.other: collections.deque[str] = collections.deque(maxlen=8)

    def run(self) -> None:
        try:
            for raw in iter(self.pipe.readline, b""):
                self._line(raw.decode("utf-8", errors="replace").rstrip())
        finally:
            self.pts.put(None)  # end of stderr: no more timestamps will come

    def _line(self, line: str) -> None:
        if "Parsed_showinfo" in line:
            m = _SHOWINFO_RE.search(line)
            if m:
                self.pts.put((int(m.group(1)), m.group(3)))
            return
        if _LEVEL_RE.search(line):
            self.errors.append(line)
        elif line.strip():
            self.other.append(line)

    def message(self) -> str:
        """The meaningful stderr lines: error/warning lines if any, else the lines naming a cause."""
        return _last_lines(self.errors) or _meaningful_lines(self.other) or "no error output"


def _next_pts(reader: _StderrReader, index: int, fallback_fps: float) -> float:
    """Frame `index`'s timestamp: the index-th showinfo pts_time ffmpeg logged."""
    try:
        item = reader.pts.get(timeout=_PTS_WAIT_S)
    except queue.Empty:
        item = None
    if item is None:
        raise RuntimeError(f"no showinfo timestamp for frame {index}")
    number, value = item
    if number != index:  # showinfo numbers its frames: a mismatch means frames and times diverged
        raise RuntimeError(f"frame {index} got the timestamp of showinfo frame {number}")
    try:
        return float(value)
    except ValueError:
        # "NOPTS": the frame has no timestamp at all; place it on the nominal grid.
        log.warning("frame %d has no timestamp (%s); using index / fps", index, value)
        return index / fallback_fps if fallback_fps > 0 else float(index)


def _read_exact(pipe, size: int, uri: str) -> bytearray | None:
    """Exactly `size` bytes from `pipe` (a writable buffer), or None at end of stream.

    A partial trailing frame (ffmpeg stopped mid-frame) is dropped with a warning.
    """
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = pipe.readinto(view[got:])
        if not n:
            break
        got += n
    if got == size:
        return buf
    if got:
        log.warning("%s: dropped a partial trailing frame (%d of %d bytes)", uri, got, size)
    return None


def _reap(proc: subprocess.Popen, reader: _StderrReader) -> int:
    """Stop ffmpeg if it is still running, close its pipes and wait for it (no zombies)."""
    if proc.poll() is None:
        proc.kill()
    if proc.stdout is not None:
        proc.stdout.close()
    code = proc.wait()
    reader.join(timeout=10)
    if proc.stderr is not None:
        proc.stderr.close()
    return code


def iter_frames(uri: str, cfg: DecodeConfig, info: VideoInfo | None = None) -> Iterator[tuple[np.ndarray, float]]:
    """Yield (frame, pts seconds) for each decoded frame: (H, W, 3) uint8 RGB, streamed.

    Size is `cfg.output_size(info.width, info.height)`; `info` is probed when not given.
    Raises DecodeError naming the file when ffmpeg fails or yields no frame. Closing the
    generator early kills and reaps ffmpeg.
    """
    yield from _iter_raw(uri, cfg, info, "rgb24")


def iter_planes(uri: str, cfg: DecodeConfig, info: VideoInfo | None = None) -> Iterator[tuple[np.ndarray, float]]:
    """Like `iter_frames`, but each frame is its YUV 4:2:0 planes (PLANE_FORMAT) in one
    (3H/2, W) uint8 array, I420 layout: `split_planes` gives the Y, U and V views."""
    yield from _iter_raw(uri, cfg, info, PLANE_FORMAT["pix_fmt"])


def split_planes(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views (Y (H, W), U (H/2, W/2), V (H/2, W/2)) of an I420 frame from `iter_planes`."""
    h, w = frame.shape[0] * 2 // 3, frame.shape[1]
    chroma = frame[h:].reshape(2, h // 2, w // 2)
    return frame[:h], chroma[0], chroma[1]


def planes_to_rgb(frame: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) uint8 of an I420 frame from `iter_planes` (JFIF's full-range BT.601, chroma
    upsampled bilinearly), for estimators that take colour."""
    y, u, v = split_planes(frame)
    size = (y.shape[1], y.shape[0])
    up = [cv2.resize(c, size, interpolation=cv2.INTER_LINEAR) for c in (v, u)]
    return cv2.cvtColor(cv2.merge([y, *up]), cv2.COLOR_YCrCb2RGB)


def _iter_raw(uri: str, cfg: DecodeConfig, info: VideoInfo | None, pix_fmt: str) -> Iterator[tuple[np.ndarray, float]]:
    path = _check_file(uri)
    info = info or probe(uri)
    width, height = cfg.output_size(info.width, info.height)
    shape = (height, width, 3) if pix_fmt == "rgb24" else (height * 3 // 2, width)
    frame_bytes = width * height * 3 if pix_fmt == "rgb24" else width * height * 3 // 2
    node = build_command(path, (width, height), cfg, pix_fmt)
    proc = node.run_async(cmd=resolve_ffmpeg(), pipe_stdout=True, pipe_stderr=True)
    reader = _StderrReader(proc.stderr)
    reader.start()
    count, finished = 0, False
    try:
        while True:
            buf = _read_exact(proc.stdout, frame_bytes, uri)
            if buf is None:
                break
            frame = np.frombuffer(buf, np.uint8).reshape(shape)
            pts = _next_pts(reader, count, cfg.fps or info.fps)
            count += 1
            yield frame, pts
        finished = True
    except RuntimeError as exc:
        raise DecodeError(uri, f"{exc}; ffmpeg said: {reader.message()}") from exc
    finally:
        code = _reap(proc, reader)
    if finished and code != 0:
        # SIGKILL (-9) comes from the kernel's or Ray's out-of-memory killer, never from the input.
        kind = failures.TRANSIENT if code == -9 else failures.PERMANENT
        raise DecodeError(uri, f"ffmpeg exited with code {code} after {count} frames: {reader.message()}", kind)
    if finished and count == 0:
        raise DecodeError(uri, f"no frames decoded: {reader.message()}")


# --------------------------------------------------------------------------- chunks


def group_chunks(rows: Iterator, *, chunk_frames: int, overlap: int) -> Iterator[tuple[int, int, int, list, bool]]:
    """Group a stream of per-frame rows into chunks: (index, start, owned, rows, last).

    Every chunk but the last owns exactly `chunk_frames` frames; the last owns the rest
    (1..chunk_frames) with no look-ahead and has last=True. A non-last chunk carries `overlap`
    look-ahead rows (the next chunk's first frames), or fewer when the video ends inside them.
    At most chunk_frames + overlap + 1 rows are held (one extra to know whether more follow).
    """
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ValueError(f"chunk_frames={chunk_frames!r} must be an integer >= 1")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"overlap={overlap!r} must be an integer >= 0")
    window = chunk_frames + overlap
    buf: collections.deque = collections.deque()
    index = start = 0
    for row in rows:
        buf.append(row)
        if len(buf) > window:  # a frame beyond the window exists, so this chunk is not the last
            yield index, start, chunk_frames, list(buf)[:window], False
            for _ in range(chunk_frames):
                buf.popleft()
            index, start = index + 1, start + chunk_frames
    while len(buf) > chunk_frames:  # the video ended inside the look-ahead: shorter look-ahead
        yield index, start, chunk_frames, list(buf), False
        for _ in range(chunk_frames):
            buf.popleft()
        index, start = index + 1, start + chunk_frames
    if buf:
        yield index, start, len(buf), list(buf), True


def iter_chunks(
    key: str, uri: str, cfg: DecodeConfig, *, chunk_frames: int, overlap: int, info: VideoInfo | None = None
) -> Iterator[FrameChunk]:
    """Yield RGB FrameChunks that own `chunk_frames` consecutive frames plus `overlap` look-ahead
    frames (see `group_chunks`)."""
    groups = group_chunks(iter_frames(uri, cfg, info), chunk_frames=chunk_frames, overlap=overlap)
    for index, start, owned, rows, last in groups:
        yield FrameChunk(
            video_key=key,
            index=index,
            start=start,
            owned=owned,
            frames=np.stack([f for f, _ in rows]),
            pts=tuple(float(p) for _, p in rows),
            last=last,
        )
