"""Ray Train's overhead per step: samples/s of 1 and 2 Ray Train CPU workers against the same
runs under torchrun (same dataset, model, batches and seed).

    PYTHONPATH=$PWD RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 python bench/ray_train_overhead.py [--steps 20]

Builds a small synthetic motion dataset, then trains one epoch of --steps steps per rank four
ways and reports the train loop's clips/s (train_summary.json "train" "clips_per_s", averaged
over ranks: start-up, Ray's included, is outside it) and the Ray Train / torchrun ratio.
The runs alternate in one process, so a busy machine slows both alike; rerun on an idle one.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="Steps per rank.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        ds = build(Path(tmp))
        rows = []
        for n in (1, 2):
            base = torchrun(ds, Path(tmp) / f"torchrun{n}", n, args.steps)["train"]["clips_per_s"]
            ray = ray_train(ds, Path(tmp) / f"ray{n}", n, args.steps)["train"]["clips_per_s"]
            rows.append((n, base, ray))
        log.info("%-8s %14s %16s %8s", "RANKS", "TORCHRUN c/s", "RAY TRAIN c/s", "RATIO")
        for n, base, ray in rows:
            log.info("%-8d %14.2f %16.2f %8.3f", n, base, ray, ray / base)


if __name__ == "__main__":
    main()
