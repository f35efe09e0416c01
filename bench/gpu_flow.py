"""Benchmark the flow estimators: pairs/s at 340x256 and end-point error on known motion.

Speed: the torch TV-L1 through the flow actor's own path (PairBatcher: batches of B pairs,
staged copies in, uint8 quantization on the device, copies out overlapped with compute), by
batch size, then at one batch size by dtype (fp32 / bf16 / fp16), torch.compile off / on and
the epsilon-stop check (every `sync_every` steps, or 0: a fixed iteration count with no host
sync); OpenCV's TV-L1 on one CPU core beside it. Learned estimators (RAFT, SEA-RAFT) are timed
and scored when their checkpoint files are given (--raft-small, --raft-large, --sea-raft-s,
--sea-raft-m); never downloaded.

Accuracy: mean end-point error (EPE) on photographs warped by a known field (translation,
zoom, rotation, a smooth random deformation) and on a held-out real stereo pair (scikit-image's
Middlebury motorcycle, ground-truth disparity = horizontal flow, at half size), for OpenCV,
each torch dtype and each learned estimator given. `--cpu-costs` also measures what decode
and encode cost per pair on this machine's CPU (how many cores one GPU's rate needs).
Prints a Markdown report; --out also writes it.

    PYTHONPATH=. python bench/gpu_flow.py --out bench_flow.md      # GPU: full run, a few minutes on an H100
    PYTHONPATH=. python bench/gpu_flow.py --quick --cpu-costs      # CPU

The warped-photo ground truth and the scores come from pipeline.flow.accuracy, which `flowshard
flow-check` uses too: both report the same EPE for the same estimator, size and pairs.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.flow.accuracy import (MOTIONS, builtin_cases, eval_margin, evaluate, mean_epe,  # noqa: F401  (re-exported)
                                 motion_batch, photo_pair)

log = logging.getLogger("bench.gpu_flow")

POOL = 4  # distinct pairs the speed rows cycle through


# ----------------------------------------------------------------------------- stereo

def stereo_pair(scale: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-image's rectified Middlebury motorcycle pair, resized by `scale`, as flow data.

    Returns left, right (H, W, 3) uint8 RGB, the true flow left -> right (H, W, 2) (x = minus
    the disparity, y = 0: left(x, y) = right(x - d, y)) and a mask of pixels with known disparity.
    """
    import skimage.data

    left, right, disp = skimage.data.stereo_motorcycle()
    h, w = round(left.shape[0] * scale), round(left.shape[1] * scale)
    resize = lambda img: cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)  # noqa: E731
    valid = np.isfinite(disp)
    d = cv2.resize(np.where(valid, disp, 0).astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST) * scale
    mask = cv2.resize(valid.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    flow = np.stack([-d, np.zeros_like(d)], axis=-1)
    return resize(left), resize(right), flow, mask


def stereo_epe(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray, margin: int = 8) -> float:
    """Mean EPE over pixels with known disparity, `margin` pixels in from every side."""
    err = np.sqrt(((estimate - truth) ** 2).sum(-1))[margin:-margin, margin:-margin]
    return float(err[mask[margin:-margin, margin:-margin]].mean())


# ----------------------------------------------------------------------------- measurements

@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What the benchmark runs; --quick shrinks it for a CPU."""

    height: int = 256
    width: int = 340
    batch_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    variant_batch: int = 128  # batch of the dtype / compile / stop-check rows
    dtypes: tuple[str, ...] = ("fp32", "bf16", "fp16")
    compile_modes: tuple[bool, ...] = (False, True)
    sync_modes: tuple[int | None, ...] = (None, 0)  # None: the device's default check interval; 0: fixed
    pairs_per_row: int = 512  # pairs timed per pass
    repeats: int = 3
    acc_height: int = 256
    acc_width: int = 340
    acc_pairs: int = 4
    stereo_scale: float = 0.5
    device: str = "cuda"
    weights: tuple[tuple[str, str], ...] = ()  # (algorithm, checkpoint file) of learned estimators
    params_note: str = "TVL1Params() defaults (OpenCV's)"

    def __post_init__(self) -> None:
        if min(self.batch_sizes) < 1 or self.repeats < 1 or self.acc_pairs < 1 or self.pairs_per_row < 1:
            raise ValueError(f"batch sizes, repeats and pair counts must be >= 1: {self}")


def _timing_pool(cfg: BenchConfig, rgb: bool = False) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """POOL distinct photo pairs (smooth deformation) as one frame array and its (from, to) rows.

    TV-L1 stops early where it converges, so its speed depends on the content: every row
    runs over the same pairs, whatever its batch size.
    """
    prev, nxt, _ = motion_batch("smooth_field", cfg.height, cfg.width, POOL)
    frames = np.concatenate([prev, nxt])
    if rgb:
        frames = np.repeat(frames[..., None], 3, axis=-1)  # speed only: the content does not matter
    return frames, [(k, POOL + k) for k in range(POOL)]


def _median_rate(passes: list[tuple[int, float]]) -> float:
    """Pairs/s of the median pass, given (pairs, seconds) per pass: robust to a busy machine."""
    return float(np.median(sorted(pairs / seconds for pairs, seconds in passes)))


def time_batched(estimator, cfg: BenchConfig, batch: int, rgb: bool = False) -> float:
    """Pairs/s of `estimator` through a PairBatcher with B = `batch` (the flow actor's path):
    median of cfg.repeats passes of cfg.pairs_per_row pairs (at least 2 batches), after a
    warm-up pass (allocator, kernel caches, compilation)."""
    from pipeline.flow.batch import PairBatcher

    frames, pool = _timing_pool(cfg, rgb)
    pairs = [pool[k % POOL] for k in range(max(cfg.pairs_per_row, 2 * batch))]
    passes = []
    with PairBatcher(estimator, batch_size=batch, linger=0.0) as batcher:
        batcher.compute(frames, pairs[:batch])
        for _ in range(cfg.repeats):
            start = time.perf_counter()
            batcher.compute(frames, pairs)
            passes.append((len(pairs), time.perf_counter() - start))
    return _median_rate(passes)


def time_opencv(cfg: BenchConfig) -> float:
    """Pairs/s of OpenCV's TV-L1 with one thread: median of cfg.repeats passes over the pool."""
    from pipeline.flow.opencv import OpenCVTVL1

    est = OpenCVTVL1(threads=1)
    frames, pool = _timing_pool(cfg)
    prev, nxt = frames[:POOL], frames[POOL:]
    est(prev[:1], nxt[:1])  # warm-up
    passes = []
    for _ in range(cfg.repeats):
        start = time.perf_counter()
        est(prev, nxt)
        passes.append((POOL, time.perf_counter() - start))
    return _median_rate(passes)


def tvl1(cfg: BenchConfig, dtype: str = "fp32", compiled: bool = False, sync_every: int | None = None):
    from pipeline.flow.tvl1_torch import TorchTVL1

    return TorchTVL1(device=cfg.device, dtype=dtype, compile=compiled, sync_every=sync_every)


def learned(cfg: BenchConfig, algorithm: str, weights: str, dtype: str = "fp32"):
    """A learned estimator from a local checkpoint (the table's factory, torch backend)."""
    from pipeline.flow.config import FlowConfig, params_from_dict
    from pipeline.flow.estimators import make_estimator
    from pipeline.flow.params import TorchOptions

    params = params_from_dict(algorithm, {"weights": weights})
    return make_estimator(FlowConfig(algorithm=algorithm, backend="torch", device=cfg.device, params=params,
                                     torch_options=TorchOptions(dtype=dtype)))


def speed_rows(cfg: BenchConfig) -> list[dict]:
    """TV-L1 pairs/s by batch size (fp32, eager, default stop check), then by dtype x compile x
    stop check at cfg.variant_batch; learned estimators at their default batch, fp32 and bf16."""
    from pipeline.flow.config import default_batch_size

    rows = []
    for batch in cfg.batch_sizes:
        rows.append({"estimator": "torch TV-L1", "batch": batch, "dtype": "fp32", "compile": False, "sync": None,
                     "rate": time_batched(tvl1(cfg), cfg, batch)})
        log.info("%s", rows[-1])
    for dtype in cfg.dtypes:
        for compiled in cfg.compile_modes:
            for sync in cfg.sync_modes:
                if (dtype, compiled, sync) == ("fp32", False, None) and cfg.variant_batch in cfg.batch_sizes:
                    continue  # already in the batch sweep
                est = tvl1(cfg, dtype, compiled, sync)
                rows.append({"estimator": "torch TV-L1", "batch": cfg.variant_batch, "dtype": dtype,
                             "compile": compiled, "sync": sync, "rate": time_batched(est, cfg, cfg.variant_batch)})
                log.info("%s", rows[-1])
    for algorithm, weights in cfg.weights:
        batch = default_batch_size(algorithm, cfg.device, cfg.height, cfg.width)
        for dtype in ("fp32", "bf16"):
            rows.append({"estimator": algorithm, "batch": batch, "dtype": dtype, "compile": False, "sync": None,
                         "rate": time_batched(learned(cfg, algorithm, weights, dtype), cfg, batch, rgb=True)})
            log.info("%s", rows[-1])
    return rows


def _as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def accuracy(cfg: BenchConfig) -> tuple[list[str], list[dict]]:
    """Mean EPE per motion and on the stereo pair: OpenCV TV-L1, torch TV-L1 per dtype, and
    each learned estimator given (fed the photographs as grey RGB, the stereo pair in colour)."""
    from pipeline.flow.opencv import OpenCVTVL1

    estimators = {"OpenCV TV-L1": OpenCVTVL1(threads=1)}
    estimators.update({f"torch TV-L1 {d}": tvl1(cfg, d) for d in cfg.dtypes})
    estimators.update({a: learned(cfg, a, w) for a, w in cfg.weights})
    rows = []
    for kind in MOTIONS:
        prev, nxt, truth = motion_batch(kind, cfg.acc_height, cfg.acc_width, cfg.acc_pairs)
        margin = eval_margin(truth)
        row = {"case": kind, "max_px": float(np.abs(truth).max())}
        for name, est in estimators.items():
            rgb = getattr(est, "input", "gray") == "rgb"
            row[name] = mean_epe(est(_as_rgb(prev), _as_rgb(nxt)) if rgb else est(prev, nxt), truth, margin)
        rows.append(row)
        log.info("EPE %s", row)
    left, right, truth, mask = stereo_pair(cfg.stereo_scale)
    row = {"case": f"stereo motorcycle {left.shape[1]}x{left.shape[0]}", "max_px": float(np.abs(truth).max())}
    for name, est in estimators.items():
        if getattr(est, "input", "gray") == "rgb":
            flow = est(left[None], right[None])[0]
        else:
            flow = est(cv2.cvtColor(left, cv2.COLOR_RGB2GRAY)[None], cv2.cvtColor(right, cv2.COLOR_RGB2GRAY)[None])[0]
        row[name] = stereo_epe(flow, truth, mask)
    rows.append(row)
    log.info("EPE %s", row)
    return list(estimators), rows


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (ffmpeg)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def cpu_costs(height: int = 256, width: int = 340, frames: int = 48) -> dict:
    """CPU seconds per pair of what surrounds a GPU's flow: decoding a 340x256 video (ffmpeg,
    one thread), grey conversion, and JPEG-encoding each RGB frame and each quantized field."""
    import tempfile

    from pipeline import decode, encode
    from pipeline.stages import chunks
    from pipeline.synthetic import motion as synthetic
    from pipeline.flow.quantize import quantize

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = synthetic.write_video(Path(tmp) / "v.mp4", synthetic.moving_frames("right", frames, height, width))
        cfg = decode.DecodeConfig(resize="none", threads=1)
        start = _cpu_seconds()
        chunks = list(decode.iter_chunks("v", str(path), cfg, chunk_frames=frames, overlap=1))
        decode_s = _cpu_seconds() - start  # ffmpeg's own CPU time included (a waited child)
    rgb = np.concatenate([c.frames[:c.owned] for c in chunks])
    start = time.process_time()
    chunks.gray(rgb)
    gray_s = time.process_time() - start
    flow = quantize(rng.normal(0, 2, (len(rgb), height, width, 2)).astype(np.float32))
    start = time.process_time()
    for f, q in zip(rgb, flow):
        encode.encode_rgb(f, 90)
        encode.encode_flow_q(q, 95)
    encode_s = time.process_time() - start
    n = len(rgb)
    out = {"frames": n, "decode_ms": 1e3 * decode_s / n, "gray_ms": 1e3 * gray_s / n, "encode_ms": 1e3 * encode_s / n}
    out["total_ms"] = out["decode_ms"] + out["gray_ms"] + out["encode_ms"]
    return out


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


def _sync_label(cfg: BenchConfig, sync: int | None) -> str:
    if sync == 0:
        return "fixed (no check)"
    return f"every {sync or (10 if cfg.device.startswith('cuda') else 1)}"


def render(cfg: BenchConfig, speed: list[dict], names: list[str], acc: list[dict], cv_rate: float,
           costs: dict | None) -> str:
    """The Markdown report: environment, speed table, EPE table, CPU costs."""
    import torch

    fp32 = {r["case"]: r["OpenCV TV-L1"] for r in acc}
    lines = [f"- torch device: {cfg.device} ({device_name(cfg.device)}), torch {torch.__version__}, "
             f"OpenCV {cv2.__version__}, torch CPU threads {torch.get_num_threads()}",
             f"- frames {cfg.width}x{cfg.height}, {cfg.params_note}; each row: median of {cfg.repeats} timed "
             f"pass(es) of {cfg.pairs_per_row} pairs through the flow actor's PairBatcher (uint8 in, uint8 "
             f"quantized fields out), cycling {POOL} photo pairs (smooth deformation), after a warm-up",
             "", "| estimator | device | batch | dtype | compile | stop check | pairs/s |",
             "| --- | --- | ---: | --- | --- | --- | ---: |",
             f"| OpenCV TV-L1 (1 thread) | cpu | 1 | fp32 | - | every step | {cv_rate:.2f} |"]
    for r in speed:
        lines.append(f"| {r['estimator']} | {cfg.device} | {r['batch']} | {r['dtype']} | "
                     f"{'on' if r['compile'] else 'off'} | {_sync_label(cfg, r['sync']) if 'TV-L1' in r['estimator'] else '-'} | "
                     f"{r['rate']:.2f} |")
    lines += ["", f"Mean EPE (px): photo pairs at {cfg.acc_width}x{cfg.acc_height}, {cfg.acc_pairs} per motion, "
              "borders (max motion + 6 px) left out; the stereo pair over pixels with known disparity, 8 px "
              "border left out. Ratio columns: EPE / OpenCV's.", "",
              "| case | max motion (px) | " + " | ".join(names) + " | " +
              " | ".join(f"{n} / OpenCV" for n in names[1:]) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in names) + " | " + " | ".join("---:" for _ in names[1:]) + " |"]
    for r in acc:
        lines.append(f"| {r['case']} | {r['max_px']:.2f} | " + " | ".join(f"{r[n]:.4f}" for n in names) + " | "
                     + " | ".join(f"{r[n] / fp32[r['case']]:.3f}" for n in names[1:]) + " |")
    if costs:
        lines += ["", f"CPU per pair on this machine ({costs['frames']} frames of {cfg.width}x{cfg.height}): "
                  f"decode {costs['decode_ms']:.2f} ms, grey {costs['gray_ms']:.2f} ms, encode (RGB JPEG + "
                  f"flow JPEG) {costs['encode_ms']:.2f} ms, total {costs['total_ms']:.2f} ms: "
                  f"{costs['total_ms']:.2f} cores per 1,000 pairs/s of flow."]
    return "\n".join(lines) + "\n"


def run(cfg: BenchConfig, with_costs: bool = False) -> str:
    """Run every measurement of `cfg` and return the Markdown report."""
    import torch

    if cfg.device == "cpu":
        torch.set_num_threads(1)  # one core, like OpenCV's row
    names, acc = accuracy(cfg)
    cv_rate = time_opencv(cfg)
    log.info("OpenCV TV-L1: %.2f pairs/s", cv_rate)
    speed = speed_rows(cfg)
    costs = cpu_costs(cfg.height, cfg.width) if with_costs else None
    return render(cfg, speed, names, acc, cv_rate, costs)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Turn the command line into a BenchConfig (the only place that reads argv)."""
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.compile == "auto":
        modes = (False, True) if device.startswith("cuda") else (False,)
    else:
        modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]
    weights = tuple((algo, path) for algo, path in (("raft_small", args.raft_small), ("raft_large", args.raft_large),
                                                     ("sea_raft_s", args.sea_raft_s), ("sea_raft_m", args.sea_raft_m))
                    if path)
    cfg = BenchConfig(device=device, compile_modes=modes, weights=weights)
    if args.quick:
        cfg = dataclasses.replace(cfg, batch_sizes=(4, 16), variant_batch=16, pairs_per_row=32, repeats=1,
                                  acc_height=128, acc_width=160, acc_pairs=2, stereo_scale=0.25)
    if args.repeats:
        cfg = dataclasses.replace(cfg, repeats=args.repeats)
    if args.batch_sizes:
        cfg = dataclasses.replace(cfg, batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")))
    if args.variant_batch:
        cfg = dataclasses.replace(cfg, variant_batch=args.variant_batch)
    if args.dtypes:
        cfg = dataclasses.replace(cfg, dtypes=tuple(args.dtypes.split(",")))
    return cfg


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated TV-L1 batch sizes, e.g. 32,128")
    parser.add_argument("--variant-batch", type=int, default=None, help="batch of the dtype/compile/stop rows")
    parser.add_argument("--dtypes", default=None, help="comma-separated dtypes (default fp32,bf16,fp16)")
    parser.add_argument("--compile", choices=("auto", "off", "on", "both"), default="auto",
                        help="time torch.compile'd iterations too (auto: both on CUDA, off on CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per row (median reported)")
    for name in ("raft-small", "raft-large", "sea-raft-s", "sea-raft-m"):
        parser.add_argument(f"--{name}", default=None, metavar="FILE", help=f"{name} checkpoint (local file)")
    parser.add_argument("--cpu-costs", action="store_true", help="also measure decode/encode CPU cost per pair")
    parser.add_argument("--quick", action="store_true",
                        help="small run for a CPU: batches 4,16, EPE on 2 pairs per motion at 160x128")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    start = time.perf_counter()
    report = run(cfg, with_costs=args.cpu_costs)
    report += f"\nTotal benchmark time: {time.perf_counter() - start:.0f} s\n"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
