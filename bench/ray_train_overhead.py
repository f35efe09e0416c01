"""Ray Train's overhead per step: samples/s of 1 and 2 Ray Train CPU workers against the same
runs under torchrun (same dataset, model, batches and seed).

    PYTHONPATH=$PWD RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 python bench/ray_train_overhead.py [--steps 20] [--repeats 3]

Builds a small synthetic motion dataset, then, for 1 and 2 ranks, trains one epoch of --steps
steps per rank under torchrun and under Ray Train, --repeats pairs of runs side by side (the
pair's order alternates, so a load that comes and goes on a shared machine does not always
fall on the same side). Reports the train loop's clips/s per rank (train_summary.json "train"
"clips_per_s", averaged over ranks: start-up, Ray's included, is outside it), the median of
each side and the median of the pairs' Ray Train / torchrun ratios.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.ray_train_overhead")


def train_args(ds: Path, out: Path, steps: int) -> list[str]:
    return [str(ds), "--output", str(out), "--arch", "resnet18", "--weights", "none", "--workers", "0",
            "--device", "cpu", "--no-progress", "--crop-size", "64", "--batch-size", "4", "--clip-len", "4",
            "--steps-per-epoch", str(steps), "--epochs", "1", "--eval-every", "0"]


def torchrun(ds: Path, out: Path, procs: int, steps: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(procs),
           "--master_addr", "127.0.0.1", "--master_port", str(29400 + procs), "-m", "jobs.train", "train",
           *train_args(ds, out, steps)]
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True)
    return json.loads((out / "train_summary.json").read_text())


def ray_train(ds: Path, out: Path, workers: int, steps: int) -> dict:
    cmd = [sys.executable, "-m", "jobs.cli", "train", *train_args(ds, out, steps), "--ray-workers", str(workers)]
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True)
    return json.loads((out / "train_summary.json").read_text())


def build(root: Path) -> Path:
    from pipeline.synthetic import motion

    videos = motion.make_motion_dataset(root / "videos", per_class=6, num_frames=16, size=(96, 64))
    listing = motion.write_split_list(root, videos, 5)
    ds = root / "ds"
    subprocess.run([sys.executable, "-m", "jobs.cli", "build", str(listing), str(ds), "--flow", "farneback",
                    "--resize", "none", "--executor", "local", "--shard-samples", "4", "--no-progress"],
                   cwd=ROOT, check=True, capture_output=True)
    return ds


def pair(ds: Path, out: Path, ranks: int, steps: int, ray_first: bool) -> tuple[float, float]:
    """(torchrun clips/s, Ray Train clips/s) of one pair of runs, in the order given."""
    runs = {"torchrun": lambda: torchrun(ds, out / "torchrun", ranks, steps),
            "ray": lambda: ray_train(ds, out / "ray", ranks, steps)}
    speed = {name: runs[name]()["train"]["clips_per_s"]
             for name in (("ray", "torchrun") if ray_first else ("torchrun", "ray"))}
    base, ray = speed["torchrun"], speed["ray"]
    log.info("%d rank(s), %s first: torchrun %.2f, Ray Train %.2f clips/s per rank (ratio %.3f; load average "
             "%.1f after)", ranks, "Ray Train" if ray_first else "torchrun", base, ray, ray / base, os.getloadavg()[0])
    return base, ray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="Steps per rank.")
    parser.add_argument("--repeats", type=int, default=3, help="Pairs of runs per rank count.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        ds = build(Path(tmp))
        rows = []
        for n in (1, 2):
            pairs = [pair(ds, Path(tmp) / f"{n}-{i}", n, args.steps, ray_first=i % 2 == 1)
                     for i in range(args.repeats)]
            rows.append((n, median(b for b, _ in pairs), median(r for _, r in pairs), median(r / b for b, r in pairs)))
        log.info("%-8s %14s %16s %14s", "RANKS", "TORCHRUN c/s", "RAY TRAIN c/s", "MEDIAN RATIO")
        for n, base, ray, ratio in rows:
            log.info("%-8d %14.2f %16.2f %14.3f", n, base, ray, ratio)


if __name__ == "__main__":
    main()
