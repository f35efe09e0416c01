"""Paired transforms of the two streams: crop, resize, flip, normalize, stack.

Inputs are what the loader decodes for one item of K snippets (pipeline.snippets): RGB
frames (K, F, H, W, 3) uint8 (F frames per snippet) and, per snippet, a quantized flow
stack of shape (2L, H, W), channels interleaved (K arrays or `FieldPlanes`), both at the
stored resolution. Outputs are float32 arrays (V, K, 3F, S, S) and (V, K, 2L, S, S): V
views (1 in training; 1 or 10 test crops), K snippets in time order, and the F frames of
a snippet stacked on channels in time order ([r_0, g_0, b_0, r_1, ...]) as its L fields are.
Flow stays channels-first throughout: a stored field is one (2H, W) plane, x over y, so
its top and bottom halves are channels 2l and 2l + 1 as they are (`FieldPlanes`, no copy),
and resizing each channel on its own is faster than one 2L-channel resize.

- One crop box and one flip decision per item, shared by every snippet, frame and stream,
  so the RGB frame and its flow stay pixel-aligned (TSN's group transforms).
- Flow channels are stacked interleaved per time step: [x_t, y_t, x_t+1, y_t+1, ...].
- Normalization: RGB with ImageNet mean/std; flow as (q - 128) / 128, so zero motion is 0.
- Horizontal flip mirrors every channel of both streams and negates flow x only. The
  negation happens in float, after normalization, where it is exact: x channels of a
  flipped view become -(q - 128) / 128. On the quantized values 255 - q would move zero
  motion (128) to 127, and 256 - q needs a clip at q = 0.
- Speed: crops, resizes and mirrors stay uint8; normalization is one cv2.LUT pass from
  uint8 to float32 per stack (numpy's astype and arithmetic cost ~10x more).
  `normalize_rgb`, `normalize_flow`, `hflip_rgb` and `hflip_flow` are the reference
  definitions, which tests hold the fast path to.
- Test views are at training's scale. Training crops 66-100 % of the short side
  (TSN_SCALES) and resizes the crop to `crop_size`; a test view is the frame resized so its
  short side is crop_size / 0.875 (TSN's 256 for 224, C3D's 128x171 for 112), then centre
  or 10-cropped. That is computed as training does it, without resizing whole frames: the
  test box is TEST_FRACTION (0.875) of the stored short side, cropped and resized to
  `crop_size` (`eval_boxes`), so a test view's scale, crop_size / (0.875 * short side),
  lies inside training's range [crop_size / short, crop_size / (0.66 * short)] whatever
  the crop size, where a raw centre crop (scale 1) would not: with 112 px crops of
  256-pixel frames training sees 168-256 px regions at 0.44-0.67x. Training scales that
  exclude 0.875 move the test fraction to the nearest one of their range (`eval_side`).
- Flow values are never rescaled when a view is resized, in training or in test: a view's
  flow stays in pixels of the stored resolution (docs/FORMAT.md), so train and test views
  of the same motion carry the same values. The multi-scale crop thus also jitters motion
  magnitude relative to the view's pixels (0.875-1.33x for 224 crops of 256-pixel frames),
  as in TSN and mmaction2, whose pretrained temporal streams expect this.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import cv2
import numpy as np

TSN_SCALES = (1.0, 0.875, 0.75, 0.66)
# A test view covers this fraction of the short side: the frame resized to a short side of
# crop / 0.875 and cropped to crop (TSN's 256 -> 224, C3D's 128x171 -> 112).
TEST_FRACTION = 0.875
CROP_POSITIONS = (5, 13)  # training crop offsets: 5 = corners + centre (Wang et al.), 13 = TSN's
TEST_CROPS = (1, 10)  # test views: the centre crop, or 4 corners + centre each also flipped
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
FLOW_ZERO = 128.0  # the quantized value of zero motion (pipeline.flow.quantize.quantize)

# uint8 -> float32 normalization tables (cv2.LUT): flow (q - 128) / 128, and RGB's
# per-channel ImageNet normalization.
FLOW_LUT = ((np.arange(256, dtype=np.float32) - np.float32(FLOW_ZERO)) / np.float32(FLOW_ZERO)).reshape(1, 256)
RGB_LUT = (
    ((np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0) - IMAGENET_MEAN) / IMAGENET_STD)
    .astype(np.float32)
    .reshape(1, 256, 3)
)


@dataclass(frozen=True, kw_only=True)
class TransformConfig:
    """Crop size and augmentation settings of both streams."""

    crop_size: int = 224
    scales: tuple[float, ...] = TSN_SCALES
    max_distort: int = 1  # how many scale steps width and height may differ (TSN: 1; Wang et al.: any, 3)
    crop_positions: int = 13  # 13: TSN's fixed offsets; 5: Wang et al.'s corner cropping (4 corners + centre)
    flip: bool = True
    test_crops: int = 1  # 1: centre crop; 10: 4 corners + centre, each also flipped

    def __post_init__(self) -> None:
        if self.crop_size < 8:
            raise ValueError(f"crop_size must be >= 8, got {self.crop_size}")
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be in (0, 1], got {self.scales}")
        if self.max_distort < 0:
            raise ValueError(f"max_distort must be >= 0, got {self.max_distort}")
        if self.crop_positions not in CROP_POSITIONS:
            raise ValueError(f"crop_positions must be 5 (corners + centre) or 13 (TSN's), got {self.crop_positions}")
        if self.test_crops not in TEST_CROPS:
            raise ValueError(f"test_crops must be 1 or 10, got {self.test_crops}")


@dataclass(frozen=True)
class Box:
    """A crop rectangle in stored pixels."""

    x: int
    y: int
    w: int
    h: int


# --- crop boxes -------------------------------------------------------------------------


def fixed_offsets(width: int, height: int, crop_w: int, crop_h: int, count: int = 13) -> list[tuple[int, int]]:
    """TSN's 13 fixed crop positions: corners, centre, edge midpoints and quarter points; the
    first 5 (count=5) are Wang et al.'s corner cropping: the 4 corners and the centre."""
    ws, hs = (width - crop_w) // 4, (height - crop_h) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    return [(i * ws, j * hs) for i, j in grid[:count]]


