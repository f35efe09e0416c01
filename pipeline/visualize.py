"""Looking at samples: the standard flow colour wheel and contact sheets."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.encode import DecodedSample


def _colour_wheel() -> np.ndarray:
    """The Middlebury colour wheel (Baker et al.): 55 hues from red through the spectrum."""
    segments = (
        (15, (255, 0, 0), (255, 255, 0)),
        (6, (255, 255, 0), (0, 255, 0)),
        (4, (0, 255, 0), (0, 255, 255)),
        (11, (0, 255, 255), (0, 0, 255)),
        (13, (0, 0, 255), (255, 0, 255)),
        (6, (255, 0, 255), (255, 0, 0)),
    )
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


FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_SCALE = 0.4
LINE = 16  # pixels per text line at TEXT_SCALE
LABEL_WIDTH = 92  # left column holding the row names
LEGEND_WIDTH = 150
MIN_TILE_HEIGHT = 72  # smaller frames are enlarged (nearest) so labels and tiles stay readable


def grey_component(component: np.ndarray, bound: float) -> np.ndarray:
    """One flow component as an RGB grey image: 128 is zero, 0 and 255 are -bound and +bound px."""
    g = np.clip(128 + component * 127 / bound, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, -1)


def sheet_labels(sample: DecodedSample, picks: list[int], bound: float) -> dict:
    """The words of a contact sheet: title, row names, one caption per column, legend lines."""
    m = sample.meta
    fields = m.get("flow_fields", [])
    flow = m.get("flow", {})
    w, h = m.get("size", [sample.frames.shape[2], sample.frames.shape[1]])
    title = (
        f"{m.get('video_id', m.get('key', '?'))}  label: {m.get('label', '?')} ({m.get('label_id', '?')})  "
        f"{flow.get('algorithm', '?')} flow, {w}x{h}"
    )
    rows = ["RGB", "flow colour", "flow x", "flow y"] + (["warped colour"] if sample.warped is not None else [])
    columns = [f"t={fields[i]['from']}->{fields[i]['to']}" if i < len(fields) else "t=0" for i in picks]
    legend = [
        "colour: direction,",
        f"saturated at {bound / 4:g} px",
        "white: no motion",
        "x, y grey: 128 = 0 px,",
        f"0 / 255 = -/+{bound:g} px",
        "x right, y down",
    ]
    return {"title": title, "rows": rows, "columns": columns, "legend": legend}


def colour_wheel_legend(size: int, scale: float) -> np.ndarray:
    """A disc of the flow colours: the colour at (dx, dy) from the centre is that of flow
    (dx, dy) * scale / radius, so the rim shows flow of magnitude `scale` in every direction."""
    r = (size - 1) / 2.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    field = np.stack([(xs - r) / r * scale, (ys - r) / r * scale], -1)
    disc = flow_to_color(field, scale)
    disc[np.hypot(xs - r, ys - r) > r] = 255
    return disc


def _text(img: np.ndarray, text: str, x: int, y: int, scale: float = TEXT_SCALE) -> None:
    cv2.putText(img, text, (x, y), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)


def _tiles(sample: DecodedSample, picks: list[int], bound: float) -> list[list[np.ndarray]]:
    """One column per picked field: its first frame, flow colour, x, y (and warped colour)."""
    f = len(sample.flow)
    cols = []
    for i in picks:
        field = sample.flow[i] if f else np.zeros((*sample.frames.shape[1:3], 2), np.float32)
        frame_pos = _frame_of_field(sample.meta, int(i)) if f else 0
        rows = [
            sample.frames[frame_pos],
            flow_to_color(field, bound / 4),
            grey_component(field[..., 0], bound),
            grey_component(field[..., 1], bound),
        ]
        if sample.warped is not None:
            rows.append(flow_to_color(sample.warped[i] if f else field, bound / 4))
        cols.append(rows)
    return cols


def contact_sheet(sample: DecodedSample, columns: int = 6, bound: float | None = None) -> np.ndarray:
    """A labelled sheet of evenly spaced fields: rows RGB (the field's first frame), flow colour,
    flow x and flow y (grey, 128 = 0) and, with warped flow, its colour; a title with the video
    id and label, the frame pair of each column, and a legend with the colour wheel and scales."""
    t, f = len(sample.frames), len(sample.flow)
    if t == 0:
        raise ValueError("sample has no frames to show")
    bound = bound or float(sample.meta.get("flow", {}).get("bound", 20.0))
    picks = [int(i) for i in np.unique(np.linspace(0, max(f, 1) - 1, min(columns, max(f, 1))).round().astype(int))]
    labels = sheet_labels(sample, picks, bound)
    h, w = sample.frames.shape[1:3]
    zoom = max(1, -(-MIN_TILE_HEIGHT // h))
    th, tw = h * zoom, w * zoom
    nrows = len(labels["rows"])
    top = 2 * LINE + 6  # title line, then the column captions
    width = LABEL_WIDTH + len(picks) * (tw + 2) + LEGEND_WIDTH
    sheet = np.full((max(top + nrows * (th + 2), top + LEGEND_WIDTH + 7 * LINE), width, 3), 255, np.uint8)
    _text(sheet, labels["title"], 4, LINE - 3, 0.45)
    for c, (rows, caption) in enumerate(zip(_tiles(sample, picks, bound), labels["columns"], strict=True)):
        x = LABEL_WIDTH + c * (tw + 2)
        _text(sheet, caption, x + 2, 2 * LINE)
        for r, tile in enumerate(rows):
            y = top + r * (th + 2)
            sheet[y : y + th, x : x + tw] = cv2.resize(tile, (tw, th), interpolation=cv2.INTER_NEAREST)
    for r, name in enumerate(labels["rows"]):
        _text(sheet, name, 4, top + r * (th + 2) + th // 2 + 4)
    lx = LABEL_WIDTH + len(picks) * (tw + 2) + 8
    wheel = LEGEND_WIDTH - 24
    sheet[top : top + wheel, lx : lx + wheel] = colour_wheel_legend(wheel, bound / 4)
    for k, line in enumerate(labels["legend"]):
        _text(sheet, line, lx, top + wheel + (k + 1) * LINE)
    return sheet


def _frame_of_field(meta: dict, i: int) -> int:
    """Position of the frame a field starts at (its 'from' frame), or the nearest stored one."""
    fields, frames = meta.get("flow_fields", []), meta.get("frames", [])
    if i >= len(fields) or not frames:
        return 0
    src = fields[i]["from"]
    idx = [fr["index"] for fr in frames]
    return int(np.argmin([abs(x - src) for x in idx]))


def write_png(path: str, rgb: np.ndarray) -> None:
    """Write an RGB image as PNG, raising OSError with the path if it cannot be written."""
    try:
        written = cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    except cv2.error as exc:  # OpenCV raises for a name without an image extension (a folder, too)
        raise OSError(f"{path}: could not write the PNG (a file name ending in .png is expected)") from exc
    if not written:
        raise OSError(f"{path}: could not write the PNG")
