"""Small photographs shipped with the package (public domain / CC0, see data/photos/README.md).

Real content for known-motion flow pairs (`pipeline.flow.accuracy`), the demo's videos and the
camera-motion generator, without scikit-image or a download.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

PHOTO_DIR = Path(__file__).parents[1] / "data" / "photos"
PHOTOS = ("astronaut", "camera", "coffee", "chelsea")


@lru_cache(maxsize=len(PHOTOS))
def _load(name: str) -> np.ndarray:
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose one of {PHOTOS}")
    path = PHOTO_DIR / f"{name}.jpg"
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"{path}: a photo shipped with flowshard is missing or unreadable")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    img.flags.writeable = False  # cached and shared: callers copy before changing it
    return img


def photo(name: str) -> np.ndarray:
    """The photo `name` as RGB uint8 (H, W, 3) (a grey photo has three equal channels)."""
    return _load(name)


def photo_gray(name: str) -> np.ndarray:
    """The photo `name` as greyscale uint8 (H, W)."""
    return cv2.cvtColor(_load(name), cv2.COLOR_RGB2GRAY)


def photo_texture(height: int, width: int, seed: int = 0, *, gray: bool = True) -> np.ndarray:
    """A float32 crop (0..255) of photo number `seed` (cycling), at least (height, width).

    The photo is shrunk (area interpolation, no aliasing) so that small frames still hold a
    good part of the scene rather than a flat patch of it, or enlarged (cubic) when the
    crop is larger than the photo. Grey (H, W) by default, RGB (H, W, 3) with gray=False.
    """
    rng = np.random.default_rng(seed)
    img = photo_gray(PHOTOS[seed % len(PHOTOS)]) if gray else photo(PHOTOS[seed % len(PHOTOS)])
    side = min(img.shape[:2])
    scale = min(1.0, 1.3 * max(height, width) / side)
    scale = max(scale, height / img.shape[0], width / img.shape[1])
    size = (max(width, round(img.shape[1] * scale)), max(height, round(img.shape[0] * scale)))
    interp = cv2.INTER_AREA if scale <= 1 else cv2.INTER_CUBIC
    small = cv2.resize(img, size, interpolation=interp).astype(np.float32)
    y = rng.integers(0, small.shape[0] - height + 1)
    x = rng.integers(0, small.shape[1] - width + 1)
    return np.ascontiguousarray(small[y : y + height, x : x + width])
