"""Flow accuracy against exact ground truth: known-motion photo pairs, .flo files, EPE.

One implementation for `flowshard flow-check` and bench/gpu_flow.py (and the estimator
tests), so the command and the benchmark report the same numbers for the same estimator,
size and pairs.

Ground truth: frame 1 is a crop of a photograph shipped with flowshard (`pipeline.synthetic.photos`);
frame 0 samples the same photograph at p + d(p) (cv2.remap, bicubic) for a known field d, so
I0(p) = I1(p + d(p)) holds exactly on frame 0's grid: the flow convention of every
estimator (x right, y down, pixels). A border of (max motion + 6) px is left out of the
scores, where content leaves the frame or has no neighbours.

Scores per case (a set of pairs of one motion): mean end-point error (EPE, px) over valid
pixels, the share of valid pixels whose end-point error exceeds 3 px (outliers), and
pairs/s of the estimator calls (after one untimed warm-up call per estimator).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.synthetic.photos import photo_texture

MOTIONS = ("shift_subpixel", "shift_pixels", "zoom", "rotate", "smooth_field")
OUTLIER_PX = 3.0
FLO_MAGIC = 202021.25  # Middlebury .flo: float32 magic, int32 width, int32 height, then (H, W, 2) float32
FLO_UNKNOWN = 1e9  # Middlebury marks unknown flow with components above this


# --- ground truth ----------------------------------------------------------------------------


def _smooth_field(height: int, width: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random (H, W, 2) field with max |component| = amplitude."""
    sigma = 0.15 * min(height, width)
    noise = rng.standard_normal((height, width, 2)).astype(np.float32)
    field = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return field * (amplitude / max(1e-6, float(np.abs(field).max())))


