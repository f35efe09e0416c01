"""Synthetic videos with a moving camera and an independently moving object, with exact ground truth.

The scene is a photograph (the background, `pipeline.synthetic.photos`) with a textured, elliptical
object (a crop of another photograph) that moves across it by `object_speed` scene pixels
per frame. The camera pans by `pan` scene pixels per frame and zooms by `zoom` per frame:
frame t shows the scene through the similarity A_t (frame pixel p sees scene point
A_t p = s_t p + o_t, s_t = (1 + zoom)^t, o_t = t pan + the zoom centre's correction).

Ground truth, for the pair (t, t+1):
  - plain flow: a background point p moves to A_{t+1}^-1 A_t p (the camera homography H_t),
    an object point to A_{t+1}^-1 (A_t p + object_speed);
  - warped flow (camera compensated, what `pipeline.flow.warp` aims at): 0 on the background,
    A_t^-1 (A_t p + object_speed) - p = object_speed / s_t on the object: its own motion in
    the scene, in frame t's pixels;
  - the object mask of frame t (where the object covers the background).
Frames are rendered by sampling the scene with cv2.remap (bicubic) at exact coordinates, so
the ground truth holds away from the object's anti-aliased edge (test against eroded masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.synthetic.photos import photo_texture


@dataclass(frozen=True, kw_only=True)
class CameraSceneConfig:
    """Size, length and motions of a camera-motion clip (pixels per frame, in scene pixels)."""

    width: int = 128
    height: int = 96
    frames: int = 8
    pan: tuple[float, float] = (3.0, 1.0)  # camera motion per frame; the background moves by -pan
    zoom: float = 0.0  # relative scale change per frame (0.01: 1 % zoom out of the scene per frame)
    object_speed: tuple[float, float] = (-2.0, 0.5)
    object_size: float = 0.35  # object height as a share of the frame height
    seed: int = 0

    def __post_init__(self) -> None:
        if self.width < 32 or self.height < 32 or self.frames < 2:
            raise ValueError(f"need at least 32x32 frames and 2 frames, got {self.width}x{self.height}, {self.frames}")
        if not 0.05 <= self.object_size <= 0.8 or abs(self.zoom) >= 0.2:
            raise ValueError("object_size must be in [0.05, 0.8] and |zoom| < 0.2")


@dataclass(frozen=True)
class CameraScene:
    """A rendered clip and its ground truth (T frames, T - 1 pairs)."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    flow: np.ndarray  # (T-1, H, W, 2) float32: true plain flow t -> t+1
    warped_flow: np.ndarray  # (T-1, H, W, 2) float32: true camera-compensated flow
    object_mask: np.ndarray  # (T-1, H, W) bool: object pixels of frame t
    homographies: np.ndarray  # (T-1, 3, 3): the camera's homography from frame t to t+1


def camera_matrix(cfg: CameraSceneConfig, t: int) -> np.ndarray:
    """A_t (3x3): frame t's pixel -> scene point; zooming about the frame centre."""
    s = (1.0 + cfg.zoom) ** t
    cx, cy = (cfg.width - 1) / 2.0, (cfg.height - 1) / 2.0
    ox = t * cfg.pan[0] + cx * (1 - s)
    oy = t * cfg.pan[1] + cy * (1 - s)
    return np.array([[s, 0, ox], [0, s, oy], [0, 0, 1]], np.float64)


