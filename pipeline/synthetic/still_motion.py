"""Temporal-stream pre-training data from still images (`flowshard pretrain-flow IMAGES OUT`).

Wang et al. (2015) pre-train both streams of a two-stream network on ImageNet; a temporal
stream can only borrow ImageNet's RGB filters (cross-modality initialisation). This module
makes flow to pre-train it on instead: each photo becomes short videos of known synthetic
motion, labelled with it,

    shift_left|right|up|down    the whole view pans (camera translation)
    zoom_in|zoom_out            the view scales about its centre (camera forward/back)
    rotate_cw|rotate_ccw        the view turns about its centre (camera roll)
    object_left|right|up|down   a patch cut from the photo moves over the still view

at a speed drawn per video, and `flowshard pretrain-flow` builds them with the build's own
estimator into shards that `flowshard train OUT --streams flow` reads. Whole photos go to
one split (the last `test_fraction` of them, in name order, to "test"), so test videos show
photos never seen in training.
"""

from __future__ import annotations

import csv
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.synthetic import motion as synthetic

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SHIFTS = {"shift_left": (-1, 0), "shift_right": (1, 0), "shift_up": (0, -1), "shift_down": (0, 1)}
OBJECTS = {"object_left": (-1, 0), "object_right": (1, 0), "object_up": (0, -1), "object_down": (0, 1)}
CLASSES = tuple(sorted([*SHIFTS, "zoom_in", "zoom_out", "rotate_cw", "rotate_ccw", *OBJECTS]))


