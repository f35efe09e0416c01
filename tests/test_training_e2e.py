"""End to end on CPU: build -> clips -> train -> evaluate; DDP with torchrun; exact resume.

The accuracy test's classes differ only by motion (the same textures move left, right,
up or down; test videos use textures never seen in training), so the temporal stream can
learn them and the spatial stream cannot: this checks that flow direction, quantization,
stacking and the crop survive the whole path. Training runs without flip, because a
correct flip turns a "right" video into a "left" one; a second check flips the test
inputs and expects exactly that swap from the trained model.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_clips import flowshard, motion_list
from training import checkpoint, data
from training.config import TrainConfig
from training.models import build_model
from training.transforms import hflip_flow

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
FAST = ["--arch", "resnet18", "--weights", "none", "--workers", "0", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Every test here runs with one intra-op thread (see conftest.torch_one_thread)."""


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    """4 motion classes x 7 textures of 24 frames at 64x48: textures 0-3 train, 4-6 test."""
    root = tmp_path_factory.mktemp("motion")
    ds, clips = root / "ds", root / "clips"
    flowshard("build", str(motion_list(root, per_class=7, test_from=4, frames=24)), str(ds), "--flow", "farneback",
              "--resize", "none", "--executor", "local", "--shard-samples", "5", "--no-progress")
    flowshard("clips", str(ds), str(clips), "--clip-len", "10", "--per-video", "8", "--shard-samples", "20")
    return ds, clips


def test_temporal_stream_learns_motion_and_spatial_stream_cannot(motion, tmp_path):
    ds, clips = motion
    run = tmp_path / "run"
    start = time.perf_counter()
    flowshard("train", str(clips), "--output", str(run), "--streams", "both", "--epochs", "4", "--batch-size", "16",
              "--crop-size", "48", "--lr", "0.01", "--no-flip", "--eval-every", "0", "--seed", "0", *FAST)
    trained = time.perf_counter() - start
    # Evaluate on the built video dataset: test clips sampled inside the loader, 5 per video.
    flowshard("evaluate", str(ds), str(run / "last.pt"), "--json", str(tmp_path / "metrics.json"),
              "--test-clips", "5", "--device", "cpu", "--workers", "0", "--no-progress")
    m = json.loads((tmp_path / "metrics.json").read_text())
    print(f"trained in {trained:.1f}s; video top-1 rgb {m['rgb']['video_top1']:.3f} "
          f"flow {m['flow']['video_top1']:.3f} fused {m['fused']['video_top1']:.3f}")
    for name in ("rgb", "flow", "fused"):
        assert set(m[name]) >= {"clip_top1", "video_top1", "video_top5", "mean_class_accuracy"}
        assert m[name]["videos"] == 12
    assert m["flow"]["video_top1"] >= 0.9
    assert m["rgb"]["video_top1"] <= 0.5  # chance is 0.25 on 12 videos of unseen textures
    assert m["fused"]["video_top1"] >= m["flow"]["video_top1"]
    assert (tmp_path / "metrics_confusion.png").stat().st_size > 0
    names = {p.name for p in run.iterdir()}
    assert {"last.pt", "epoch_000.pt", "epoch_003.pt", "config.json", "train.log", "tb"} <= names
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    check_flip_swaps_left_and_right(run / "last.pt", ds)


