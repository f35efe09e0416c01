"""Each clip network trains a few CPU steps through the real loader (`flowshard train` on a
built dataset or its clip shards), is evaluated from its checkpoint, and C3D's fc6 features
come out per video as Parquet."""
from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest

from test_clips import built, flowshard  # noqa: F401  (built: the 12-video dataset fixture, 20 frames, 64x48)

FAST = ["--workers", "0", "--device", "cpu", "--no-progress", "--batch-size", "2", "--epochs", "1",
        "--steps-per-epoch", "2", "--eval-every", "0", "--lr", "0.001", "--optimizer", "adamw"]

# Tiny versions of every family (the papers' sizes are tested on the meta device elsewhere).
MODELS = {
    "r3d": ["--rgb-frames", "8", "--crop-size", "32", "--width-mult", "0.125", "--depth", "10"],
    "r2plus1d": ["--rgb-frames", "8", "--crop-size", "32", "--width-mult", "0.125", "--depth", "10"],
    "fstcn": ["--rgb-frames", "6", "--diff-frames", "2", "--crop-size", "64", "--width-mult", "0.0625",
              "--fc-dim", "16"],
    "karpathy-slow": ["--crop-size", "44", "--width-mult", "0.0625", "--fc-dim", "16"],
    "karpathy-late": ["--time-fusion", "late", "--crop-size", "44", "--width-mult", "0.0625", "--fc-dim", "16"],
}
SIAMESE = ["--arch", "resnet18", "--weights", "none", "--clip-len", "4", "--snippets", "4", "--strides", "2", "--crop-size", "32",
           "--embed-dim", "16", "--test-clips", "2"]


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Every test here runs with one intra-op thread (see conftest.torch_one_thread)."""


def summary(run) -> dict:
    s = json.loads((run / "train_summary.json").read_text())
    assert s["steps"] == 2 and math.isfinite(s["train"]["loss"])
    return s


@pytest.mark.parametrize("name", sorted(MODELS))
def test_few_training_steps_on_the_dense_dataset(built, tmp_path, name):
    run = tmp_path / "run"
    flowshard("train", str(built), "--model", name.split("-")[0], "--output", str(run), *MODELS[name], *FAST)
    summary(run)
    assert (run / "last.pt").stat().st_size > 0


def test_siamese_trains_with_its_em_step_and_is_evaluated_with_both_streams(built, tmp_path):
    run = tmp_path / "run"
    flowshard("train", str(built), "--model", "siamese", "--output", str(run), *SIAMESE, *FAST)
    summary(run)  # the contrastive loss of the training loop's training_loss hook (cross-entropy would refuse
    # the (B, splits, classes) similarities)
    flowshard("evaluate", str(built), str(run / "last.pt"), "--json", str(tmp_path / "m.json"), "--device", "cpu",
              "--workers", "0", "--no-progress")
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["rgb"]["videos"] == m["flow"]["videos"] == m["fused"]["videos"] == 4


def test_siamese_reads_the_whole_video_by_default_one_snippet_per_segment(built, tmp_path):
    """The paper's precondition and effect are the start and the end of the whole video: by
    default the Siamese model reads one snippet per TSN segment (--segments T), in time order,
    and is tested on clips of T snippets too."""
    run = tmp_path / "run"
    flags = SIAMESE[:SIAMESE.index("--snippets")] + SIAMESE[SIAMESE.index("--strides") + 2:]
    flowshard("train", str(built), "--model", "siamese", "--output", str(run), *flags, "--segments", "5", *FAST)
    summary(run)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["sampler"] == "tsn" and cfg["data"]["ordered"] and cfg["model"]["snippets"] == 5
    flowshard("evaluate", str(built), str(run / "last.pt"), "--json", str(tmp_path / "m.json"), "--device", "cpu",
              "--workers", "0", "--no-progress")
    assert json.loads((tmp_path / "m.json").read_text())["fused"]["videos"] == 4


def test_c3d_trains_on_rgb_clip_shards_and_extracts_fc6_per_video(built, tmp_path):
    clips, run, out = tmp_path / "clips", tmp_path / "run", tmp_path / "fc6.parquet"
    flowshard("clips", str(built), str(clips), "--clip-len", "0", "--rgb-frames", "16", "--per-video", "2")
    flowshard("train", str(clips), "--model", "c3d", "--output", str(run), "--crop-size", "32", "--width-mult",
              "0.0625", "--fc-dim", "24", *FAST)
    summary(run)
    # By default a clip every 8 frames (C3D's protocol): of 20 frames only the 16 from frame 0 fit
    # (the next clip would start at frame 8 and end past the video); every 2 frames: starts 0, 2, 4.
    flowshard("features", str(built), str(run / "last.pt"), str(out), "--workers", "0")
    assert {r["clips"] for r in pq.read_table(out).to_pylist()} == {1}
    flowshard("features", str(built), str(run / "last.pt"), str(out), "--clip-every", "2", "--workers", "0")
    assert {r["clips"] for r in pq.read_table(out).to_pylist()} == {3}
    from click.testing import CliRunner

    from jobs.commands.train import features_command

    refused = CliRunner().invoke(features_command, [str(built), str(run / "last.pt"), str(out), "--test-clips", "3"])
    assert refused.exit_code != 0 and "--clip-every 0" in refused.output
    flowshard("features", str(built), str(run / "last.pt"), str(out), "--clip-every", "0", "--test-clips", "3",
              "--workers", "0")
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 12 and {r["split"] for r in rows} == {"train", "test"}
    assert all(r["clips"] == 3 and len(r["feature"]) == 24 for r in rows)
    assert all(abs(sum(v * v for v in r["feature"]) - 1) < 1e-4 for r in rows if any(r["feature"]))
    assert {r["label"] for r in rows} == {"left", "right", "up", "down"}
