"""Benchmark the flow estimators: pairs/s at 340x256 and end-point error on known motion.

Measures the batched torch TV-L1 (CUDA when available, else CPU) over several batch sizes and
OpenCV's TV-L1 on one CPU core (cv2.setNumThreads(1)), with the same TVL1Params, and the mean
end-point error (EPE) of both on photographs warped by a known field (translation, zoom,
rotation, a smooth random deformation). Prints a Markdown report; --out also writes it.

    PYTHONPATH=. python bench/gpu_flow.py --out bench_flow.md      # GPU: full run, < 5 min on an H100
    PYTHONPATH=. python bench/gpu_flow.py --quick                  # CPU: a few minutes

The ground-truth generator lives here and the tests import it (tests/test_flow_torch.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger("bench.gpu_flow")

PHOTOS = ("astronaut", "camera", "coffee", "chelsea")  # real photographs shipped with scikit-image
MOTIONS = ("shift_subpixel", "shift_pixels", "zoom", "rotate", "smooth_field")
POOL = 4  # distinct pairs the speed rows cycle through


# ----------------------------------------------------------------------------- ground truth

def photo_texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A float32 grayscale crop (0..255) of a scikit-image photograph, at least (height, width).

    The photo is shrunk (area interpolation, no aliasing) so that small frames still hold a
    good part of the scene rather than a flat patch of it.
    """
    import skimage.data

    rng = np.random.default_rng(seed)
    img = getattr(skimage.data, PHOTOS[seed % len(PHOTOS)])()
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    side = min(gray.shape)
    scale = min(1.0, 1.3 * max(height, width) / side)
    scale = max(scale, height / gray.shape[0], width / gray.shape[1])
    size = (max(width, round(gray.shape[1] * scale)), max(height, round(gray.shape[0] * scale)))
    small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    y = rng.integers(0, small.shape[0] - height + 1)
    x = rng.integers(0, small.shape[1] - width + 1)
    return np.ascontiguousarray(small[y:y + height, x:x + width])


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


