"""Clip networks beside two-stream on the same synthetic sets, the same budget and seed.

    python bench/clip_nets.py [--workdir DIR] [--sets motion,state,binding] [--models all]
                              [--steps 300 --batch-size 8] [--per-class 8 --test-per-class 4]
                              [--json results.json] [--table table.md]

Sets (each built once with `flowshard build --flow farneback --resize none`, 96 x 72 frames):

  motion   pipeline.synthetic.motion.make_motion_dataset: one texture moving left, right, up or
           down (the same textures in every class: only motion tells the class), 24 frames
  state    pipeline.synthetic.states: a disc turns red -> green or green -> red, appears or
           disappears at a random moment (only before and after tell the class), 32 frames
  binding  pipeline.synthetic.sets' binding set when that module is present: two tinted
           squares move, the class is the direction of the red one (flow alone cannot tell
           which motion is whose), 24 frames at 64 x 64

Test videos use textures (or draws) never seen in training. Every model trains from scratch
with AdamW (lr 1e-3, cosine decay) for the same number of steps and batch size, without
flips (a flip turns "left" into "right"), and is evaluated once at the end on the test
videos (video top-1: the mean of 5 test clips' scores per video, centre crops). clips/s is
training throughput on this machine's CPU (forward, backward, the step and the loader, in
one process). The networks are scaled-down copies of the papers' (see MODELS); the
parameter counts are of these copies.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("bench.clip_nets")

COMMON = ["--epochs", "1", "--weights", "none", "--optimizer", "adamw", "--lr", "0.001", "--weight-decay", "0.0001", "--no-flip",
          "--eval-every", "1", "--test-clips", "5", "--device", "cpu", "--workers", "0", "--no-progress",
          "--seed", "0", "--crop-size", "48"]
# Scaled-down configurations: (flags, what was scaled down from the paper).
MODELS = {
    "two_stream": (["--model", "two_stream", "--arch", "resnet18", "--streams", "both", "--clip-len", "5"],
                   "ResNet-18 streams, L = 5 flow fields, 48 px"),
    "c3d": (["--model", "c3d", "--width-mult", "0.125", "--fc-dim", "256", "--conv-bn"],
            "channels / 8, fc6/fc7 256, 16 x 48 x 48 clips, batch norm after each conv (not in the paper)"),
    "r3d": (["--model", "r3d", "--rgb-frames", "16", "--width-mult", "0.25"],
            "R3D-18, width 16 (/ 4), 16 x 48 x 48 clips"),
    "r2plus1d": (["--model", "r2plus1d", "--rgb-frames", "16", "--width-mult", "0.25"],
                 "R(2+1)D-18, width 16 (/ 4), 16 x 48 x 48 clips"),
    "fstcn": (["--model", "fstcn", "--rgb-frames", "12", "--diff-frames", "4", "--width-mult", "0.125",
               "--fc-dim", "256", "--crop-size", "64"],
              "channels / 8, FC 256 / 128, T = 8 differences dt = 4 apart, 64 px (its poolings need >= 54)"),
    "karpathy-single": (["--model", "karpathy", "--time-fusion", "single", "--width-mult", "0.25", "--fc-dim", "256"],
                        "channels / 4, FC 256, 48 px crops (two 24 px streams)"),
    "karpathy-early": (["--model", "karpathy", "--time-fusion", "early", "--width-mult", "0.25", "--fc-dim", "256"],
                       "channels / 4, FC 256, 10 frames, 48 px crops"),
    "karpathy-late": (["--model", "karpathy", "--time-fusion", "late", "--width-mult", "0.25", "--fc-dim", "256"],
                      "channels / 4, FC 256, 2 frames 15 apart, 48 px crops"),
    "karpathy-slow": (["--model", "karpathy", "--time-fusion", "slow", "--width-mult", "0.25", "--fc-dim", "256"],
                      "channels / 4, FC 256, 10 frames, 48 px crops"),
    "siamese": (["--model", "siamese", "--arch", "resnet18", "--streams", "both", "--clip-len", "5", "--segments",
                 "8", "--embed-dim", "128"],
                "ResNet-18 per-frame nets (paper: VGG-16), d = 128, T = 8 snippets over the whole video (one per "
                "segment), L = 5, 48 px"),
}


def make_list(name: str, root: Path, per_class: int, test_per_class: int) -> Path | None:
    """The video list of set `name` under root (None: the set's generator is not available)."""
    from pipeline.synthetic import motion as synthetic
    from pipeline.synthetic import states as synthetic_states

    n = per_class + test_per_class
    if name == "motion":
        videos = synthetic.make_motion_dataset(root / "videos", per_class=n, num_frames=24, size=(96, 72))
        return synthetic.write_split_list(root, videos, per_class)
    if name == "state":
        videos = synthetic_states.make_state_change_dataset(root / "videos", per_class=n, num_frames=32,
                                                            size=(96, 72))
        return synthetic.write_split_list(root, videos, per_class)
    if name == "binding":
        try:
            sets = importlib.import_module("pipeline.synthetic.sets")
        except ImportError:
            log.warning("pipeline.synthetic.sets is not present: no binding set")
            return None
        cfg = sets.SetConfig(per_class=per_class, test_per_class=test_per_class)
        return sets.write_set(root, "binding", cfg, sets.photos())
    raise ValueError(f"unknown set {name!r}")


def flowshard(*args: str) -> None:
    """Run a flowshard command in this process (raises on failure)."""
    from jobs.cli import cli

    cli.main(list(args), prog_name="flowshard", standalone_mode=False)


def build_set(name: str, work: Path, per_class: int, test_per_class: int) -> Path | None:
    """The built dataset of set `name` (built once; reused when work/name/ds exists)."""
    ds = work / name / "ds"
    if (ds / "dataset.json").exists():
        return ds
    listing = make_list(name, work / name, per_class, test_per_class)
    if listing is None:
        return None
    flowshard("--log-level", "WARNING", "build", str(listing), str(ds), "--flow", "farneback", "--resize", "none",
              "--executor", "local", "--no-progress")
    return ds


def count_params(run: Path) -> int:
    """Parameters of the run's model, rebuilt from its config.json on the meta device."""
    import torch

    from training.config import TrainConfig
    from training.models import build_model

    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(cfg.model).parameters())


