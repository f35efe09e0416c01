"""A synthetic action-detection set: textured objects on real photographs, one of them acting.

Each video shows a background cut from one of scikit-image's photographs and one or two
textured rectangles. One is the *actor*: during its action segment it moves along a
class-specific path ("jump": bounces up, "slide": swings left and right, "circle":
circles), before and after it rests. The other, the *distractor*, drawn from the same
textures and sizes, stands still or wanders at random. Only the actor's action segment is
annotated, with exact boxes: the rectangles are drawn at sub-pixel positions, so the box
(x, y, x + w, y + h) is where the object is in every frame.

Appearance says nothing about which object acts or how: only motion does. A detector on
RGB frames can find objects but not tell the actor or its class; one on flow can.

The set is written as videos (folder per class), a list CSV (path,label,split) and a
boxes CSV (video,frame,x1,y1,x2,y2,label,track) for `flowshard build --boxes`.
Backgrounds need scikit-image (a test dependency): `pip install scikit-image`.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.synthetic.motion import write_video

log = logging.getLogger(__name__)

ACTIONS = ("jump", "slide", "circle")
DISTRACTORS = ("mixed", "static", "random", "none")
# scikit-image's bundled photographs (no download) used as backgrounds, and its textures.
BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
TEXTURES = ("brick", "grass", "gravel", "camera", "moon", "coins")


@dataclass(frozen=True, kw_only=True)
class DetectionSetConfig:
    """What the generator writes: classes, videos per class and split, frames and sizes."""

    classes: tuple[str, ...] = ACTIONS
    train_per_class: int = 8
    test_per_class: int = 4
    frames: int = 24
    size: tuple[int, int] = (128, 96)  # width, height
    fps: float = 25.0
    object_size: tuple[float, float] = (0.22, 0.32)  # side as a fraction of the frame height: min, max
    amplitude: float = 0.1  # actor path amplitude, fraction of the frame height
    period: float = 16.0  # frames per period of the actor's motion
    distractor: str = "mixed"  # mixed: static or random per video; none: the actor alone
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.classes) - set(ACTIONS))
        if not self.classes or unknown:
            raise ValueError(f"classes must be among {ACTIONS}, got {self.classes}")
        if self.train_per_class < 0 or self.test_per_class < 0 or self.train_per_class + self.test_per_class < 1:
            raise ValueError("train_per_class and test_per_class must be >= 0, and not both 0")
        if self.frames < 4:
            raise ValueError(f"frames must be >= 4, got {self.frames}")
        if min(self.size) < 16:
            raise ValueError(f"size must be at least 16x16, got {self.size}")
        lo, hi = self.object_size
        if not 0 < lo <= hi < 0.6 or not 0 <= self.amplitude < 0.3 or self.period <= 0:
            raise ValueError("object_size must be 0 < min <= max < 0.6, amplitude in [0, 0.3), period > 0")
        if self.distractor not in DISTRACTORS:
            raise ValueError(f"distractor must be one of {DISTRACTORS}, got {self.distractor!r}")


@dataclass(frozen=True)
class DetectionSet:
    """Where the generated set is: its root, the list CSV and the boxes CSV."""

    root: Path
    list_csv: Path
    boxes_csv: Path


# --- images ----------------------------------------------------------------------------------


def _skimage(name: str) -> np.ndarray:
    try:
        from skimage import data
    except ImportError as exc:  # a test/benchmark dependency, not a runtime one
        raise RuntimeError("the synthetic detection set needs scikit-image (pip install scikit-image)") from exc
    img = np.asarray(getattr(data, name)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A random crop of a photograph, resized to (height, width, 3)."""
    img = _skimage(BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
    h, w = img.shape[:2]
    scale = rng.uniform(0.5, 0.9)
    ch, cw = int(h * scale), int(min(w, h * scale * width / height))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return cv2.resize(img[y : y + ch, x : x + cw], (width, height), interpolation=cv2.INTER_AREA)


def object_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A textured patch (height, width, 3): a texture image crop, tinted with a random colour."""
    img = _skimage(TEXTURES[rng.integers(len(TEXTURES))]).astype(np.float32)
    h, w = img.shape[:2]
    side = int(rng.integers(min(h, w) // 4, min(h, w) // 2))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    patch = cv2.resize(img[y : y + side, x : x + side], (width, height), interpolation=cv2.INTER_AREA)
    tint = rng.uniform(0.3, 1.0, size=3).astype(np.float32)
    patch = patch * tint + rng.uniform(0, 60, size=3).astype(np.float32)
    return np.clip(patch, 0, 255).astype(np.uint8)


# --- motion ----------------------------------------------------------------------------------------


def action_offsets(action: str, frames: int, amplitude: float, period: float, phase: float = 0.0) -> np.ndarray:
    """(frames, 2) offsets (dx, dy) in pixels of an actor moving its class's way, starting at (0, 0)."""
    w = 2 * math.pi * np.arange(frames, dtype=np.float64) / period + phase
    if action == "jump":  # up and back down, never below its resting line
        path = np.stack([np.zeros(frames), -amplitude * np.abs(np.sin(w / 2))], axis=1)
    elif action == "slide":  # left and right
        path = np.stack([amplitude * np.sin(w), np.zeros(frames)], axis=1)
    elif action == "circle":
        path = np.stack([amplitude * np.sin(w), amplitude * np.cos(w)], axis=1)
    else:
        raise ValueError(f"unknown action {action!r}; choose one of {ACTIONS}")
    return path - path[:1]


def random_walk(rng: np.random.Generator, frames: int, speed: float) -> np.ndarray:
    """(frames, 2) offsets of a smooth random wander with speeds up to `speed` px/frame."""
    v = np.zeros(2)
    pos = np.zeros((frames, 2))
    for t in range(1, frames):
        v = np.clip(0.8 * v + rng.normal(0, speed / 2, 2), -speed, speed)
        pos[t] = pos[t - 1] + v
    return pos


def _fit(offsets: np.ndarray, w: float, h: float, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Top-left positions (frames, 2): a random start that keeps the whole path inside the frame."""
    room = np.array([width - w, height - h], np.float64)
    extent = np.ptp(offsets, axis=0)
    offsets = offsets * min(1.0, *(room / np.maximum(extent, 1e-6)))  # a wander wider than the frame: squeezed
    free = room - np.ptp(offsets, axis=0)
    start = np.array([rng.uniform(0, free[0]), rng.uniform(0, free[1])]) - offsets.min(axis=0)
    return start + offsets


# --- rendering ------------------------------------------------------------------------------------


def paste(frame: np.ndarray, patch: np.ndarray, x: float, y: float) -> np.ndarray:
    """`patch` drawn onto `frame` with its top-left corner at sub-pixel (x, y), edges antialiased."""
    h, w = patch.shape[:2]
    big_h, big_w = frame.shape[:2]
    m = np.array([[1, 0, x], [0, 1, y]], np.float64)
    # Pixel centres: patch pixel (i, j) covers [j, j + 1) and lands on [x + j, x + j + 1).
    warped = cv2.warpAffine(patch, m, (big_w, big_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha = cv2.warpAffine(
        np.ones((h, w), np.float32), m, (big_w, big_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )[..., None]
    # The warped patch is already weighted by its coverage (the border is black): add it as it is.
    return np.clip(frame * (1 - alpha) + warped, 0, 255).round().astype(np.uint8)


@dataclass(frozen=True)
class VideoPlanned:
    """One generated video: frames, the actor's boxes in its action segment, its class."""

    frames: list[np.ndarray]
    boxes: dict[int, tuple[float, float, float, float]]
    action: str


def make_video(action: str, cfg: DetectionSetConfig, rng: np.random.Generator) -> VideoPlanned:
    """Frames and exact actor boxes of one video of class `action`."""
    width, height = cfg.size
    bg = background(rng, width, height)
    sizes = [rng.uniform(*cfg.object_size, size=2) * height for _ in range(2)]
    start = int(rng.integers(0, max(1, cfg.frames // 5) + 1))
    end = int(cfg.frames - rng.integers(0, max(1, cfg.frames // 5) + 1))  # acting in [start, end)
    acting = action_offsets(action, end - start, cfg.amplitude * height, cfg.period, rng.uniform(0, 0.5))
    offsets = np.concatenate([np.zeros((start, 2)), acting, np.repeat(acting[-1:], cfg.frames - end, axis=0)])
    (aw, ah), (dw, dh) = (np.round(s) for s in sizes)
    actor_patch = object_texture(rng, int(aw), int(ah))
    actor = _fit(offsets, aw, ah, width, height, rng)
    objects = [(actor_patch, actor)]
    kind = cfg.distractor if cfg.distractor != "mixed" else ("static", "random")[rng.integers(2)]
    if kind != "none":
        wander = random_walk(rng, cfg.frames, 0.03 * height) if kind == "random" else np.zeros((cfg.frames, 2))
        objects.insert(
            int(rng.integers(2)), (object_texture(rng, int(dw), int(dh)), _fit(wander, dw, dh, width, height, rng))
        )
    frames = []
    for t in range(cfg.frames):
        img = bg.copy()
        for patch, path in objects:  # drawn in a random order: either may pass in front
            img = paste(img, patch, *path[t])
        frames.append(img)
    boxes = {
        t: (float(actor[t, 0]), float(actor[t, 1]), float(actor[t, 0] + aw), float(actor[t, 1] + ah))
        for t in range(start, end)
    }
    return VideoPlanned(frames=frames, boxes=boxes, action=action)


def make_detection_dataset(root: str | Path, cfg: DetectionSetConfig = DetectionSetConfig()) -> DetectionSet:
    """Write the set under `root`: videos/<class>/*.mp4, list.csv and boxes.csv (seeded, reproducible)."""
    root = Path(root)
    rng = np.random.default_rng(cfg.seed)
    rows: list[dict] = []
    box_rows: list[dict] = []
    for action in cfg.classes:
        (root / "videos" / action).mkdir(parents=True, exist_ok=True)
        for i in range(cfg.train_per_class + cfg.test_per_class):
            video = make_video(action, cfg, rng)
            rel = f"videos/{action}/v_{action}_{i:03d}.mp4"
            write_video(root / rel, video.frames, cfg.fps)
            rows.append({"path": rel, "label": action, "split": "train" if i < cfg.train_per_class else "test"})
            box_rows.extend(
                {
                    "video": rel,
                    "frame": t,
                    "x1": f"{b[0]:.4f}",
                    "y1": f"{b[1]:.4f}",
                    "x2": f"{b[2]:.4f}",
                    "y2": f"{b[3]:.4f}",
                    "label": action,
                    "track": 0,
                }
                for t, b in sorted(video.boxes.items())
            )
    list_csv, boxes_csv = root / "list.csv", root / "boxes.csv"
    _write_csv(list_csv, ["path", "label", "split"], rows)
    _write_csv(boxes_csv, ["video", "frame", "x1", "y1", "x2", "y2", "label", "track"], box_rows)
    log.info("wrote %d synthetic detection videos and %d boxes under %s", len(rows), len(box_rows), root)
    return DetectionSet(root=root, list_csv=list_csv, boxes_csv=boxes_csv)


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