@dataclass(frozen=True, kw_only=True)
class StillMotionConfig:
    """Videos per photo and class, their length and size, the motion speeds, the test share."""

    per_image: int = 1
    num_frames: int = 16
    size: tuple[int, int] = (340, 256)  # width, height
    shift: tuple[float, float] = (0.5, 3.0)  # px per frame
    zoom: tuple[float, float] = (0.005, 0.02)  # relative scale change per frame
    rotate: tuple[float, float] = (0.3, 1.5)  # degrees per frame
    test_fraction: float = 0.2
    fps: float = 25.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.per_image < 1 or self.num_frames < 2:
            raise ValueError(f"per_image must be >= 1 and num_frames >= 2, got {self.per_image}, {self.num_frames}")
        if min(self.size) < 16:
            raise ValueError(f"frames must be at least 16 px, got {self.size}")
        for name in ("shift", "zoom", "rotate"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < lo <= hi, got {(lo, hi)}")
        if not 0 <= self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")


def find_images(folder: str | Path) -> list[Path]:
    """The image files under `folder` (recursively), in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder of images")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not images:
        raise FileNotFoundError(f"{folder}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in it")
    return images


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 image; ValueError naming the file when it cannot be read."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def view_matrix(motion: str, t: float, speed: float, size: tuple[int, int]) -> np.ndarray:
    """2x3 map from the still view to frame t: content moves `speed` per frame as `motion` says."""
    w, h = size
    centre = (w / 2.0, h / 2.0)
    if motion in SHIFTS:
        dx, dy = SHIFTS[motion]
        return np.array([[1, 0, dx * speed * t], [0, 1, dy * speed * t]], np.float64)
    if motion.startswith("zoom"):
        return cv2.getRotationMatrix2D(centre, 0.0, (1 + speed) ** (t if motion == "zoom_in" else -t))
    # OpenCV's positive angle turns counter-clockwise on screen.
    return cv2.getRotationMatrix2D(centre, speed * t * (1 if motion == "rotate_ccw" else -1), 1.0)


def speed_of(motion: str, cfg: StillMotionConfig, rng: random.Random) -> float:
    key = "zoom" if motion.startswith("zoom") else "rotate" if motion.startswith("rotate") else "shift"
    return rng.uniform(*getattr(cfg, key))


def still_view(img: np.ndarray, size: tuple[int, int], margin: float, rng: random.Random) -> np.ndarray:
    """A random view of the photo, `margin` times the frame size, so motion finds content to show."""
    w, h = int(size[0] * margin), int(size[1] * margin)
    scale = max(w / img.shape[1], h / img.shape[0]) * rng.uniform(1.0, 1.5)
    big = cv2.resize(
        img,
        (max(w, round(img.shape[1] * scale)), max(h, round(img.shape[0] * scale))),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
    )
    x, y = rng.randrange(big.shape[1] - w + 1), rng.randrange(big.shape[0] - h + 1)
    return big[y : y + h, x : x + w]


def camera_frames(img: np.ndarray, motion: str, cfg: StillMotionConfig, rng: random.Random) -> list[np.ndarray]:
    """Frames of a view of `img` panned, zoomed or turned (the camera moves, the scene is still)."""
    w, h = cfg.size
    travel = cfg.shift[1] * cfg.num_frames
    margin = 1 + 2 * travel / min(w, h) + 0.5  # room for the shift, the zoom-out and the corners of a turn
    view = still_view(img, cfg.size, margin, rng)
    offset = np.array([[0, 0, (view.shape[1] - w) / 2], [0, 0, (view.shape[0] - h) / 2]])
    speed = speed_of(motion, cfg, rng)
    frames = []
    for t in range(cfg.num_frames):
        m = view_matrix(motion, t, speed, (view.shape[1], view.shape[0])) - offset
        frames.append(cv2.warpAffine(view, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return frames


def object_frames(img: np.ndarray, motion: str, cfg: StillMotionConfig, rng: random.Random) -> list[np.ndarray]:
    """Frames of a still view with a patch of the photo sliding over it."""
    w, h = cfg.size
    background = still_view(img, cfg.size, 1.0, rng)
    side = max(8, min(w, h) // 3)
    patch = cv2.resize(still_view(img, (side, side), 1.0, rng), (side, side))
    speed = speed_of(motion, cfg, rng)
    dx, dy = OBJECTS[motion]
    travel = speed * (cfg.num_frames - 1)
    lo_x, hi_x = (travel, w - side) if dx < 0 else (0, w - side - travel * dx)
    lo_y, hi_y = (travel, h - side) if dy < 0 else (0, h - side - travel * dy)
    if hi_x < lo_x or hi_y < lo_y:
        raise ValueError(f"a {side} px object moving {travel:.0f} px does not fit in {w}x{h} frames")
    x0, y0 = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    frames = []
    for t in range(cfg.num_frames):
        m = np.array([[1, 0, x0 + dx * speed * t], [0, 1, y0 + dy * speed * t]], np.float64)
        moved = cv2.warpAffine(patch, m, (w, h), flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(np.ones((side, side), np.float32), m, (w, h), flags=cv2.INTER_LINEAR)[..., None]
        frames.append((background * (1 - mask) + moved * mask).round().astype(np.uint8))
    return frames


def motion_video(img: np.ndarray, motion: str, cfg: StillMotionConfig, rng: random.Random) -> list[np.ndarray]:
    """The frames of one video of class `motion` (CLASSES) made from `img`."""
    if motion in OBJECTS:
        return object_frames(img, motion, cfg, rng)
    if motion not in CLASSES:
        raise ValueError(f"unknown motion {motion!r}; choose one of {CLASSES}")
    return camera_frames(img, motion, cfg, rng)


def write_still_motion_set(images: list[Path], root: str | Path, cfg: StillMotionConfig) -> tuple[Path, list[str]]:
    """Videos of every class from every readable image under root, and root/list.csv.

    Returns (list.csv, problems): an unreadable image is skipped and named in problems; no
    readable image at all raises ValueError.
    """
    root = Path(root)
    rows, problems = [], []
    n_test = math.floor(len(images) * cfg.test_fraction)
    for i, path in enumerate(images):
        try:
            img = read_image(path)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        split = "test" if i >= len(images) - n_test else "train"
        for motion in CLASSES:
            for j in range(cfg.per_image):
                rng = random.Random(f"still/{cfg.seed}/{path.name}/{motion}/{j}")
                rel = f"{motion}/{i:05d}_{path.stem[:40]}_{j}.mp4"
                (root / motion).mkdir(parents=True, exist_ok=True)
                synthetic.write_video(root / rel, motion_video(img, motion, cfg, rng), cfg.fps)
                rows.append({"path": rel, "label": motion, "split": split})
    if not rows:
        raise ValueError(f"no readable image among {len(images)} file(s): {problems[:3]}")
    listing = root / "list.csv"
    with open(listing, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    log.info("%d motion videos from %d images under %s", len(rows), len(images) - len(problems), root)
    return listing, problems