def run_model(name: str, ds: Path, work: Path, steps: int, batch: int) -> dict:
    """Train `name` on `ds` for `steps` steps, evaluate; its row of the table."""
    run = work / "runs" / f"{ds.parent.name}-{name}"
    flags, scaled = MODELS[name]
    start = time.perf_counter()
    flowshard("--log-level", "WARNING", "train", str(ds), "--output", str(run), "--steps-per-epoch", str(steps),
              "--batch-size", str(batch), *COMMON, *flags)
    summary = json.loads((run / "train_summary.json").read_text())
    top1 = {k: v["video_top1"] for k, v in summary["eval"].items() if v}
    row = {"set": ds.parent.name, "model": name, "params": count_params(run),
           "clips_per_s": summary["train"]["clips_per_s"], "video_top1": top1, "seconds": time.perf_counter() - start,
           "scaled": scaled}
    log.info("%s", json.dumps(row))
    return row


# The papers' configurations (class counts of the datasets they report on).
PAPER_SIZES = {
    "C3D (UCF101 head)": {"model": "c3d", "num_classes": 101, "rgb_frames": 16},
    "R3D-18 (Kinetics)": {"model": "r3d", "num_classes": 400, "rgb_frames": 16},
    "R(2+1)D-18 (Kinetics)": {"model": "r2plus1d", "num_classes": 400, "rgb_frames": 16},
    "R3D-34 (Kinetics)": {"model": "r3d", "num_classes": 400, "rgb_frames": 16, "depth": 34},
    "R(2+1)D-34 (Kinetics)": {"model": "r2plus1d", "num_classes": 400, "rgb_frames": 16, "depth": 34},
    "FstCN (UCF101)": {"model": "fstcn", "num_classes": 101, "rgb_frames": 25},
    "Karpathy single frame, multires (Sports-1M)": {"model": "karpathy", "num_classes": 487, "rgb_frames": 1,
                                                    "time_fusion": "single"},
    "Karpathy slow fusion, multires (Sports-1M)": {"model": "karpathy", "num_classes": 487, "rgb_frames": 10},
    "Karpathy slow fusion, full frame (Sports-1M)": {"model": "karpathy", "num_classes": 487, "rgb_frames": 10,
                                                     "multires": False, "size": 170},
    "Siamese, ResNet-50 per stream, RGB + flow (UCF101)": {"model": "siamese", "num_classes": 101, "snippets": 8,
                                                           "streams": "both", "arch": "resnet50"},
}