def multiscale_box(height: int, width: int, cfg: TransformConfig, rng: random.Random) -> Box:
    """A random multi-scale corner crop (TSN's GroupMultiScaleCrop with fixed offsets).

    Wang et al. 2015's multi-scale cropping draws width and height each from {256, 224, 192,
    168} of 256 (TSN_SCALES; max_distort=3 lets them differ freely, TSN's default 1 keeps them
    within one step) at one of the corner positions.
    """
    base = min(height, width)
    sizes = [max(1, int(base * s)) for s in cfg.scales]
    pairs = [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= cfg.max_distort]
    crop_w, crop_h = rng.choice(pairs)
    x, y = rng.choice(fixed_offsets(width, height, crop_w, crop_h, cfg.crop_positions))
    return Box(x, y, crop_w, crop_h)


def centre_box(height: int, width: int, size: int) -> Box:
    """A size x size box in the middle (the frame must be at least that big)."""
    return Box((width - size) // 2, (height - size) // 2, size, size)


def five_boxes(height: int, width: int, size: int) -> list[Box]:
    """Four corners and the centre (the first half of the 10-crop test)."""
    right, bottom = width - size, height - size
    return [
        Box(0, 0, size, size),
        Box(right, 0, size, size),
        Box(0, bottom, size, size),
        Box(right, bottom, size, size),
        centre_box(height, width, size),
    ]


def eval_side(height: int, width: int, scales: tuple[float, ...] = TSN_SCALES) -> int:
    """Side in stored pixels of a test crop: TEST_FRACTION of the short side.

    Cropping it and resizing to crop_size is the same view as resizing the frame to a short
    side of crop_size / 0.875 and cropping crop_size there (up to rounding), at a scale
    inside training's multi-scale range (module docstring). Training scales that exclude
    0.875 (`--crop-scales 1`: whole short side) move the fraction to the nearest end of
    their range, so a test view is never at a scale training never showed.
    """
    fraction = min(max(TEST_FRACTION, min(scales)), max(scales))
    return max(1, round(min(height, width) * fraction))


def eval_boxes(height: int, width: int, cfg: TransformConfig) -> list[tuple[Box, bool]]:
    """The (box, flip) test views: the centre, or the 4 corners + centre and their mirrors."""
    side = eval_side(height, width, cfg.scales)
    boxes = [centre_box(height, width, side)] if cfg.test_crops == 1 else five_boxes(height, width, side)
    return [(b, False) for b in boxes] + ([(b, True) for b in boxes] if cfg.test_crops == 10 else [])


# --- array ops ---------------------------------------------------------------------------


def stack_fields(planes: list[np.ndarray]) -> np.ndarray:
    """L stored fields, each a (2H, W) plane with x over y -> (2L, H, W) [x_0, y_0, x_1, ...].

    The reshape is free: rows [0, H) of plane l become channel 2l and rows [H, 2H) 2l + 1.
    """
    stacked = np.stack(planes)
    length, h2, w = stacked.shape
    if h2 % 2:
        raise ValueError(f"a flow plane must have an even height (x over y), got {h2}")
    return stacked.reshape(2 * length, h2 // 2, w)


class FieldPlanes:
    """L decoded flow fields, each a (2H, W) plane with x over y, seen as (2L, H, W) channels.

    Channel 2l is the top half of plane l and 2l + 1 its bottom half: views, never copies
    (stacking the full-size planes would cost as much as cropping them).
    """

    def __init__(self, planes: list[np.ndarray]):
        h2, w = planes[0].shape
        if h2 % 2 or any(p.shape != (h2, w) for p in planes):
            raise ValueError(f"flow planes must share one (2H, W) shape, got {[p.shape for p in planes]}")
        self.planes, self.h = planes, h2 // 2
        self.shape = (2 * len(planes), self.h, w)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, c: int) -> np.ndarray:
        plane = self.planes[c // 2]
        return plane[: self.h] if c % 2 == 0 else plane[self.h :]

    def __iter__(self):
        return (self[c] for c in range(len(self)))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = stack_fields(self.planes)
        return out if dtype is None else out.astype(dtype)


def interleave(flow_q: np.ndarray) -> np.ndarray:
    """(L, H, W, 2) fields (encode.decode_flow_q's layout) -> (2L, H, W) [x_0, y_0, x_1, ...]."""
    length, h, w, two = flow_q.shape
    if two != 2:
        raise ValueError(f"flow fields must have 2 components, got shape {flow_q.shape}")
    return np.ascontiguousarray(flow_q.transpose(0, 3, 1, 2)).reshape(2 * length, h, w)


def crop_resize(img: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Crop (H, W, C) to `box` and resize it to (size, size, C), bilinear."""
    patch = img[box.y : box.y + box.h, box.x : box.x + box.w]
    if patch.shape[:2] != (size, size):
        patch = cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)
    return patch if patch.ndim == 3 else patch[..., None]


def crop_resize_planes(planes: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Crop (C, H, W) to `box` and resize each channel to (size, size), bilinear."""
    patch = planes[:, box.y : box.y + box.h, box.x : box.x + box.w]
    if patch.shape[1:] == (size, size):
        return patch
    out = np.empty((len(patch), size, size), np.uint8)
    for c in range(len(patch)):
        cv2.resize(patch[c], (size, size), dst=out[c], interpolation=cv2.INTER_LINEAR)
    return out


def normalize_rgb(img: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 -> (3, S, S) float32 with ImageNet mean/std."""
    x = (img.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def normalize_flow(planes: np.ndarray) -> np.ndarray:
    """(2L, S, S) quantized -> float32 (q - 128) / 128."""
    x = planes.astype(np.float32)
    x -= FLOW_ZERO
    x *= 1.0 / FLOW_ZERO  # exact: a power of two
    return x


def hflip_rgb(x: np.ndarray) -> np.ndarray:
    """Mirror (..., C, H, W) left-right."""
    return np.ascontiguousarray(x[..., ::-1])


def hflip_flow(x: np.ndarray) -> np.ndarray:
    """Mirror (..., 2L, H, W) left-right and negate x (even channels); y is kept."""
    out = np.ascontiguousarray(x[..., ::-1])
    out[..., 0::2, :, :] *= -1.0
    return out


# --- item transforms ----------------------------------------------------------------------


def _frame_size(rgb: np.ndarray | None, flow: list | None) -> tuple[int, int]:
    """(H, W) shared by both streams; they must match for a shared crop to align them."""
    sizes = set()
    if rgb is not None:
        sizes.add(tuple(rgb.shape[2:4]))  # (K, F, H, W, 3)
    if flow is not None:
        sizes.add(tuple(flow[0].shape[1:3]))  # each snippet (2L, H, W)
    if len(sizes) != 1:
        raise ValueError(f"RGB and flow must have one stored size to be cropped together, got {sorted(sizes)}")
    return sizes.pop()


def _apply(rgb, flow, boxes_flips, size):
    """Crop, resize, normalize and optionally flip every snippet for each (box, flip) view.

    rgb (K, F, H, W, 3) uint8 -> (V, K, 3F, S, S); flow K x (2L, H, W) -> (V, K, 2L, S, S).
    Views are written straight into the output arrays.
    """
    views = len(boxes_flips)
    out_rgb = out_flow = None
    if rgb is not None:
        k, f = rgb.shape[:2]
        out_rgb = np.empty((views, k, f, 3, size, size), np.float32)
        for v, (box, flip) in enumerate(boxes_flips):
            for i in range(k):
                for j in range(f):
                    _rgb_view(rgb[i, j], box, flip, size, out_rgb[v, i, j])
        out_rgb = out_rgb.reshape(views, k, 3 * f, size, size)
    if flow is not None:
        out_flow = np.empty((views, len(flow), len(flow[0]), size, size), np.float32)
        for v, (box, flip) in enumerate(boxes_flips):
            for i, stack in enumerate(flow):
                _flow_view(stack, box, flip, size, out_flow[v, i])
    return out_rgb, out_flow


def _rgb_view(frame: np.ndarray, box: Box, flip: bool, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """= hflip_rgb(normalize_rgb(crop_resize(...))) when flipped: uint8 work, then one LUT."""
    patch = crop_resize(frame, box, size)
    if flip:
        patch = cv2.flip(patch, 1)
    if out is None:
        out = np.empty((3, size, size), np.float32)
    out[...] = cv2.LUT(patch, RGB_LUT).transpose(2, 0, 1)
    return out


def _flow_view(stack, box: Box, flip: bool, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """= hflip_flow(normalize_flow(crop_resize_planes(...))) when flipped.

    Crop, resize and mirror in uint8 channel by channel, one LUT pass to float for the
    whole stack, then x negated in place (exact).
    """
    channels = len(stack)
    buf = np.empty((channels, size, size), np.uint8)
    for c in range(channels):
        plane = stack[c][box.y : box.y + box.h, box.x : box.x + box.w]
        if plane.shape == (size, size):
            buf[c] = plane
        else:
            cv2.resize(plane, (size, size), dst=buf[c], interpolation=cv2.INTER_LINEAR)
    if flip:
        buf = np.ascontiguousarray(buf[:, :, ::-1])
    if out is None:
        out = np.empty((channels, size, size), np.float32)
    cv2.LUT(buf.reshape(channels * size, size), FLOW_LUT, dst=out.reshape(channels * size, size))
    if flip:
        np.negative(out[0::2], out=out[0::2])
    return out


def train_views(
    rgb: np.ndarray | None, flow: list | None, cfg: TransformConfig, rng: random.Random
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One random multi-scale crop and flip shared by every snippet, frame and stream.

    rgb: (K, F, H, W, 3) uint8 (K snippets of F frames); flow: K stacks of (2L, H, W)
    (arrays or FieldPlanes). Returns (1, K, 3F, S, S) and (1, K, 2L, S, S) float32.
    """
    h, w = _frame_size(rgb, flow)
    box = multiscale_box(h, w, cfg, rng)
    flip = cfg.flip and rng.random() < 0.5
    return _apply(rgb, flow, [(box, flip)], cfg.crop_size)


def eval_views(
    rgb: np.ndarray | None, flow: list | None, cfg: TransformConfig
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Centre crop (V = 1) or 10 crops (corners + centre, and their mirrors: V = 10), at
    training's scale (`eval_boxes`); shapes as `train_views`."""
    h, w = _frame_size(rgb, flow)
    return _apply(rgb, flow, eval_boxes(h, w, cfg), cfg.crop_size)
