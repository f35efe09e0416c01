"""Synthetic videos with known motion: the demo's sample data and the tests' ground truth.

A smooth random texture, or a photograph shipped with the package (`texture="photo"`, what
the demo uses), is warped a known amount per frame (translation, zoom, rotation), so the
true flow between frames t and t+1 is known everywhere away from the borders.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import IO, cast

import cv2
import numpy as np

log = logging.getLogger(__name__)

MOTIONS = ("left", "right", "up", "down", "zoom", "rotate", "still")
TEXTURES = ("noise", "photo")
_SHIFT = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0), "still": (0.0, 0.0)}


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A colourful multi-scale noise texture (uint8 RGB) with detail at every scale TV-L1 uses."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    for cell, weight in ((4, 0.45), (8, 0.3), (16, 0.15), (32, 0.1)):
        small = rng.random((max(2, height // cell + 2), max(2, width // cell + 2), 3)).astype(np.float32)
        img += weight * cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    img = (img - img.min()) / max(1e-6, float(img.max() - img.min()))
    return (img * 255).round().astype(np.uint8)


def backdrop(height: int, width: int, seed: int, source: str) -> np.ndarray:
    """The uint8 RGB image the camera looks at: a noise texture or a shipped photograph."""
    if source == "noise":
        return texture(height, width, seed)
    if source == "photo":
        from pipeline.synthetic.photos import photo_texture

        return np.clip(np.rint(photo_texture(height, width, seed, gray=False)), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown texture source {source!r}; choose one of {TEXTURES}")


def warp_matrix(motion: str, t: float, speed: float, width: int, height: int) -> np.ndarray:
    """2x3 affine mapping texture coordinates to frame t's coordinates."""
    if motion in _SHIFT:
        dx, dy = _SHIFT[motion]
        return np.array([[1, 0, dx * speed * t], [0, 1, dy * speed * t]], np.float64)
    centre = (width / 2.0, height / 2.0)
    if motion == "zoom":  # speed is the relative scale change per frame, e.g. 0.01
        return cv2.getRotationMatrix2D(centre, 0.0, (1.0 + speed) ** t)
    if motion == "rotate":  # speed in degrees per frame, counter-clockwise on screen
        return cv2.getRotationMatrix2D(centre, speed * t, 1.0)
    raise ValueError(f"unknown motion {motion!r}; choose one of {MOTIONS}")


def moving_frames(
    motion: str,
    num_frames: int,
    height: int,
    width: int,
    *,
    speed: float = 2.0,
    seed: int = 0,
    margin: int = 64,
    source: str = "noise",
) -> Iterator[np.ndarray]:
    """Yield `num_frames` RGB frames of a texture moving with `motion` at `speed` per frame.

    source: "noise" (a random multi-scale texture) or "photo" (photograph number `seed`).
    """
    big = backdrop(height + 2 * margin, width + 2 * margin, seed, source)
    for t in range(num_frames):
        m = warp_matrix(motion, t, speed, width + 2 * margin, height + 2 * margin)
        frame = cv2.warpAffine(
            big, m, (width + 2 * margin, height + 2 * margin), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_WRAP
        )
        yield frame[margin : margin + height, margin : margin + width]


def true_flow(motion: str, speed: float, height: int, width: int, margin: int = 64) -> np.ndarray:
    """The ground-truth flow (H, W, 2) from any frame t to t+1 of `moving_frames`."""
    if motion in _SHIFT:
        dx, dy = _SHIFT[motion]
        return np.broadcast_to(np.array([dx * speed, dy * speed], np.float32), (height, width, 2)).copy()
    m = warp_matrix(motion, 1.0, speed, width + 2 * margin, height + 2 * margin)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xs, ys = xs + margin, ys + margin
    # One frame step applies the same affine map (zoom and rotation about the centre compose).
    nx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    ny = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    return np.stack([nx - xs, ny - ys], axis=-1).astype(np.float32)


