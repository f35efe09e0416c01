"""Labelled synthetic video sets on which one model family should beat another.

Both write videos (lossless H.264 4:4:4: the grey the flow estimators see is the drawn
grey, +-1 for the RGB <-> YUV rounding) and a list.csv (path,label,split) that
`flowshard build` reads; every video is drawn from one seeded generator, so the same
config and photos give the same videos.

binding     Two textured squares move over a still photo, each in one of the four
            directions (never the same one). Texture A is noise tinted red, texture B the
            same kind of noise tinted cyan; the class is the direction of the A square,
            and B is a distractor. The tints add no luminance (cv2's RGB -> grey weights,
            the ones the flow estimators see), so the flow of A and B looks alike: the
            temporal stream sees two motions and cannot tell which is A's, the spatial
            stream sees where A is but not where it goes. Only a model that puts appearance
            and motion at the same place together (fusion at a conv layer) can name the
            class; late fusion of the two streams' scores stays near 50 %.
long_range  One textured square moves horizontally: "right", "left", or it reverses once at
            a random time between a quarter and three quarters of the video
            ("right_then_left", "left_then_right"). A clip that covers a few frames sees
            one direction only; telling "right" from "right_then_left", and the order of
            the reversal, needs snippets spread over the video (multi-timescale sampling).

Backgrounds are real photographs passed in by the caller (e.g. scikit-image's sample
images, `photos()`); each video takes a random crop of a random photo.
"""

from __future__ import annotations

import csv
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.synthetic import motion as synthetic

log = logging.getLogger(__name__)

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BINDING_CLASSES = ("down", "left", "right", "up")
LONG_RANGE_CLASSES = ("left", "left_then_right", "right", "right_then_left")
# cv2.COLOR_RGB2GRAY's weights (BT.601): a chroma offset (a, -a * 0.299 / 0.587, 0) adds no grey.
_RED_GREEN = np.array([1.0, -0.299 / 0.587, 0.0])
TINTS = {"A": _RED_GREEN, "B": -_RED_GREEN}
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")
_LUMA_RANGE = (70.0, 185.0)  # texture grey levels: with the tint, no channel leaves [0, 255]


@dataclass(frozen=True, kw_only=True)
class SetConfig:
    """Sizes of a synthetic set: videos per class and split, frames, pixels, motion."""

    per_class: int = 16  # training videos per class
    test_per_class: int = 4
    num_frames: int = 24
    size: tuple[int, int] = (64, 64)  # width, height
    object_size: int = 16
    speed: int = 1  # pixels per frame (whole pixels: the true motion is exact)
    tint: float = 50.0  # chroma offset of the textures
    fps: float = 25.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.per_class < 1 or self.test_per_class < 0:
            raise ValueError(
                f"per_class must be >= 1 and test_per_class >= 0, got {self.per_class}, {self.test_per_class}"
            )
        if self.num_frames < 2 or self.object_size < 4 or self.speed < 1:
            raise ValueError(
                f"num_frames >= 2, object_size >= 4 and speed >= 1 needed, got "
                f"{self.num_frames}, {self.object_size}, {self.speed}"
            )
        if self.object_size + self.travel > min(self.size):
            raise ValueError(
                f"an object of {self.object_size} px moving {self.travel} px does not fit in "
                f"{self.size[0]}x{self.size[1]} frames"
            )
        if not 0 <= self.tint <= 255 - _LUMA_RANGE[1]:
            raise ValueError(f"tint must be in [0, {255 - _LUMA_RANGE[1]:.0f}], got {self.tint}")

    @property
    def travel(self) -> int:
        """Pixels an object moves from the first frame to the last."""
        return self.speed * (self.num_frames - 1)


# --- pictures --------------------------------------------------------------------------------


def photos() -> list[np.ndarray]:
    """scikit-image's sample photographs as RGB uint8 (needs scikit-image, a test dependency)."""
    try:
        import skimage.data
    except ImportError as exc:
        raise RuntimeError("the photo backgrounds come from scikit-image: pip install scikit-image") from exc
    out = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        out.append(np.ascontiguousarray(img if img.ndim == 3 else np.stack([img] * 3, axis=-1))[..., :3])
    return out


def background(pictures: list[np.ndarray], size: tuple[int, int], rng: random.Random) -> np.ndarray:
    """A random crop (a quarter to all of the short side) of a random photo, resized to size (w, h)."""
    img = pictures[rng.randrange(len(pictures))]
    h, w = img.shape[:2]
    side = int(min(h, w) * rng.uniform(0.25, 1.0))
    x, y = rng.randrange(w - side + 1), rng.randrange(h - side + 1)
    crop = img[y : y + side, x : x + side]
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA)


def tinted_texture(size: int, tint: str, strength: float, seed: int) -> np.ndarray:
    """A size x size noise texture: grey levels in _LUMA_RANGE plus the zero-grey chroma of `tint`."""
    grey = cv2.cvtColor(synthetic.texture(size, size, seed), cv2.COLOR_RGB2GRAY).astype(np.float64)
    lo, hi = _LUMA_RANGE
    grey = lo + (grey - grey.min()) * (hi - lo) / max(1.0, float(np.ptp(grey)))
    rgb = grey[..., None] + strength * TINTS[tint]
    return np.clip(rgb.round(), 0, 255).astype(np.uint8)