def paper_sizes() -> str:
    """Markdown: parameter counts of every family at its paper's size (built on the meta device)."""
    import torch

    from training.models import ModelConfig, build_model, factorized, karpathy

    lines = ["| network | parameters |", "|---|---:|"]
    for label, kw in PAPER_SIZES.items():
        kw = dict(kw)
        options = None
        if "depth" in kw:
            options = factorized.Options(depth=kw.pop("depth"))
        if kw["model"] == "karpathy":
            options = karpathy.Options(time_fusion=kw.pop("time_fusion", "slow"), multires=kw.pop("multires", True),
                                       size=kw.pop("size", 178))
        with torch.device("meta"):
            net = build_model(ModelConfig(**{"streams": "rgb", **kw, "options": options}))
        lines.append(f"| {label} | {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M |")
    return "\n".join(lines)


def table(rows: list[dict], sets: list[str]) -> str:
    """Markdown: one row per model (two_stream: rgb, flow and fused), video top-1 per set."""
    lines = ["| model | parameters | clips/s (CPU) | " + " | ".join(f"{s} top-1" for s in sets) + " |",
             "|---|---:|---:|" + "---:|" * len(sets)]
    names = list(dict.fromkeys(r["model"] for r in rows))
    for name in names:
        mine = {r["set"]: r for r in rows if r["model"] == name}
        first = next(iter(mine.values()))
        outputs = ["rgb", "flow", "fused"] if name in ("two_stream", "siamese") else ["fused"]
        for out in outputs:
            label = f"{name} ({out})" if name in ("two_stream", "siamese") else name
            cells = [f"{mine[s]['video_top1'].get(out, float('nan')):.2f}" if s in mine else "-" for s in sets]
            speed = sum(r["clips_per_s"] for r in mine.values()) / len(mine)
            lines.append(f"| {label} | {first['params'] / 1e6:.2f} M | {speed:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="bench_out/clip_nets")
    parser.add_argument("--sets", default="motion,state,binding")
    parser.add_argument("--models", default="all")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=8, help="Training videos per class.")
    parser.add_argument("--test-per-class", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: steady when other processes share the cores).")
    parser.add_argument("--json", default=None)
    parser.add_argument("--table", default=None)
    parser.add_argument("--paper-sizes", action="store_true", help="Print the papers' parameter counts and exit.")
    parser.add_argument("--merge", default=None,
                        help="Comma list of --json files of earlier runs: print their rows as one table and exit.")
    args = parser.parse_args()
    if args.paper_sizes:
        print(paper_sizes())
        return
    if args.merge:
        rows = [r for f in args.merge.split(",") for r in json.loads(Path(f).read_text())]
        print(table(rows, list(dict.fromkeys(r["set"] for r in rows))))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    names = list(MODELS) if args.models == "all" else args.models.split(",")
    rows, sets = [], []
    for s in args.sets.split(","):
        ds = build_set(s, work, args.per_class, args.test_per_class)
        if ds is None:
            continue
        sets.append(s)
        for name in names:
            rows.append(run_model(name, ds, work, args.steps, args.batch_size))
            if args.json:  # after every model: a run that stops keeps what it measured
                Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    text = table(rows, sets)
    print(text)
    if args.table:
        Path(args.table).write_text(text + "\n")


if __name__ == "__main__":
    main()