def _apply(m: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    den = m[2, 0] * xs + m[2, 1] * ys + m[2, 2]
    return (m[0, 0] * xs + m[0, 1] * ys + m[0, 2]) / den, (m[1, 0] * xs + m[1, 1] * ys + m[1, 2]) / den


class _Scene:
    """The background photograph, the object sprite, and where everything is at time t."""

    def __init__(self, cfg: CameraSceneConfig) -> None:
        self.cfg = cfg
        corners = [
            camera_matrix(cfg, t) @ np.array([x, y, 1.0])
            for t in (0, cfg.frames - 1)
            for x in (0, cfg.width)
            for y in (0, cfg.height)
        ]
        lo = np.min([c[:2] for c in corners], axis=0) - 8
        hi = np.max([c[:2] for c in corners], axis=0) + 8
        self.origin = lo  # scene coordinates of background pixel (0, 0)
        bw, bh = (int(np.ceil(v)) for v in hi - lo)
        self.background = photo_texture(bh, bw, seed=cfg.seed, gray=False)
        oh = max(8, int(round(cfg.object_size * cfg.height)))
        ow = max(8, int(round(0.6 * oh)))
        self.sprite = photo_texture(oh, ow, seed=cfg.seed + 1, gray=False)
        yy, xx = np.mgrid[0:oh, 0:ow].astype(np.float32)
        self.alpha = (((xx - (ow - 1) / 2) / (ow / 2)) ** 2 + ((yy - (oh - 1) / 2) / (oh / 2)) ** 2) <= 1.0
        self.alpha = self.alpha.astype(np.float32)
        # The object starts so that it crosses the frame centre halfway through the clip.
        centre = camera_matrix(cfg, cfg.frames // 2) @ np.array([(cfg.width - 1) / 2, (cfg.height - 1) / 2, 1.0])
        self.object_origin = centre[:2] - np.array([ow / 2, oh / 2]) - np.array(cfg.object_speed) * (cfg.frames // 2)

    def object_at(self, t: int) -> np.ndarray:
        """Scene coordinates of the sprite's pixel (0, 0) at time t."""
        return self.object_origin + t * np.array(self.cfg.object_speed)

    def render(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame t (uint8 RGB) and its object coverage (float 0..1)."""
        cfg = self.cfg
        ys, xs = np.mgrid[0 : cfg.height, 0 : cfg.width].astype(np.float64)
        sx, sy = _apply(camera_matrix(cfg, t), xs, ys)
        bg = cv2.remap(
            self.background,
            (sx - self.origin[0]).astype(np.float32),
            (sy - self.origin[1]).astype(np.float32),
            cv2.INTER_CUBIC,
            borderMode=cv2.BORDER_REFLECT,
        )
        o = self.object_at(t)
        mx, my = (sx - o[0]).astype(np.float32), (sy - o[1]).astype(np.float32)
        fg = cv2.remap(self.sprite, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        a = cv2.remap(self.alpha, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        frame = a[..., None] * fg + (1 - a[..., None]) * bg
        return np.clip(np.rint(frame), 0, 255).astype(np.uint8), a


def render_scene(cfg: CameraSceneConfig) -> CameraScene:
    """Render the clip of `cfg` with its exact ground truth."""
    scene = _Scene(cfg)
    rendered = [scene.render(t) for t in range(cfg.frames)]
    ys, xs = np.mgrid[0 : cfg.height, 0 : cfg.width].astype(np.float64)
    speed = np.array(cfg.object_speed)
    flows, warped, masks, homs = [], [], [], []
    for t in range(cfg.frames - 1):
        a_t, a_next_inv = camera_matrix(cfg, t), np.linalg.inv(camera_matrix(cfg, t + 1))
        hom = a_next_inv @ a_t
        on_object = rendered[t][1] > 0.5
        sx, sy = _apply(a_t, xs, ys)
        ox, oy = np.where(on_object, sx + speed[0], sx), np.where(on_object, sy + speed[1], sy)
        nx, ny = _apply(a_next_inv, ox, oy)  # where each point of frame t is in frame t+1
        flows.append(np.stack([nx - xs, ny - ys], -1))
        wx, wy = _apply(np.linalg.inv(a_t), ox, oy)  # the same, with the camera held still
        warped.append(np.stack([wx - xs, wy - ys], -1))
        masks.append(on_object)
        homs.append(hom / hom[2, 2])
    return CameraScene(
        frames=np.stack([f for f, _ in rendered]),
        flow=np.stack(flows).astype(np.float32),
        warped_flow=np.stack(warped).astype(np.float32),
        object_mask=np.stack(masks),
        homographies=np.stack(homs),
    )


def erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    """A bool mask (..., H, W) shrunk by `pixels` (to score away from edges)."""
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    flat = mask.reshape(-1, *mask.shape[-2:]).astype(np.uint8)
    return np.stack([cv2.erode(m, kernel) > 0 for m in flat]).reshape(mask.shape)


def score_regions(scene: CameraScene, object_margin: int = 3, border: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(background, object) masks (T-1, H, W) to score on: away from the object's edge and the
    frame border, and background pixels that stay in view in frame t+1."""
    _t, h, w = scene.object_mask.shape
    inner = np.zeros((h, w), bool)
    inner[border : h - border, border : w - border] = True
    obj = erode(scene.object_mask, object_margin) & inner
    near_object = ~erode(~scene.object_mask, object_margin + 3)
    ys, xs = np.mgrid[0:h, 0:w]
    lands = [
        (f[..., 0] + xs >= border)
        & (f[..., 0] + xs < w - border)
        & (f[..., 1] + ys >= border)
        & (f[..., 1] + ys < h - border)
        for f in scene.flow
    ]
    bg = ~near_object & inner & np.stack(lands)
    return bg, obj


def write_camera_videos(root: str | Path, configs: dict[str, CameraSceneConfig], fps: float = 25.0) -> dict[str, Path]:
    """Write each named clip as an (almost lossless) mp4 under root; returns name -> path."""
    from pipeline.synthetic.motion import write_video

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return {
        name: write_video(root / f"{name}.mp4", iter(render_scene(cfg).frames), fps, quality="10")
        for name, cfg in configs.items()
    }