def ffmpeg_exe() -> str:
    """The ffmpeg binary: from PATH, else the one imageio-ffmpeg ships."""
    from pipeline.decode import resolve_ffmpeg

    return resolve_ffmpeg()


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    quality: str = "17",
    extra_args: tuple[str, ...] = (),
) -> Path:
    """Encode RGB frames to a video file with ffmpeg (no shell; the file name is one argv item)."""
    path = Path(path)
    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    qflag = {
        "libx264": ["-crf", quality],
        "mpeg4": ["-q:v", "2"],
        "mjpeg": ["-q:v", "2"],
        "libvpx": ["-b:v", "2M"],
        "ffv1": [],
        "png": [],
    }.get(codec, [])
    cmd = [
        ffmpeg_exe(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{w}x{h}",
        "-r",
        str(fps),
        "-i",
        "pipe:0",
        "-c:v",
        codec,
        *qflag,
        "-pix_fmt",
        pix_fmt,
        *extra_args,
        str(path),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    stdin, stderr = cast(IO[bytes], proc.stdin), cast(IO[bytes], proc.stderr)  # both PIPE: never None
    try:
        stdin.write(np.ascontiguousarray(first).tobytes())
        for frame in frames:
            stdin.write(np.ascontiguousarray(frame).tobytes())
        stdin.close()
    except BrokenPipeError:
        pass
    with stderr:  # closed here rather than by the garbage collector (a ResourceWarning)
        err = stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg could not write {path}: {err.strip()}")
    return path


def make_motion_dataset(
    root: str | Path,
    *,
    classes: tuple[str, ...] = ("left", "right", "up", "down"),
    per_class: int = 3,
    num_frames: int = 24,
    size: tuple[int, int] = (96, 72),
    speed: float = 2.0,
    fps: float = 25.0,
    seed: int = 0,
    source: str = "noise",
) -> Path:
    """Write a folder-per-class dataset whose classes differ only by motion (same textures in each).

    source: "noise" textures or shipped "photo"graphs (see `moving_frames`).
    """
    root = Path(root)
    w, h = size
    for motion in classes:
        (root / motion).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            # The same texture seeds in every class: appearance carries no label information.
            frames = moving_frames(motion, num_frames, h, w, speed=speed, seed=seed + i, source=source)
            write_video(root / motion / f"v_{motion}_g{i:02d}.mp4", frames, fps)
    log.info("wrote %d synthetic videos under %s", len(classes) * per_class, root)
    return root


def write_split_list(root: str | Path, videos: str | Path, test_from: int) -> Path:
    """root/list.csv (path,label,split; paths relative to root) of the folder-per-class videos
    under `videos`, named ..._gNN.mp4 as the generators here write them: draw NN >= test_from
    is a test video, the others train videos (so test videos use textures training never saw)."""
    import csv

    root = Path(root)
    path = root / "list.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for p in sorted(Path(videos).rglob("*.mp4")):
            w.writerow(
                [p.relative_to(root).as_posix(), p.parent.name, "test" if int(p.stem[-2:]) >= test_from else "train"]
            )
    return path


def _run_ffmpeg(args: list[str], path: Path) -> Path:
    """Run ffmpeg with an argv list (no shell) and raise naming `path` when it fails."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not write {path}: {proc.stderr.decode(errors='replace').strip()}")
    return path


def write_vfr_video(
    path: str | Path, frames: Iterable[np.ndarray], times: list[float], *, codec: str = "libx264"
) -> Path:
    """Encode frames shown at the given times (seconds, increasing, millisecond grid): variable rate.

    Use a container with millisecond timestamps such as .mkv; each frame keeps its own time.
    """
    if any(b <= a for a, b in pairwise(times)):
        raise ValueError(f"times={times!r} must be strictly increasing")
    # setpts picks frame N's time from a nested if(); settb first so times are not rounded to 1/fps.
    expr = "0"
    for n in range(len(times) - 1, -1, -1):
        expr = f"if(eq(N,{n}),{times[n]:.3f},{expr})"
    vf = f"settb=1/1000,setpts='({expr})/TB'"  # quoted: the expression holds commas
    return write_video(
        path, frames, 25.0, codec=codec, extra_args=("-vf", vf, "-fps_mode", "passthrough", "-enc_time_base", "1:1000")
    )


def write_audio_first(path: str | Path, video: str | Path) -> Path:
    """Copy `video` into `path` with a silent audio track as stream 0 and the video as stream 1."""
    path = Path(path)
    return _run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=8000:cl=mono",
            "-i",
            str(video),
            "-map",
            "0:a",
            "-map",
            "1:v",
            "-c:v",
            "copy",
            "-c:a",
            "aac",
            "-shortest",
            str(path),
        ],
        path,
    )


def write_audio_only(path: str | Path, seconds: float = 0.5) -> Path:
    """A file with a silent audio track and no video stream (e.g. .m4a or .mp4)."""
    path = Path(path)
    return _run_ffmpeg(
        ["-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", f"{seconds}", "-c:a", "aac", str(path)], path
    )


def write_rotated(path: str | Path, video: str | Path, degrees: float = 90.0) -> Path:
    """Copy `video` into `path` (same codec data) with display-rotation metadata, counter-clockwise."""
    path = Path(path)
    return _run_ffmpeg(["-display_rotation", f"{degrees}", "-i", str(video), "-c", "copy", str(path)], path)


# --- broken and hostile files (for tests of error rows and input safety) ------------------------


def write_declared_size(path: str | Path, width: int, height: int) -> Path:
    """A tiny YUV4MPEG2 file (any extension) whose header declares width x height frames.

    A few hundred bytes that claim gigabytes per frame: decoders must refuse it by its header.
    """
    path = Path(path)
    path.write_bytes(f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\nFRAME\n".encode() + b"\x80" * 1024)
    return path


def write_image(path: str | Path, height: int = 48, width: int = 64, seed: int = 0) -> Path:
    """A still PNG image written under `path` whatever its extension (e.g. a .avi that is a picture)."""
    path = Path(path)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(texture(height, width, seed), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    path.write_bytes(buf.tobytes())
    return path


def write_unknown_codec(path: str | Path, frames: Iterable[np.ndarray], fps: float = 25.0) -> Path:
    """An AVI whose video stream carries a codec tag no decoder knows ("ZZZZ").

    The stream is MPEG-4 Part 2 written by ffmpeg (tag FMP4); renaming the tag in the AVI
    headers leaves a well-formed container whose codec is unknown.
    """
    path = Path(path)
    write_video(path, frames, fps, codec="mpeg4")
    data = path.read_bytes()
    if b"FMP4" not in data:
        raise RuntimeError(f"{path}: no FMP4 codec tag found to replace")
    path.write_bytes(data.replace(b"FMP4", b"ZZZZ"))
    return path


def write_truncated(path: str | Path, source: str | Path, fraction: float = 0.5) -> Path:
    """The first `fraction` of `source`'s bytes, as a file cut off mid-stream."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction!r} must be in (0, 1)")
    path = Path(path)
    data = Path(source).read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path
