"""Real-size test videos made from photographs: the benchmarks' stand-in for real footage.

No videos can be downloaded here, so the benchmarks film scikit-image's photographs: a mosaic
of four photos (astronaut, coffee, chelsea, rocket) is panned and slowly zoomed by a virtual
camera while a fifth photo (a cat) crosses the scene on its own path, so each clip has camera
motion, an independently moving object, occlusion and real image texture. Each size is
encoded the way such footage usually comes: QCIF and UCF101-size clips as MPEG-4 Part 2 in
AVI (Xvid-like), VGA and 720p as H.264 in MP4.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from pipeline.synthetic import motion as synthetic

# (width, height, codec, container): the mixed-resolution set of the CPU benchmarks.
MIXED = ((176, 144, "mpeg4", "avi"), (320, 240, "mpeg4", "avi"), (640, 480, "libx264", "mp4"),
         (1280, 720, "libx264", "mp4"))
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


@functools.lru_cache(maxsize=1)
def mosaic() -> np.ndarray:
    """The four photographs side by side in a 2x2 grid, each 512 px high (uint8 RGB)."""
    import skimage.data

    tiles = []
    for name in _PHOTOS:
        img = getattr(skimage.data, name)()
        tiles.append(cv2.resize(img, (round(img.shape[1] * 512 / img.shape[0]), 512), interpolation=cv2.INTER_CUBIC))
    width = max(t.shape[1] for t in tiles)
    tiles = [cv2.copyMakeBorder(t, 0, 0, 0, width - t.shape[1], cv2.BORDER_REFLECT) for t in tiles]
    return np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])


def photo_frames(width: int, height: int, num_frames: int, seed: int = 0) -> Iterator[np.ndarray]:
    """`num_frames` RGB frames: a camera panning and zooming over the mosaic, a cat crossing it.

    Motion scales with the frame size (about 0.4 % of the width per frame for the camera,
    1 % for the object), as it does when one scene is filmed at several resolutions.
    """
    import skimage.data

    rng = np.random.default_rng(seed)
    scene = mosaic()
    sh, sw = scene.shape[:2]
    base = 0.75 * min(sw / width, sh / height)  # scene pixels per frame pixel at the start
    cx, cy = rng.uniform(0.4, 0.6) * sw, rng.uniform(0.4, 0.6) * sh
    pan = rng.uniform(-1, 1, 2)
    pan = 0.004 * width * base * pan / np.linalg.norm(pan)
    cat = skimage.data.chelsea()
    side = max(8, height // 3)
    cat = cv2.resize(cat, (round(side * cat.shape[1] / cat.shape[0]), side), interpolation=cv2.INTER_AREA)
    y0 = rng.uniform(0.2, 0.6) * height
    for t in range(num_frames):
        zoom = base * (1.0 - 0.002 * t)
        # Frame pixel (x, y) shows scene pixel (cx + (x - w/2) * zoom, cy + (y - h/2) * zoom).
        m = np.array([[zoom, 0, cx + pan[0] * t - width / 2 * zoom],
                      [0, zoom, cy + pan[1] * t - height / 2 * zoom]], np.float64)
        frame = cv2.warpAffine(scene, m, (width, height), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT)
        x = int(round(-cat.shape[1] + 0.01 * width * t * 1.5)) % (width + cat.shape[1]) - cat.shape[1]
        y = int(round(y0 + 0.1 * height * np.sin(t / 15)))
        _paste(frame, cat, x, y)
        yield frame


def _paste(frame: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + patch.shape[1]), min(h, y + patch.shape[0])
    if x1 > x0 and y1 > y0:
        frame[y0:y1, x0:x1] = patch[y0 - y:y1 - y, x0 - x:x1 - x]


def write_sized(root: Path, num_frames: int, count: int, size: tuple[int, int], fps: float = 25.0) -> list[Path]:
    """Write `count` H.264 photo videos of one size (e.g. the standard 340x256) under root/<size>/."""
    w, h = size
    folder = Path(root) / f"{w}x{h}"
    folder.mkdir(parents=True, exist_ok=True)
    return [synthetic.write_video(folder / f"v{i:03d}.mp4", photo_frames(w, h, num_frames, seed=i), fps,
                                  codec="libx264", quality="23") for i in range(count)]


def write_mixed(root: Path, num_frames: int, copies: int = 1, fps: float = 25.0) -> list[Path]:
    """Write `copies` videos of each MIXED size under root/<size>/ (a folder per class)."""
    paths = []
    for c in range(copies):
        for i, (w, h, codec, ext) in enumerate(MIXED):
            folder = Path(root) / f"{w}x{h}"
            folder.mkdir(parents=True, exist_ok=True)
            # x264 at its default CRF; MPEG-4 at q 5 (about UCF101's bits per pixel).
            extra = ("-q:v", "5") if codec == "mpeg4" else ()
            paths.append(synthetic.write_video(folder / f"v{c:02d}.{ext}", photo_frames(w, h, num_frames, seed=10 * c + i),
                                               fps, codec=codec, quality="23", extra_args=extra))
    return paths