def check_flip_swaps_left_and_right(path: Path, ds: Path) -> None:
    """Flipped test clips (mirror + negate x) of a right-moving video must read as left, and back."""
    ckpt = checkpoint.load_checkpoint(path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = build_model(cfg.model).eval()
    model.load_state_dict(ckpt["model"])
    source = data.open_source(ds)
    labels = source.label_map
    swap = {labels["left"]: labels["right"], labels["right"]: labels["left"],
            labels["up"]: labels["up"], labels["down"]: labels["down"]}
    loader = data.make_loader(source, "test", dataclasses.replace(cfg.data, test_clips=3), train=False)
    hits = total = 0
    with torch.no_grad():
        for b in loader:
            flipped = torch.from_numpy(hflip_flow(b["flow"].numpy()))
            pred = model({"flow": flipped, "rgb": b["rgb"]})["flow"].argmax(1)
            hits += sum(int(p) == swap[int(y)] for p, y in zip(pred, b["label"]))
            total += len(pred)
    assert hits / total >= 0.9, f"{hits}/{total} flipped clips read as the mirrored motion"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_take_equal_steps_on_uneven_shards_and_resume_at_the_saved_step(motion, tmp_path, caplog):
    ds, _ = motion
    caplog.set_level(logging.INFO)  # the run's train.log gets what logging lets through
    # 16 train videos in shards of 5, 5, 5 and 1: the ranks' shares are uneven.
    sizes = sorted(r.samples for r in data.open_source(ds).split_shards("train"))
    assert len(set(sizes)) > 1
    run = tmp_path / "ddp"
    args = ["train", str(ds), "--output", str(run), "--crop-size", "32", "--batch-size", "2", "--clip-len", "4",
            "--steps-per-epoch", "3", "--test-clips", "2", *FAST]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "jobs.train", *args,
           "--epochs", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps_per_rank"] == [6, 6]
    assert summary["eval"]["fused"] is not None  # evaluation gathered both ranks' clips
    # Resume (one process) for a third epoch: it starts from the saved step.
    flowshard(*args, "--epochs", "3", "--resume")
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 9
    assert checkpoint.load_checkpoint(run / "epoch_002.pt")["step"] == 9
    assert "resumed from" in (run / "train.log").read_text()


def test_resume_continues_exactly(motion, tmp_path):
    ds, _ = motion
    args = [str(ds), "--crop-size", "32", "--batch-size", "2", "--clip-len", "2", "--steps-per-epoch", "2",
            "--epochs", "2", "--eval-every", "0", "--streams", "flow", "--lr", "0.05", *FAST]
    flowshard("train", *args, "--output", str(tmp_path / "a"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "last.pt").write_bytes((tmp_path / "a" / "epoch_000.pt").read_bytes())
    flowshard("train", *args, "--output", str(tmp_path / "b"), "--resume")
    a = checkpoint.load_checkpoint(tmp_path / "a" / "last.pt")
    b = checkpoint.load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 4
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, msg=name)
    assert a["scheduler"] == b["scheduler"]


def test_keep_epochs_removes_older_epoch_checkpoints_of_the_run_only(motion, tmp_path):
    ds, _ = motion
    run = tmp_path / "run"
    args = [str(ds), "--output", str(run), "--crop-size", "32", "--batch-size", "2", "--clip-len", "2",
            "--steps-per-epoch", "1", "--eval-every", "0", "--streams", "flow", *FAST]
    flowshard("train", *args, "--epochs", "3", "--keep-epochs", "2")
    assert sorted(p.name for p in run.glob("*.pt")) == ["epoch_001.pt", "epoch_002.pt", "last.pt"]
    assert json.loads((run / "config.json").read_text())["keep_epochs"] == 2
    # A file of a later epoch, left by an earlier and longer run in this folder, is not this run's.
    (run / "epoch_007.pt").write_bytes((run / "epoch_001.pt").read_bytes())
    flowshard("train", *args, "--epochs", "5", "--keep-epochs", "1", "--resume")
    assert sorted(p.name for p in run.glob("*.pt")) == ["epoch_004.pt", "epoch_007.pt", "last.pt"]
    assert checkpoint.load_checkpoint(run / "last.pt")["step"] == 5


def test_keep_epochs_zero_keeps_every_one_and_negative_is_refused(tmp_path):
    for epoch in range(3):
        (tmp_path / checkpoint.epoch_name(epoch)).write_bytes(b"x")
    assert checkpoint.prune_epochs(tmp_path, 2, 0) == []
    assert checkpoint.prune_epochs(tmp_path, 2, 2) == [tmp_path / "epoch_000.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_001.pt", "epoch_002.pt"]
    from test_lr_schedule import train_config as config

    assert config(keep_epochs=3).keep_epochs == 3
    with pytest.raises(ValueError, match="keep_epochs must be >= 0"):
        config(keep_epochs=-1)


def test_resume_refuses_another_setup(motion, tmp_path):
    ds, _ = motion
    args = [str(ds), "--output", str(tmp_path / "r"), "--crop-size", "32", "--batch-size", "2", "--clip-len", "2",
            "--steps-per-epoch", "1", "--eval-every", "0", "--streams", "flow", *FAST]
    flowshard("train", *args, "--epochs", "1")
    from click.testing import CliRunner

    from jobs.cli import cli as main

    result = CliRunner().invoke(main, ["train", *args, "--epochs", "2", "--resume", "--clip-len", "3"])
    assert result.exit_code != 0 and "cannot resume" in result.output and "clip_len" in result.output
