"""Benchmark the flow estimators: pairs/s at 340x256 and end-point error on known motion.

Measures the batched torch TV-L1 (CUDA when available, else CPU) over several batch sizes and
OpenCV's TV-L1 on one CPU core (cv2.setNumThreads(1)), with the same TVL1Params, and the mean
end-point error (EPE) of both on photographs warped by a known field (translation, zoom,
rotation, a smooth random deformation). Prints a Markdown report; --out also writes it.

    PYTHONPATH=. python bench/gpu_flow.py --out bench_flow.md      # GPU: full run, < 5 min on an H100
    PYTHONPATH=. python bench/gpu_flow.py --quick                  # CPU: a few minutes

The ground truth and the scores come from pipeline.flow_eval, which `flowshard flow-check` uses
too: both report the same EPE for the same estimator, size and pairs.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.flow_eval import (MOTIONS, builtin_cases, eval_margin, evaluate, mean_epe,  # noqa: F401  (re-exported)
                                 motion_batch, photo_pair)

log = logging.getLogger("bench.gpu_flow")

POOL = 4  # distinct pairs the speed rows cycle through


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

    cases = builtin_cases(cfg.acc_height, cfg.acc_width, cfg.acc_pairs)
    cv_scores = evaluate(OpenCVTVL1(threads=1), cases)
    torch_scores = evaluate(TorchTVL1(device=cfg.device), cases)
    rows = []
    for case, cv_s, torch_s in zip(cases, cv_scores, torch_scores):
        rows.append({"motion": case.name, "max_px": case.max_motion, "opencv": cv_s.epe, "torch": torch_s.epe})
        log.info("EPE %s: %s", case.name, rows[-1])
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
