"""Camera-motion compensation for warped optical flow (TSN's third modality).

Warped flow (Wang et al., TSN, after the improved trajectories of Wang & Schmid) removes the
camera's motion from the flow between frames t and t+step:

1. match features of the two frames (ORB or SIFT descriptors, each match restricted to a
   window of `max_shift` pixels, Lowe's ratio test), optionally outside given person boxes,
   since a moving person is not the camera;
2. fit a homography H mapping frame t's pixels to frame t+step's with RANSAC (reprojection
   threshold 1 px); H is taken only when there are at least `min_matches` matches and
   `min_inliers` inliers, else the camera is taken as still (identity), as in iDT;
3. warp frame t+step back by H: warped(p) = I_t+step(H p); where H p falls outside the frame
   (within `border` px of it) warped(p) = I_t(p), so the uncovered border gets zero flow;
4. compute flow of (I_t, warped) with the same estimator as the plain flow.

What remains is the motion relative to the background: the camera's pan, zoom and rotation
cancel, a person's own motion stays. Unlike iDT and TSN's denseflow, matches come from
descriptors only (not also from the plain flow), so H does not depend on the estimator and
the warped pairs can share a batch with the plain pairs. Person boxes, when a dataset has
them, keep features off people: `estimate_camera(..., mask=exclusion_mask(shape, boxes))`,
which `pipeline.stages.warped.warp_inputs(..., boxes=...)` does per pair.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

FEATURES = ("orb", "sift")


@dataclass(frozen=True, kw_only=True)
class WarpConfig:
    """How the camera motion between two frames is estimated (every field changes stored bytes)."""

    features: str = "orb"
    max_features: int = 1000  # keypoints per frame
    max_shift: float = 25.0  # px: a match may move at most this far between the two frames (iDT: 25)
    ratio: float = 0.8  # Lowe's ratio test among the candidates inside the window
    ransac_threshold: float = 1.0  # px, reprojection error of a RANSAC inlier (iDT: 1)
    min_matches: int = 50  # fewer matches: no estimate, identity (iDT: 50)
    min_inliers: int = 25  # fewer inliers: no estimate, identity (iDT: 25)
    border: int = 5  # px: warped pixels whose source lies this close to the frame edge take frame t

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise ValueError(f"unknown warp features {self.features!r}; choose one of {FEATURES}")
        if self.max_features < 8 or self.min_matches < 4 or self.min_inliers < 4:
            raise ValueError("max_features must be >= 8, min_matches and min_inliers >= 4")
        if self.max_shift <= 0 or self.ransac_threshold <= 0 or not 0 < self.ratio <= 1 or self.border < 0:
            raise ValueError("max_shift and ransac_threshold must be positive, ratio in (0, 1], border >= 0")

    def output_dict(self) -> dict:
        """The settings as stored in metadata and hashed into dataset versions."""
        return {
            "features": self.features,
            "max_features": self.max_features,
            "max_shift": self.max_shift,
            "ratio": self.ratio,
            "ransac_threshold": self.ransac_threshold,
            "min_matches": self.min_matches,
            "min_inliers": self.min_inliers,
            "border": self.border,
        }


@dataclass(frozen=True)
class CameraMotion:
    """The homography from frame t to frame t+step (3x3, H[2, 2] = 1) and the evidence for it."""

    matrix: np.ndarray
    matches: int
    inliers: int
    estimated: bool  # False: too few matches or inliers, identity used

    def as_meta(self) -> dict:
        """The per-field metadata: H row-major (9 numbers), matches, inliers, estimated."""
        return {
            "homography": [float(f"{v:.9g}") for v in self.matrix.ravel()],
            "matches": self.matches,
            "inliers": self.inliers,
            "estimated": self.estimated,
        }


IDENTITY = np.eye(3)


# --- features and homography ----------------------------------------------------------------


def _detector(cfg: WarpConfig, shape: tuple[int, int]):
    if cfg.features == "sift":
        return cv2.SIFT_create(nfeatures=cfg.max_features), cv2.NORM_L2
    # ORB's patch (31 px by default) and edge margin must fit small frames.
    patch = int(min(31, max(9, min(shape) // 4)))
    return cv2.ORB_create(
        nfeatures=cfg.max_features, edgeThreshold=patch, patchSize=patch, fastThreshold=10
    ), cv2.NORM_HAMMING


def exclusion_mask(shape: tuple[int, int], boxes: Iterable[Sequence[float]]) -> np.ndarray:
    """uint8 (H, W) detection mask: 255 where features may be used, 0 inside any box.

    boxes: (x0, y0, x1, y1) in pixels of the frame (e.g. person detections), clipped to it.
    """
    h, w = shape
    mask = np.full((h, w), 255, np.uint8)
    for box in boxes:
        if len(box) != 4:
            raise ValueError(f"a box is (x0, y0, x1, y1), got {box!r}")
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        mask[max(0, y0) : max(0, min(h, y1)), max(0, x0) : max(0, min(w, x1))] = 0
    return mask


def match_features(
    prev: np.ndarray, nxt: np.ndarray, cfg: WarpConfig, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Matched keypoint positions (N, 2) in frame t and frame t+step (float32, x then y)."""
    detector, norm = _detector(cfg, prev.shape)
    kp0, d0 = detector.detectAndCompute(prev, mask)
    kp1, d1 = detector.detectAndCompute(nxt, mask)
    if d0 is None or d1 is None or len(kp0) < 2 or len(kp1) < 2:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    p0 = np.array([k.pt for k in kp0], np.float32)
    p1 = np.array([k.pt for k in kp1], np.float32)
    # Candidates only within max_shift of each other (iDT's windowed matching mask).
    near = (np.linalg.norm(p0[:, None] - p1[None], axis=-1) <= cfg.max_shift).astype(np.uint8)
    pairs = cv2.BFMatcher(norm).knnMatch(d0, d1, k=2, mask=near)
    keep = [m[0] for m in pairs if m and (len(m) == 1 or m[0].distance < cfg.ratio * m[1].distance)]
    return (
        np.array([p0[m.queryIdx] for m in keep], np.float32).reshape(-1, 2),
        np.array([p1[m.trainIdx] for m in keep], np.float32).reshape(-1, 2),
    )


