"""Looking at samples: the standard flow colour wheel and contact sheets."""
from __future__ import annotations

import numpy as np
import cv2

from pipeline.encode import DecodedSample


def _colour_wheel() -> np.ndarray:
    """The Middlebury colour wheel (Baker et al.): 55 hues from red through the spectrum."""
    segments = ((15, (255, 0, 0), (255, 255, 0)), (6, (255, 255, 0), (0, 255, 0)), (4, (0, 255, 0), (0, 255, 255)),
                (11, (0, 255, 255), (0, 0, 255)), (13, (0, 0, 255), (255, 0, 255)), (6, (255, 0, 255), (255, 0, 0)))
    rows = []
    for n, a, b in segments:
        t = np.arange(n)[:, None] / n
        rows.append((1 - t) * np.array(a) + t * np.array(b))
    return np.concatenate(rows).astype(np.float32)


WHEEL = _colour_wheel()


def flow_to_color(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """(H, W, 2) flow -> (H, W, 3) uint8 RGB: hue is direction, saturation is magnitude.

    `max_magnitude` fixes the scale (e.g. the quantization bound) so sheets compare; by
    default the largest magnitude in the field saturates.
    """
    u, v = flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32)
    mag = np.sqrt(u * u + v * v)
    scale = max_magnitude or max(float(mag.max()), 1e-6)
    u, v, mag = u / scale, v / scale, np.minimum(mag / scale, 1.0)
    angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
    pos = (angle + 1) / 2 * (len(WHEEL) - 1)
    i0 = np.floor(pos).astype(int)
    i1 = (i0 + 1) % len(WHEEL)
    f = (pos - i0)[..., None]
    col = (1 - f) * WHEEL[i0] + f * WHEEL[i1]
    col = 255 - mag[..., None] * (255 - col)  # white at zero motion, full colour at the scale
    return col.clip(0, 255).astype(np.uint8)


def contact_sheet(sample: DecodedSample, columns: int = 6, bound: float | None = None) -> np.ndarray:
    """A sheet of evenly spaced frames: rows RGB, flow colour, flow x and flow y (grey, 128 = 0)."""
    t = len(sample.frames)
    f = len(sample.flow)
    if t == 0:
        raise ValueError("sample has no frames to show")
    bound = bound or float(sample.meta.get("flow", {}).get("bound", 20.0))
    picks = np.unique(np.linspace(0, max(f, 1) - 1, min(columns, max(f, 1))).round().astype(int))
    tiles = []
    for i in picks:
        field = sample.flow[i] if f else np.zeros(sample.frames.shape[1:3] + (2,), np.float32)
        frame_pos = _frame_of_field(sample.meta, int(i)) if f else 0
        grey = [np.repeat(np.clip(128 + field[..., c] * 127 / bound, 0, 255).astype(np.uint8)[..., None], 3, -1)
                for c in (0, 1)]
        tiles.append(np.concatenate([sample.frames[frame_pos], flow_to_color(field, bound / 4), *grey], axis=0))
    sep = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
    return np.concatenate([x for tile in tiles for x in (tile, sep)][:-1], axis=1)


def _frame_of_field(meta: dict, i: int) -> int:
    """Position of the frame a field starts at (its 'from' frame), or the nearest stored one."""
    fields, frames = meta.get("flow_fields", []), meta.get("frames", [])
    if i >= len(fields) or not frames:
        return 0
    src = fields[i]["from"]
    idx = [fr["index"] for fr in frames]
    return int(np.argmin([abs(x - src) for x in idx]))


def write_png(path: str, rgb: np.ndarray) -> None:
    """Write an RGB image as PNG, raising with the path if it cannot be written."""
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write the PNG")