def motion_field(kind: str, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Ground-truth flow d (H, W, 2), x right / y down, pixels, on frame 0's grid."""
    rng = np.random.default_rng(1000 + seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    if kind == "shift_subpixel":
        d = rng.uniform(0.2, 0.8, 2) * rng.choice([-1, 1], 2)
        return np.broadcast_to(d.astype(np.float32), (height, width, 2)).copy()
    if kind == "shift_pixels":
        d = rng.uniform(2.0, 4.0, 2) * rng.choice([-1, 1], 2)
        return np.broadcast_to(d.astype(np.float32), (height, width, 2)).copy()
    if kind == "zoom":  # 3 % expansion about the centre
        return np.stack([0.03 * (xs - cx), 0.03 * (ys - cy)], axis=-1)
    if kind == "rotate":  # 2 degrees about the centre
        a = math.radians(2.0)
        rx = math.cos(a) * (xs - cx) - math.sin(a) * (ys - cy) + cx
        ry = math.sin(a) * (xs - cx) + math.cos(a) * (ys - cy) + cy
        return np.stack([rx - xs, ry - ys], axis=-1).astype(np.float32)
    if kind == "smooth_field":
        return _smooth_field(height, width, 2.5, rng)
    raise ValueError(f"unknown motion {kind!r}; choose one of {MOTIONS}")


def to_u8(a: np.ndarray) -> np.ndarray:
    """Round and clip to uint8."""
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def photo_pair(kind: str, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two uint8 grey frames and the true flow d from frame 0 to frame 1: I0(p) = I1(p + d(p)).

    A margin of photograph around the crop keeps every sample inside real content.
    """
    flow = motion_field(kind, height, width, seed)
    pad = int(math.ceil(float(np.abs(flow).max()))) + 4
    src = photo_texture(height + 2 * pad, width + 2 * pad, seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    map_x, map_y = xs + flow[..., 0] + pad, ys + flow[..., 1] + pad
    frame0 = cv2.remap(src, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    frame1 = src[pad : pad + height, pad : pad + width]
    return to_u8(frame0), to_u8(frame1), flow


def motion_batch(kind: str, height: int, width: int, pairs: int, seed: int = 0):
    """`pairs` photo pairs of one motion (different photos and draws): (prev, nxt, flow) stacked."""
    triples = [photo_pair(kind, height, width, seed + k) for k in range(pairs)]
    return tuple(np.stack(parts) for parts in zip(*triples, strict=True))


def eval_margin(flow: np.ndarray) -> int:
    """Border to leave out of the scores: content there leaves the frame or has no neighbours."""
    return int(math.ceil(float(np.abs(flow).max()))) + 6


def interior(shape: tuple[int, int], margin: int) -> np.ndarray:
    """(H, W) bool mask, True `margin` pixels in from every side."""
    mask = np.zeros(shape, bool)
    mask[margin : shape[0] - margin, margin : shape[1] - margin] = True
    return mask


# --- scores ----------------------------------------------------------------------------------


def endpoint_errors(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-pixel end-point error |estimate - truth| of (..., H, W, 2) arrays."""
    diff = np.asarray(estimate, np.float64) - np.asarray(truth, np.float64)
    return np.sqrt((diff**2).sum(-1))


def mean_epe(estimate: np.ndarray, truth: np.ndarray, margin: int) -> float:
    """Mean end-point error over (..., H, W, 2) arrays, `margin` pixels in from every side."""
    err = endpoint_errors(estimate, truth)
    return float(err[..., margin : err.shape[-2] - margin, margin : err.shape[-1] - margin].mean())


@dataclass(frozen=True)
class Case:
    """Frame pairs with known flow: prev, nxt (N, H, W) uint8, truth (N, H, W, 2), valid (N, H, W)."""

    name: str
    prev: np.ndarray
    nxt: np.ndarray
    truth: np.ndarray
    valid: np.ndarray

    @property
    def max_motion(self) -> float:
        t = self.truth[self.valid]
        return float(np.abs(t).max()) if t.size else 0.0


@dataclass(frozen=True)
class Score:
    """A case's scores: mean EPE (px), outliers (fraction of valid pixels with EPE > 3 px), pairs/s."""

    name: str
    pairs: int
    size: tuple[int, int]  # (width, height)
    max_motion: float
    epe: float
    outliers: float
    pairs_per_s: float

    def as_dict(self) -> dict:
        return {
            "case": self.name,
            "pairs": self.pairs,
            "width": self.size[0],
            "height": self.size[1],
            "max_motion_px": round(self.max_motion, 4),
            "epe": round(self.epe, 6),
            "outliers_3px": round(self.outliers, 6),
            "pairs_per_s": round(self.pairs_per_s, 4),
        }


def builtin_case(kind: str, height: int, width: int, pairs: int, seed: int = 0) -> Case:
    """The photo pairs of one motion, scored `eval_margin` px in from the border."""
    prev, nxt, truth = motion_batch(kind, height, width, pairs, seed)
    valid = np.broadcast_to(interior((height, width), eval_margin(truth)), prev.shape).copy()
    return Case(name=kind, prev=prev, nxt=nxt, truth=truth, valid=valid)


def builtin_cases(height: int = 256, width: int = 340, pairs: int = 4, motions=MOTIONS) -> list[Case]:
    """Every built-in motion at (height, width), `pairs` photo pairs each."""
    return [builtin_case(kind, height, width, pairs) for kind in motions]


def score(estimate: np.ndarray, case: Case, seconds: float) -> Score:
    """Scores of an estimate (N, H, W, 2) of `case`, computed in `seconds`."""
    if estimate.shape != case.truth.shape:
        raise ValueError(f"{case.name}: estimate of shape {estimate.shape}, ground truth {case.truth.shape}")
    err = endpoint_errors(estimate, case.truth)[case.valid]
    if not err.size:
        raise ValueError(f"{case.name}: no pixel has a known ground truth")
    return Score(
        name=case.name,
        pairs=len(case.prev),
        size=(case.prev.shape[2], case.prev.shape[1]),
        max_motion=case.max_motion,
        epe=float(err.mean()),
        outliers=float((err > OUTLIER_PX).mean()),
        pairs_per_s=len(case.prev) / max(seconds, 1e-9),
    )


def run_case(estimator, case: Case, batch_size: int = 16) -> tuple[np.ndarray, float]:
    """The estimator's flow for every pair of a case (batches of `batch_size`) and the seconds it took."""
    start = time.perf_counter()
    out = [
        np.asarray(estimator(case.prev[b : b + batch_size], case.nxt[b : b + batch_size]), np.float32)
        for b in range(0, len(case.prev), batch_size)
    ]
    return np.concatenate(out), time.perf_counter() - start


def evaluate(estimator, cases: list[Case], batch_size: int = 16, warm_up: bool = True) -> list[Score]:
    """Score `estimator` on every case; one untimed call on the first pair first (caches, kernels)."""
    if warm_up and cases:
        estimator(cases[0].prev[:1], cases[0].nxt[:1])
    scores = []
    for case in cases:
        estimate, seconds = run_case(estimator, case, batch_size)
        scores.append(score(estimate, case, seconds))
    return scores


def overall(scores: list[Score]) -> Score:
    """Pixel-weighted mean EPE and outliers over several cases, with their combined pairs/s."""
    weights = [s.pairs * s.size[0] * s.size[1] for s in scores]
    total = sum(weights)
    seconds = sum(s.pairs / s.pairs_per_s for s in scores)
    return Score(
        name="all",
        pairs=sum(s.pairs for s in scores),
        size=scores[0].size,
        max_motion=max(s.max_motion for s in scores),
        epe=sum(w * s.epe for w, s in zip(weights, scores, strict=True)) / total,
        outliers=sum(w * s.outliers for w, s in zip(weights, scores, strict=True)) / total,
        pairs_per_s=sum(s.pairs for s in scores) / max(seconds, 1e-9),
    )


def format_table(scores: list[Score]) -> list[str]:
    """The scores as aligned text lines (one per case, then the overall row)."""
    head = f"{'CASE':<16} {'PAIRS':>5} {'SIZE':>9} {'MAX PX':>7} {'EPE (px)':>9} {'>3 PX':>7} {'PAIRS/S':>8}"
    rows = [head]
    rows.extend(
        f"{s.name:<16} {s.pairs:>5} {s.size[0]:>4}x{s.size[1]:<4} {s.max_motion:>7.2f} "
        f"{s.epe:>9.4f} {100 * s.outliers:>6.2f}% {s.pairs_per_s:>8.2f}"
        for s in scores + ([overall(scores)] if len(scores) > 1 else [])
    )
    return rows


# --- user pairs --------------------------------------------------------------------------------


def read_flo(path: str | Path) -> np.ndarray:
    """A Middlebury .flo file -> (H, W, 2) float32; raises ValueError naming the file and the reason."""
    data = Path(path).read_bytes()
    if len(data) < 12 or np.frombuffer(data[:4], "<f4")[0] != np.float32(FLO_MAGIC):
        raise ValueError(f"{path}: not a Middlebury .flo file (bad magic number)")
    w, h = (int(v) for v in np.frombuffer(data[4:12], "<i4"))
    if w <= 0 or h <= 0 or len(data) != 12 + 8 * w * h:
        raise ValueError(f"{path}: .flo header says {w}x{h}, which does not match its {len(data)} bytes")
    return np.frombuffer(data[12:], "<f4").reshape(h, w, 2).copy()


def write_flo(path: str | Path, flow: np.ndarray) -> Path:
    """Write (H, W, 2) flow as a Middlebury .flo file."""
    flow = np.asarray(flow, np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    h, w = flow.shape[:2]
    path = Path(path)
    path.write_bytes(np.float32(FLO_MAGIC).tobytes() + np.array([w, h], "<i4").tobytes() + flow.astype("<f4").tobytes())
    return path


def read_gray(path: str | Path) -> np.ndarray:
    """An image file as grey uint8 (H, W); raises ValueError naming the file."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    return img


def file_case(first: str | Path, second: str | Path, gt: str | Path) -> Case:
    """A user's pair of frames with its ground truth (.flo); unknown flow values are not scored."""
    a, b, truth = read_gray(first), read_gray(second), read_flo(gt)
    if a.shape != b.shape:
        raise ValueError(f"{first} and {second}: frames of different sizes {a.shape[::-1]} and {b.shape[::-1]}")
    if truth.shape[:2] != a.shape:
        raise ValueError(
            f"{gt}: ground truth of {truth.shape[1]}x{truth.shape[0]} for frames of {a.shape[1]}x{a.shape[0]}"
        )
    valid = np.isfinite(truth).all(-1) & (np.abs(truth) < FLO_UNKNOWN).all(-1)
    return Case(
        name=Path(first).name,
        prev=a[None],
        nxt=b[None],
        truth=np.where(valid[..., None], truth, 0)[None],
        valid=valid[None],
    )
