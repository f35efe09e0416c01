"""Two-stream variants on the synthetic sets where one should beat another (issue: fusion family).

    python bench/fusion_sets.py binding    [--workdir DIR] [--json out.json] [--runs late,conv3d_3d,...]
    python bench/fusion_sets.py long_range [--workdir DIR] [--json out.json]

Generates the set (pipeline.synthetic.sets, scikit-image photos as backgrounds), builds it
(`flowshard build --flow farneback --resize none`), then trains every run with the same
data, seed, steps, batch size and learning rate, and evaluates it on the held-out videos
(`flowshard evaluate`, test clips evenly spread; per stride for strided sampling).
Reported: video top-1 of the model's prediction ("fused") and of each output.

binding     late fusion (two_stream, scores of the two streams averaged), each fusion type
            at layer2 with and without 3D temporal pooling, conv fusion at layer4 (the
            default), and ST-ResNet; all see the same clips of T snippets (strided
            sampling) and are trained from random weights.
long_range  the fusion model (conv fusion + 3D pooling) with single-scale clips (stride 1)
            against multi-timescale clips (strides 1, 5, 10), trained and tested alike.

Everything is scaled down from the papers to fit a few CPU minutes per run: ResNet-18
streams without ImageNet weights, 48x48 frames, T = 3 snippets of L = 5 flow fields.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.synthetic import sets as synthetic_sets  # noqa: E402

log = logging.getLogger("bench.fusion_sets")

COMMON = ["--arch", "resnet18", "--weights", "none", "--clip-len", "5", "--crop-size", "48", "--crop-scales", "1",
          "--no-flip", "--workers", "1", "--device", "cpu", "--eval-every", "0", "--no-progress", "--seed", "0",
          "--dropout", "0.5", "--optimizer", "adamw", "--lr", "0.0005", "--weight-decay", "0.0001",
          "--warmup-epochs", "0"]
FUSION = ["--model", "fusion", "--fusion-layer", "layer4"]
# Binding needs fused maps fine enough to keep the two squares apart: layer4 of a 48 px crop
# is 2x2, layer2 6x6 (cells of 8 px, a square over about 1.5 of them, as an actor spans a few
# of conv5's 14x14 cells at 224 px in the paper).
FUSION_L2 = ["--model", "fusion", "--fusion-layer", "layer2"]

BINDING_RUNS = {
    "late": ["--model", "two_stream", "--fusion", "late"],
    # the paper's 3D conv fusion (concatenation + one 3x3x3 conv, then one max over the snippets)
    "conv3d_3d": [*FUSION_L2, "--fusion-type", "conv3d", "--temporal-pool", "3d"],
    # 2D fusion, then (3d) one max over the snippets or (none) their scores averaged
    **{f"{kind}_{pool}": [*FUSION_L2, "--fusion-type", kind, "--temporal-pool", pool]
       for kind in ("sum", "max", "concat", "conv") for pool in ("none", "3d")},
    "bilinear_none": [*FUSION_L2, "--fusion-type", "bilinear", "--temporal-pool", "none"],
    "st_resnet": ["--model", "st_resnet", "--st-connection", "additive"],
    "conv3d_layer4": [*FUSION, "--fusion-type", "conv3d", "--temporal-pool", "3d"],
}
LONG_RANGE_RUNS = {
    "single_scale": [*FUSION, "--fusion-type", "conv3d", "--temporal-pool", "3d", "--strides", "1"],
    "multi_timescale": [*FUSION, "--fusion-type", "conv3d", "--temporal-pool", "3d", "--strides", "1,5,10"],
}
SETS = {
    # 48x48 frames, 12 px squares: layer4 of a 48 px crop is 2x2, layer3 3x3.
    "binding": (synthetic_sets.SetConfig(per_class=60, test_per_class=15, num_frames=16, size=(48, 48),
                                         object_size=12, speed=1, seed=0), BINDING_RUNS, ["--strides", "3"]),
    "long_range": (synthetic_sets.SetConfig(per_class=60, test_per_class=15, num_frames=36, size=(48, 48),
                                            object_size=10, speed=1, seed=0), LONG_RANGE_RUNS, []),
}


def flowshard(*args: str) -> None:
    """Run a flowshard command in this process; raise with its output when it fails."""
    from click.testing import CliRunner

    from jobs.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if result.exit_code != 0:
        raise RuntimeError(f"flowshard {' '.join(args)} failed:\n{result.output}")


def build(work: Path, kind: str, cfg: synthetic_sets.SetConfig) -> Path:
    """The set's videos, built once per work folder."""
    ds = work / f"{kind}_ds"
    if not (ds / "dataset.json").exists():
        listing = synthetic_sets.write_set(work / kind, kind, cfg, synthetic_sets.photos())
        flowshard("build", str(listing), str(ds), "--flow", "farneback", "--resize", "none", "--executor", "local",
                  "--shard-samples", "50", "--no-progress")
    return ds


def run_one(ds: Path, out: Path, flags: list[str], common: list[str], steps: int, test_clips: int) -> dict:
    """Train one run and evaluate it on the test split; returns video top-1 per output and seconds."""
    start = time.perf_counter()
    flowshard("train", str(ds), "--output", str(out), *common, *flags, "--steps-per-epoch", str(steps),
              "--epochs", "1")
    trained = time.perf_counter() - start
    metrics = out / "test.json"
    flowshard("evaluate", str(ds), str(out / "last.pt"), "--json", str(metrics), "--test-clips", str(test_clips),
              "--device", "cpu", "--workers", "1", "--no-progress")
    m = json.loads(metrics.read_text())
    top1 = {k: v["video_top1"] for k, v in m.items() if isinstance(v, dict) and "video_top1" in v}
    return {"video_top1": top1, "videos": m["fused"]["videos"], "train_s": round(trained, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("set", choices=sorted(SETS))
    p.add_argument("--workdir", default=None, help="Reuse a folder (the built set is kept between runs).")
    p.add_argument("--runs", default=None, help="Comma-separated subset of the runs.")
    p.add_argument("--steps", type=int, default=200, help="Optimizer steps per run.")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--snippets", type=int, default=3)
    p.add_argument("--test-clips", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg, runs, extra = SETS[args.set]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="flowshard_fusion_"))
    work.mkdir(parents=True, exist_ok=True)
    ds = build(work, args.set, cfg)
    common = [*COMMON, "--batch-size", str(args.batch_size), "--sampling", "strided", "--snippets", str(args.snippets),
              *extra]
    names = args.runs.split(",") if args.runs else list(runs)
    results = {}
    print(" ".join(["flowshard train DATASET --output RUN", *common, "--steps-per-epoch", str(args.steps),
                    "--epochs", "1", "<run flags>"]), flush=True)
    for name in names:
        results[name] = run_one(ds, work / "runs" / args.set / name, runs[name], common, args.steps, args.test_clips)
        print(json.dumps({name: results[name]}), flush=True)
        if args.json:  # after every run: a long benchmark keeps what it measured
            summary = {"set": args.set, "config": vars(cfg) | {"size": list(cfg.size)}, "common": common,
                       "steps": args.steps, "runs": {n: runs[n] for n in results}, "results": results}
            Path(args.json).write_text(json.dumps(summary, indent=2))
    for name, r in results.items():
        print(f"| {name} | {r['video_top1']['fused']:.3f} | "
              + " | ".join(f"{k} {v:.3f}" for k, v in sorted(r["video_top1"].items()) if k != "fused")
              + f" | {r['train_s']:.0f} s |")


if __name__ == "__main__":
    main()