def track_corners(
    prev: np.ndarray, nxt: np.ndarray, cfg: WarpConfig, guess: np.ndarray | None, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Corners of frame t tracked into frame t+step with sub-pixel precision (pyramidal
    Lucas-Kanade, started where the homography `guess` puts them): (N, 2) and (N, 2) float32.

    Descriptor matches are robust but sit on whole pixels (or coarser, at ORB's pyramid
    levels), which a 1 px RANSAC threshold cannot fit well; iDT adds matches read off the
    dense flow for this, these come from tracking instead, independent of the estimator.
    """
    pts = cv2.goodFeaturesToTrack(prev, maxCorners=cfg.max_features, qualityLevel=0.001, minDistance=3, mask=mask)
    if pts is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    pts = pts.reshape(-1, 1, 2).astype(np.float32)
    flags = 0
    start = pts.copy()
    if guess is not None:
        start = cv2.perspectiveTransform(pts, guess).astype(np.float32)
        flags = cv2.OPTFLOW_USE_INITIAL_FLOW
    moved, status, _ = cv2.calcOpticalFlowPyrLK(prev, nxt, pts, start, winSize=(15, 15), maxLevel=3, flags=flags)
    ok = (status.ravel() == 1) & (np.linalg.norm((moved - pts).reshape(-1, 2), axis=1) <= cfg.max_shift)
    return pts.reshape(-1, 2)[ok], moved.reshape(-1, 2)[ok]


def _fit(p0: np.ndarray, p1: np.ndarray, cfg: WarpConfig) -> tuple[np.ndarray | None, int]:
    """RANSAC homography of matches (None when it cannot be fitted) and its inlier count."""
    if len(p0) < 4:
        return None, 0
    h, inliers = cv2.findHomography(p0, p1, cv2.RANSAC, cfg.ransac_threshold)
    if h is None or not np.isfinite(h).all() or abs(h[2, 2]) < 1e-12:
        return None, 0
    return h / h[2, 2], int(inliers.sum())


def estimate_camera(prev: np.ndarray, nxt: np.ndarray, cfg: WarpConfig, mask: np.ndarray | None = None) -> CameraMotion:
    """The camera motion between grey uint8 frames prev (t) and nxt (t+step) as a homography.

    Descriptor matches give a first estimate, which starts sub-pixel corner tracking; the
    homography is fitted (RANSAC) to both sets of matches together, as iDT merges its two.
    mask: optional uint8 (H, W), 0 where features must not be taken (`exclusion_mask`).
    """
    if prev.ndim != 2 or prev.shape != nxt.shape or prev.dtype != np.uint8:
        raise ValueError(f"estimate_camera takes two grey uint8 frames of one size, got {prev.shape} {nxt.shape}")
    d0, d1 = match_features(prev, nxt, cfg, mask)
    guess, _ = _fit(d0, d1, cfg)
    t0, t1 = track_corners(prev, nxt, cfg, guess, mask)
    p0, p1 = np.concatenate([d0, t0]), np.concatenate([d1, t1])
    h, count = _fit(p0, p1, cfg) if len(p0) >= cfg.min_matches else (None, 0)
    if h is None or count < cfg.min_inliers:
        return CameraMotion(matrix=IDENTITY.copy(), matches=len(p0), inliers=count, estimated=False)
    return CameraMotion(matrix=h, matches=len(p0), inliers=count, estimated=True)


# --- warping ------------------------------------------------------------------------------------


def source_maps(matrix: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel p of frame t lands in frame t+step under H: (map_x, map_y) float32."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    m = np.asarray(matrix, np.float64)
    den = m[2, 0] * xs + m[2, 1] * ys + m[2, 2]
    den = np.where(np.abs(den) < 1e-12, 1e-12, den)
    mx = (m[0, 0] * xs + m[0, 1] * ys + m[0, 2]) / den
    my = (m[1, 0] * xs + m[1, 1] * ys + m[1, 2]) / den
    return mx.astype(np.float32), my.astype(np.float32)


def compensate(prev: np.ndarray, nxt: np.ndarray, matrix: np.ndarray, border: int = 5) -> np.ndarray:
    """Frame t+step warped back by the camera motion: out(p) = nxt(H p), or prev(p) where H p
    falls within `border` px of the frame edge or outside it. Grey or RGB uint8, same shape."""
    h, w = prev.shape[:2]
    if np.allclose(matrix, IDENTITY):
        return nxt.copy()
    mx, my = source_maps(matrix, h, w)
    out = cv2.remap(nxt, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (mx > border) & (mx < w - 1 - border) & (my > border) & (my < h - 1 - border)
    if out.ndim == 3:
        inside = inside[..., None]
    return np.where(inside, out, prev)


def homography_flow(matrix: np.ndarray, height: int, width: int) -> np.ndarray:
    """The flow (H, W, 2) that the homography alone explains: H p - p."""
    mx, my = source_maps(matrix, height, width)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([mx - xs, my - ys], axis=-1)