def photo_pair(kind: str, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two uint8 frames and the true flow d from frame 0 to frame 1: I0(p) = I1(p + d(p)).

    Frame 1 is a crop of a photograph; frame 0 samples the same photograph at p + d(p)
    (cv2.remap, bicubic), so d is exact on frame 0's grid, the convention every estimator uses.
    A margin of photograph around the crop keeps every sample inside real content.
    """
    flow = motion_field(kind, height, width, seed)
    pad = int(math.ceil(float(np.abs(flow).max()))) + 4
    src = photo_texture(height + 2 * pad, width + 2 * pad, seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    map_x, map_y = xs + flow[..., 0] + pad, ys + flow[..., 1] + pad
    frame0 = cv2.remap(src, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    frame1 = src[pad:pad + height, pad:pad + width]
    to_u8 = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)  # noqa: E731
    return to_u8(frame0), to_u8(frame1), flow


def eval_margin(flow: np.ndarray) -> int:
    """Border to leave out of the EPE: content there leaves the frame or has no neighbours."""
    return int(math.ceil(float(np.abs(flow).max()))) + 6


def mean_epe(estimate: np.ndarray, truth: np.ndarray, margin: int) -> float:
    """Mean end-point error over (..., H, W, 2) arrays, `margin` pixels in from every side."""
    diff = (estimate - truth)[..., margin:-margin, margin:-margin, :]
    return float(np.sqrt((diff ** 2).sum(-1)).mean())


def motion_batch(kind: str, height: int, width: int, pairs: int, seed: int = 0):
    """`pairs` photo pairs of one motion (different photos and draws): (prev, nxt, flow) stacked."""
    triples = [photo_pair(kind, height, width, seed + k) for k in range(pairs)]
    return tuple(np.stack(parts) for parts in zip(*triples))


# ----------------------------------------------------------------------------- measurements

@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What the benchmark runs; --quick shrinks it for a CPU."""

    height: int = 256
    width: int = 340
    batch_sizes: tuple[int, ...] = (1, 8, 32, 64, 128)
    repeats: int = 3
    acc_height: int = 256
    acc_width: int = 340
    acc_pairs: int = 4
    device: str = "cuda"
    compile_modes: tuple[bool, ...] = (False, True)
    params_note: str = "TVL1Params() defaults (OpenCV's)"

    def __post_init__(self) -> None:
        if min(self.batch_sizes) < 1 or self.repeats < 1 or self.acc_pairs < 1:
            raise ValueError(f"batch sizes, repeats and pair counts must be >= 1: {self}")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timing_pool(cfg: BenchConfig) -> tuple[np.ndarray, np.ndarray]:
    """Distinct photo pairs (smooth deformation) that every timed row cycles through.

    TV-L1 stops early where it converges, so its speed depends on the content: every row
    runs over the same POOL pairs, whatever its batch size.
    """
    prev, nxt, _ = motion_batch("smooth_field", cfg.height, cfg.width, POOL)
    return prev, nxt


def _batches(pool_size: int, batch: int, calls: int) -> list[list[int]]:
    """Pool indices of `calls` consecutive batches, cycling through the pool."""
    return [[(k * batch + j) % pool_size for j in range(batch)] for k in range(calls)]


def _median_rate(passes: list[tuple[int, float]]) -> float:
    """Pairs/s of the median pass, given (pairs, seconds) per pass: robust to a busy machine."""
    rates = sorted(pairs / seconds for pairs, seconds in passes)
    return float(np.median(rates))


def time_torch(cfg: BenchConfig, batch: int, compiled: bool) -> float:
    """Pairs/s of the torch TV-L1 with `batch` pairs per call: median of cfg.repeats passes.

    A pass covers the pool at least once (POOL // batch calls, or one call of `batch`
    pairs); one warm-up call runs first (allocator, kernel caches, compilation).
    """
    import torch

    from pipeline.flow_torch import tvl1_flow

    prev, nxt = _timing_pool(cfg)
    i0 = torch.from_numpy(prev).to(cfg.device).float()
    i1 = torch.from_numpy(nxt).to(cfg.device).float()
    calls = _batches(POOL, batch, max(1, POOL // batch))
    inputs = [(i0[idx], i1[idx]) for idx in calls]
    passes = []
    with torch.inference_mode():
        tvl1_flow(*inputs[0], compile=compiled)
        for _ in range(cfg.repeats):
            _sync(cfg.device)
            start = time.perf_counter()
            for a, b in inputs:
                tvl1_flow(a, b, compile=compiled)
            _sync(cfg.device)
            passes.append((batch * len(calls), time.perf_counter() - start))
    return _median_rate(passes)


def time_opencv(cfg: BenchConfig) -> float:
    """Pairs/s of OpenCV's TV-L1 with one thread: median of cfg.repeats passes over the pool."""
    from pipeline.flow_cpu import OpenCVTVL1

    est = OpenCVTVL1(threads=1)
    prev, nxt = _timing_pool(cfg)
    est(prev[:1], nxt[:1])  # warm-up
    passes = []
    for _ in range(cfg.repeats):
        start = time.perf_counter()
        est(prev, nxt)
        passes.append((POOL, time.perf_counter() - start))
    return _median_rate(passes)


def accuracy(cfg: BenchConfig) -> list[dict]:
    """Mean EPE per motion of OpenCV TV-L1 and torch TV-L1 (same params, same pairs)."""
    from pipeline.flow_cpu import OpenCVTVL1
    from pipeline.flow_torch import TorchTVL1

    cv_est, torch_est = OpenCVTVL1(threads=1), TorchTVL1(device=cfg.device)
    rows = []
    for kind in MOTIONS:
        prev, nxt, truth = motion_batch(kind, cfg.acc_height, cfg.acc_width, cfg.acc_pairs)
        margin = eval_margin(truth)
        rows.append({"motion": kind, "max_px": float(np.abs(truth).max()),
                     "opencv": mean_epe(cv_est(prev, nxt), truth, margin),
                     "torch": mean_epe(torch_est(prev, nxt), truth, margin)})
        log.info("EPE %s: %s", kind, rows[-1])
    return rows


# ----------------------------------------------------------------------------- report

def device_name(device: str) -> str:
    """A readable name of the device the torch runs use (GPU model or CPU model)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render(cfg: BenchConfig, speed: list[dict], acc: list[dict], cv_rate: float) -> str:
    """The Markdown report: environment, speed table, EPE table."""
    import torch

    lines = [f"- torch device: {cfg.device} ({device_name(cfg.device)}), torch {torch.__version__}, "
             f"OpenCV {cv2.__version__}, torch CPU threads {torch.get_num_threads()}",
             f"- frames {cfg.width}x{cfg.height}, {cfg.params_note}; each row: median of {cfg.repeats} timed "
             f"pass(es) over {POOL} photo pairs (smooth deformation) after a warm-up call",
             "", "| estimator | device | batch | pairs/s |", "| --- | --- | ---: | ---: |",
             f"| OpenCV TV-L1 (1 thread) | cpu | 1 | {cv_rate:.2f} |"]
    for row in speed:
        label = "torch TV-L1" + (" (compiled)" if row["compiled"] else "")
        lines.append(f"| {label} | {cfg.device} | {row['batch']} | {row['rate']:.2f} |")
    lines += ["", f"Mean EPE (px) at {cfg.acc_width}x{cfg.acc_height}, {cfg.acc_pairs} photo pairs per motion, "
              "borders (max motion + 6 px) left out:", "",
              "| motion | max motion (px) | OpenCV TV-L1 | torch TV-L1 | torch / OpenCV |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for r in acc:
        lines.append(f"| {r['motion']} | {r['max_px']:.2f} | {r['opencv']:.4f} | {r['torch']:.4f} | "
                     f"{r['torch'] / r['opencv']:.3f} |")
    return "\n".join(lines) + "\n"


def run(cfg: BenchConfig) -> str:
    """Run every measurement of `cfg` and return the Markdown report."""
    import torch

    if cfg.device == "cpu":
        torch.set_num_threads(1)  # one core, like OpenCV's row
    acc = accuracy(cfg)
    cv_rate = time_opencv(cfg)
    log.info("OpenCV TV-L1: %.2f pairs/s", cv_rate)
    speed = []
    for compiled in cfg.compile_modes:
        for batch in cfg.batch_sizes:
            speed.append({"compiled": compiled, "batch": batch, "rate": time_torch(cfg, batch, compiled)})
            log.info("torch TV-L1 %s", speed[-1])
    return render(cfg, speed, acc, cv_rate)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Turn the command line into a BenchConfig (the only place that reads argv)."""
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.compile == "auto":
        modes = (False, True) if device.startswith("cuda") else (False,)
    else:
        modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]
    cfg = BenchConfig(device=device, compile_modes=modes)
    if args.quick:
        cfg = dataclasses.replace(cfg, batch_sizes=(1, 4), repeats=1, acc_height=128,
                                  acc_width=160, acc_pairs=2)
    if args.repeats:
        cfg = dataclasses.replace(cfg, repeats=args.repeats)
    if args.batch_sizes:
        cfg = dataclasses.replace(cfg, batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")))
    return cfg


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated torch batch sizes, e.g. 1,8,32")
    parser.add_argument("--compile", choices=("auto", "off", "on", "both"), default="auto",
                        help="time torch.compile'd iterations too (auto: both on CUDA, off on CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per row (median reported)")
    parser.add_argument("--quick", action="store_true",
                        help="small run for a CPU: batches 1,4, EPE on 2 pairs per motion at 160x128")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    start = time.perf_counter()
    report = run(cfg)
    report += f"\nTotal benchmark time: {time.perf_counter() - start:.0f} s\n"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
