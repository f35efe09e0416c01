"""Action detection on the synthetic detection set: RGB-only, flow-only and fused detectors.

    python bench/detection.py [--work DIR] [--size 96x72] [--frames 24] [--train 12] [--test 4]
                              [--epochs 15] [--batch-size 8] [--arch resnet18] [--out results.json]

Runs the README's commands end to end: generate the set (pipeline.synthetic.detection:
three actions, textured objects on photographs, a distractor in most videos), `flowshard
build --boxes`, `flowshard train --task detect` (one two-stream run: each stream trained
on its own losses, the concat head on their fixed features) and `flowshard evaluate`
on the test videos, every frame. Prints one table row per output (rgb, flow, fused =
concat, late) with frame-mAP at IoU 0.5, video-mAP at 0.2 and 0.5, video top-1, and the
wall time of each step; writes the evaluation JSON to --out.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from click.testing import CliRunner  # noqa: E402

from jobs.cli import cli  # noqa: E402
from pipeline.synthetic.detection import DetectionSetConfig, make_detection_dataset  # noqa: E402

log = logging.getLogger("bench")


def flowshard(*args) -> tuple[str, float]:
    """Run a flowshard command in this process; (its output, wall seconds). Fails loudly."""
    t0 = time.perf_counter()
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"flowshard {' '.join(map(str, args))} failed:\n{result.output}")
    return result.output, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="bench_out/detection")
    ap.add_argument("--size", default="96x72", help="frame size WxH of the generated videos")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--train", type=int, default=12, help="training videos per action")
    ap.add_argument("--test", type=int, default=4, help="test videos per action")
    ap.add_argument("--flow", default="tvl1")
    ap.add_argument("--clip-len", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--segments", type=int, default=8, help="training frames per video and epoch")
    ap.add_argument("--batch-size", type=int, default=8)
    # torchvision's detection reference trains at 0.02 for 16 images a step (0.02 / 16 per image);
    # batches of 8 frames take half. At 0.02 with 8 frames a run's motion stream diverged.
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--fpn-channels", type=int, default=64)
    ap.add_argument("--head-dim", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="evaluation JSON (default: WORK/detection.json)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(args.work)
    width, height = (int(v) for v in args.size.split("x"))
    timings = {}
    t0 = time.perf_counter()
    det = make_detection_dataset(work / "set", DetectionSetConfig(train_per_class=args.train,
                                                                  test_per_class=args.test, frames=args.frames,
                                                                  size=(width, height), seed=args.seed))
    timings["generate"] = time.perf_counter() - t0
    ds, run = work / "ds", work / "run"
    _, timings["build"] = flowshard("build", det.list_csv, ds, "--boxes", det.boxes_csv, "--flow", args.flow,
                                    "--resize", "none", "--executor", "local", "--no-progress")
    _, timings["train"] = flowshard(
        "train", ds, "--task", "detect", "--output", run, "--arch", args.arch, "--weights", "none",
        "--clip-len", args.clip_len,
        "--epochs", args.epochs, "--sampling", "tsn", "--segments", args.segments, "--batch-size", args.batch_size,
        "--lr", args.lr, "--warmup-epochs", "1", "--weight-decay", "1e-4", "--eval-every", "0", "--workers", "0",
        "--device", "cpu", "--no-progress", "--seed", args.seed, "--det-fpn-channels", args.fpn_channels,
        "--det-head-dim", args.head_dim, "--det-anchor-sizes", "16,32,64,128,256", "--det-proposals", "100",
        "--det-roi-batch", "64")
    out = Path(args.out or work / "detection.json")
    _, timings["evaluate"] = flowshard("evaluate", ds, run / "last.pt", "--json", out, "--workers", "0",
                                       "--device", "cpu", "--no-progress")
    report = json.loads(out.read_text())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; " +
          ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print("| detector | frame-mAP@0.5 | video-mAP@0.2 | video-mAP@0.5 | video top-1 |")
    print("|---|---:|---:|---:|---:|")
    for name in ("rgb", "flow", "fused", "late"):
        r = report[name]
        print(f"| {name} | {r['frame_map']:.3f} | {r['video_map']['0.2']:.3f} | {r['video_map']['0.5']:.3f} | "
              f"{r['video_top1']:.3f} |")
    for name in ("rgb", "flow", "fused", "late"):
        print(name, "frame AP", json.dumps({k: round(v, 3) for k, v in report[name]["frame_ap"].items()}),
              "video AP@0.5", json.dumps({k: round(v, 3) for k, v in report[name]["video_ap"]["0.5"].items()}))


if __name__ == "__main__":
    main()