def render(bg: np.ndarray, objects: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Frames of square textures pasted at integer (x, y) positions, one row per frame."""
    frames = []
    for t in range(len(objects[0][1])):
        frame = bg.copy()
        for patch, path in objects:
            x, y = (int(v) for v in path[t])
            s = patch.shape[0]
            frame[y : y + s, x : x + s] = patch
        frames.append(frame)
    return frames


# --- trajectories ----------------------------------------------------------------------------


def straight_path(centre: tuple[float, float], direction: str, cfg: SetConfig) -> np.ndarray:
    """(num_frames, 2) top-left positions moving `speed` px per frame, at `centre` mid-video."""
    t = np.arange(cfg.num_frames) - (cfg.num_frames - 1) / 2
    d = np.array(DIRECTIONS[direction], np.float64) * cfg.speed
    return np.floor(np.asarray(centre, np.float64) + t[:, None] * d)


def apart(a: np.ndarray, b: np.ndarray, size: int, gap: int = 2) -> bool:
    """Whether two squares of `size` px on paths a and b never touch (gap px between them)."""
    d = np.abs(a - b)
    return bool(np.all((d[:, 0] >= size + gap) | (d[:, 1] >= size + gap)))


def binding_paths(dir_a: str, dir_b: str, cfg: SetConfig, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """Paths of A and B that stay in the frame and never touch.

    Mid-video positions are drawn from one box whatever the direction, so where a square is
    halfway through says nothing about where it goes.
    """
    half = cfg.travel / 2
    w, h = cfg.size
    box = ((half, w - cfg.object_size - half), (half, h - cfg.object_size - half))
    for _ in range(1000):
        a, b = (straight_path((rng.uniform(*box[0]), rng.uniform(*box[1])), d, cfg) for d in (dir_a, dir_b))
        if apart(a, b, cfg.object_size):
            return a, b
    raise ValueError(
        f"no two paths of {cfg.object_size} px squares moving {cfg.travel} px fit apart in "
        f"{w}x{h} frames: use bigger frames or fewer frames"
    )


def long_range_path(label: str, cfg: SetConfig, rng: random.Random) -> np.ndarray:
    """Horizontal path of `label`: one direction, or a reversal between 1/4 and 3/4 of the video."""
    n = cfg.num_frames
    first = "left" if label.startswith("left") else "right"
    turn = rng.randint(n // 4, (3 * n) // 4) if "_then_" in label else n
    sign = np.array([1 if (first == "right") == (t < turn) else -1 for t in range(n - 1)])
    x = np.concatenate([[0], np.cumsum(sign * cfg.speed)])
    w, h = cfg.size
    lo, hi = -x.min(), w - cfg.object_size - x.max()
    x0, y0 = rng.randint(int(lo), int(hi)), rng.randint(0, h - cfg.object_size)
    return np.stack([x + x0, np.full(n, y0)], axis=1).astype(np.float64)


# --- videos and sets -------------------------------------------------------------------------


def binding_video(label: str, cfg: SetConfig, pictures: list[np.ndarray], rng: random.Random) -> list[np.ndarray]:
    """One binding video whose A square moves towards `label` (B in one of the other directions)."""
    dir_b = rng.choice([d for d in BINDING_CLASSES if d != label])
    path_a, path_b = binding_paths(label, dir_b, cfg, rng)
    a = tinted_texture(cfg.object_size, "A", cfg.tint, rng.randrange(1 << 30))
    b = tinted_texture(cfg.object_size, "B", cfg.tint, rng.randrange(1 << 30))
    return render(background(pictures, cfg.size, rng), [(a, path_a), (b, path_b)])


def long_range_video(label: str, cfg: SetConfig, pictures: list[np.ndarray], rng: random.Random) -> list[np.ndarray]:
    """One long-range video of class `label` (LONG_RANGE_CLASSES)."""
    tint = rng.choice(sorted(TINTS))
    patch = tinted_texture(cfg.object_size, tint, cfg.tint, rng.randrange(1 << 30))
    path = long_range_path(label, cfg, rng)
    return render(background(pictures, cfg.size, rng), [(patch, path)])


def write_set(root: str | Path, kind: str, cfg: SetConfig, pictures: list[np.ndarray]) -> Path:
    """Write a set ("binding" or "long_range") under root/videos and return root/list.csv."""
    makers = {"binding": (BINDING_CLASSES, binding_video), "long_range": (LONG_RANGE_CLASSES, long_range_video)}
    if kind not in makers:
        raise ValueError(f"unknown set {kind!r}; choose one of {sorted(makers)}")
    if not pictures:
        raise ValueError("no background photos given")
    classes, make = makers[kind]
    root = Path(root)
    rows = []
    for label in classes:
        (root / "videos" / label).mkdir(parents=True, exist_ok=True)
        for i in range(cfg.per_class + cfg.test_per_class):
            rng = random.Random(f"{kind}/{cfg.seed}/{label}/{i}")
            rel = f"videos/{label}/{kind}_{label}_{i:03d}.mp4"
            # Lossless 4:4:4: lossy coding adds grey noise that depends on the colour (and 4:2:0
            # chroma bleeds the tint into the grey around the squares), which flow would see.
            synthetic.write_video(root / rel, make(label, cfg, pictures, rng), cfg.fps, pix_fmt="yuv444p", quality="0")
            rows.append({"path": rel, "label": label, "split": "train" if i < cfg.per_class else "test"})
    listing = root / "list.csv"
    with open(listing, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    log.info("%s set: %d videos under %s", kind, len(rows), root)
    return listing
