"""Incremental rebuilds against a full build: what adding, relabelling or re-packing costs.

    python bench/incremental.py [--videos 40] [--frames 48] [--add 0.1] [--repeats 3] [--flow farneback]

On one OUTPUT, in this order, each build on the same warm local Ray (start-up and worker
warm-up are timed once, apart): (1) a full build of N videos; (2) `repeats` times, the N
videos plus round(add x N) new ones, a different batch of new videos each time (so each
build adds a batch, and drops the previous one); (3) the labels of round(add x N) videos
changed; (4) another shard size (re-pack only); (5) the same command again (nothing to
do). Then (6) a full build of N + round(add x N) videos into an empty OUTPUT, the cost the
incremental build avoids. For each: wall seconds, videos computed and copied, and the time
as a fraction of the full build (1).
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from pipeline.synthetic import motion as synthetic  # noqa: E402
from pipeline.build.config import BuildConfig, ShardConfig  # noqa: E402
from pipeline.build.run import build_dataset  # noqa: E402
from pipeline.decode import DecodeConfig  # noqa: E402
from pipeline.flow.config import FlowConfig  # noqa: E402
from pipeline.flow.estimators import algorithms_for  # noqa: E402
from pipeline.cluster.executor import RayExecutor  # noqa: E402
from pipeline.cluster.startup import RayConfig, init_ray  # noqa: E402
from pipeline.stages.config import WorkerConfig  # noqa: E402

log = logging.getLogger("bench")
MOTIONS = ("left", "right", "up", "down")


def make_videos(root: Path, count: int, frames: int, size: tuple[int, int]) -> list[dict]:
    """`count` videos with known motion; list rows (path, label, split)."""
    rows = []
    for i in range(count):
        motion = MOTIONS[i % len(MOTIONS)]
        path = root / motion / f"v{i:04d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic.write_video(path, synthetic.moving_frames(motion, frames, size[1], size[0], seed=i))
        rows.append({"path": str(path), "label": motion, "split": "train"})
    return rows


def write_list(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def timed_build(listing: Path, out: Path, cfg: BuildConfig) -> dict:
    t0 = time.perf_counter()
    s = build_dataset(str(listing), str(out), cfg, executor=RayExecutor(), progress=False)
    return {"seconds": time.perf_counter() - t0, "computed": s.computed, "copied": s.reused,
            "videos": s.videos, "version": s.version, "units_skipped": s.units_skipped}


def run(args: argparse.Namespace) -> list[tuple[str, dict]]:
    size = tuple(int(x) for x in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="flowshard-incremental-"))
    try:
        added = max(1, round(args.add * args.videos))
        rows = make_videos(work / "videos", args.videos + args.repeats * added, args.frames, size)
        base = rows[:args.videos]
        batches = [rows[args.videos + r * added:args.videos + (r + 1) * added] for r in range(args.repeats)]
        grown = base + batches[-1]
        # Relabel to another existing class: a new class name would renumber the label ids after it.
        relabelled = [dict(r, label=MOTIONS[(MOTIONS.index(r["label"]) + 1) % len(MOTIONS)]) if i < added else r
                      for i, r in enumerate(grown)]
        cfg = BuildConfig(worker=WorkerConfig(decode=DecodeConfig(resize="none"),
                                              flow=FlowConfig(algorithm=args.flow)),
                          shard=ShardConfig(max_samples=args.shard_samples))
        repacked = BuildConfig(worker=cfg.worker, shard=ShardConfig(max_samples=args.shard_samples * 2))
        t0 = time.perf_counter()
        init_ray(RayConfig(num_cpus=args.num_cpus))
        # Warm the workers (process start, imports) on two videos, so build (1) is not charged for it.
        timed_build(write_list(work / "warm.csv", rows[:2]), work / "warm", cfg)
        results = [("ray start-up and worker warm-up (excluded below)", {"seconds": time.perf_counter() - t0})]
        out = work / "out"
        steps = [("full build", base, cfg)]
        steps += [(f"+{added} new videos (batch {r + 1})", base + batch, cfg) for r, batch in enumerate(batches)]
        steps += [(f"{added} relabelled", relabelled, cfg), ("shard size changed", relabelled, repacked),
                  ("same command again", relabelled, repacked)]
        for n, (name, listing, step_cfg) in enumerate(steps):
            results.append((name, timed_build(write_list(work / f"list{n}.csv", listing), out, step_cfg)))
            log.info("%s: %s", name, results[-1][1])
        results.append((f"full build of {len(grown)} into an empty OUTPUT",
                        timed_build(write_list(work / "all.csv", grown), work / "clean", cfg)))
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results: list[tuple[str, dict]], args: argparse.Namespace) -> str:
    full = results[1][1]["seconds"]
    lines = [f"{args.videos} videos of {args.frames} frames at {args.size}, {args.flow}, "
             f"{args.shard_samples} videos per shard, local Ray with {args.num_cpus} CPUs "
             f"({platform.machine()}, {os.cpu_count()} cores)", "",
             "| build | seconds | videos computed | videos copied | of the full build |", "|---|---:|---:|---:|---:|"]
    for name, r in results:
        if "computed" not in r:
            lines.append(f"| {name} | {r['seconds']:.1f} | | | |")
            continue
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['computed']} | {r['copied']} | "
                     f"{100 * r['seconds'] / full:.0f}% |")
    adds = sorted(r["seconds"] for name, r in results if name.startswith("+"))
    median = adds[len(adds) // 2]
    lines += ["", f"Adding {100 * args.add:.0f}% new videos: median {median:.1f} s over {len(adds)} builds, "
                  f"{100 * median / full:.0f}% of the full build."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", default="340x256")
    parser.add_argument("--add", type=float, default=0.1, help="Fraction of videos added and relabelled.")
    parser.add_argument("--repeats", type=int, default=3, help="Incremental builds that each add a new batch.")
    parser.add_argument("--flow", default="farneback", choices=algorithms_for("opencv"))
    parser.add_argument("--shard-samples", type=int, default=8)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(report(run(args), args))


if __name__ == "__main__":
    main()
