"""What a new user meets first: input checks before Ray, a labelled contact sheet, the
evaluate table, and demo videos of real photographs."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from pipeline import visualize
from pipeline.encode import DecodedSample


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_build_checks_the_input_before_starting_ray(tmp_path, monkeypatch, make):
    import ray

    from pipeline.cluster import startup

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was asked before the input was checked")

    monkeypatch.setattr(startup, "cluster_gpus", no_ray)  # --flow-device auto asks the cluster for GPUs
    monkeypatch.setattr(ray, "init", no_ray)
    src = tmp_path / "videos"
    if make == "empty":
        src.mkdir()
    res = CliRunner().invoke(cli, ["build", str(src), str(tmp_path / "out")])  # defaults: ray, tvl1, device auto
    assert res.exit_code == 1, res.output + repr(res.exception)
    assert ("does not exist" if make == "missing" else "no videos found") in res.output
    assert not (tmp_path / "out").exists()


def small_sample(warped: bool = False) -> DecodedSample:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (6, 30, 40, 3), dtype=np.uint8)
    flow = np.zeros((5, 30, 40, 2), np.float32)
    flow[..., 0] = 3.0
    meta = {"video_id": "v_left_g01", "label": "left", "label_id": 1, "size": [40, 30],
            "flow": {"algorithm": "tvl1", "bound": 20.0},
            "frames": [{"index": i} for i in range(6)], "flow_fields": [{"from": i, "to": i + 1} for i in range(5)]}
    return DecodedSample(frames=frames, flow=flow, meta=meta, warped=flow * 0 if warped else None)


def test_contact_sheet_words():
    labels = visualize.sheet_labels(small_sample(), [0, 2, 4], 20.0)
    assert "v_left_g01" in labels["title"] and "label: left (1)" in labels["title"] and "tvl1" in labels["title"]
    assert labels["rows"] == ["RGB", "flow colour", "flow x", "flow y"]
    assert labels["columns"] == ["t=0->1", "t=2->3", "t=4->5"]
    assert "saturated at 5 px" in labels["legend"] and "0 / 255 = -/+20 px" in labels["legend"]
    assert visualize.sheet_labels(small_sample(warped=True), [0], 20.0)["rows"][-1] == "warped colour"


def test_colour_wheel_legend_matches_the_flow_colours():
    wheel = visualize.colour_wheel_legend(101, 5.0)
    right = visualize.flow_to_color(np.array([[[5.0, 0.0]]], np.float32), 5.0)[0, 0]
    down = visualize.flow_to_color(np.array([[[0.0, 5.0]]], np.float32), 5.0)[0, 0]
    assert np.abs(wheel[50, 99].astype(int) - right).max() <= 12  # the rim at the right: flow (+5, 0)
    assert np.abs(wheel[99, 50].astype(int) - down).max() <= 12  # the rim at the bottom: flow (0, +5)
    assert (wheel[50, 50] > 240).all() and (wheel[0, 0] == 255).all()  # white centre (no motion), outside


def test_contact_sheet_layout():
    sample = small_sample(warped=True)
    sheet = visualize.contact_sheet(sample, columns=3)
    zoom = -(-visualize.MIN_TILE_HEIGHT // 30)  # small frames are enlarged
    top = 2 * visualize.LINE + 6
    x0 = visualize.LABEL_WIDTH
    tile = sheet[top:top + 30 * zoom:zoom, x0:x0 + 40 * zoom:zoom]
    assert np.array_equal(tile, sample.frames[0])  # the first column's RGB tile is field 0's first frame
    grey_x = sheet[top + 2 * (30 * zoom + 2) + 5, x0 + 5]
    assert grey_x[0] == 128 + round(3 * 127 / 20)  # flow x row: 3 px right
    assert (sheet[:visualize.LINE, :300] < 128).any()  # the title is written
    assert (sheet[top:top + 30 * zoom, :visualize.LABEL_WIDTH] < 128).any()  # the row name "RGB"
    assert sheet.shape[0] >= top + 5 * 30 * zoom  # five rows: the warped colour row too


def test_evaluate_prints_a_table_and_json_only_when_asked():
    from jobs.commands.train import evaluate_command, results_table

    r = {"clip_top1": 0.5, "video_top1": 0.75, "video_top5": 1.0, "mean_class_accuracy": 0.625, "videos": 4}
    lines = results_table({"rgb": r, "flow": None, "fused": r})
    assert lines[0].split()[:3] == ["STREAM", "CLIP", "TOP-1"]
    assert lines[1].split() == ["rgb", "0.5000", "0.7500", "1.0000", "0.6250", "4"]
    assert lines[2].split() == ["flow", "-", "-", "-", "-", "-"]
    option = next(p for p in evaluate_command.params if p.name == "json_path")
    assert not option.required and option.default is None


def test_demo_videos_show_photographs(tmp_path):
    from jobs.demo import make_demo_videos
    from pipeline import decode
    from pipeline.synthetic import motion as synthetic

    listing = make_demo_videos(tmp_path, per_class=1, test_per_class=0, num_frames=3, size=(64, 48))
    assert listing.read_text().splitlines()[1] == "left/v_left_g00.mp4,left,train"
    first, _ = next(decode.iter_frames(str(tmp_path / "left" / "v_left_g00.mp4"), decode.DecodeConfig(resize="none")))
    photo = next(synthetic.moving_frames("left", 1, 48, 64, source="photo"))
    noise = next(synthetic.moving_frames("left", 1, 48, 64, source="noise"))
    err = lambda a, b: float(np.abs(a.astype(float) - b.astype(float)).mean())  # noqa: E731
    assert err(first, photo) < 6 < err(first, noise)


RELEASE = __import__("pathlib").Path(__file__).parent / "fixtures" / "release-0.1"
TINY_TRAIN = ["--arch", "resnet18", "--streams", "flow", "--clip-len", "4", "--crop-size", "32", "--batch-size", "2",
              "--device", "cpu", "--epochs", "1", "--steps-per-epoch", "1", "--eval-every", "0", "--no-progress"]


def test_train_checks_the_default_weights_before_any_work(tmp_path, monkeypatch):
    import torch

    from training import data

    def no_loader(*args, **kwargs):
        raise AssertionError("a loader was made before the weights were checked")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no cached ImageNet weights
    monkeypatch.setattr(data, "make_loader", no_loader)
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", str(RELEASE / "dataset"), "--output", str(run), *TINY_TRAIN])
    assert res.exit_code == 1, res.output + repr(res.exception)
    assert "--weights imagenet" in res.output and "--weights none" in res.output
    assert not run.exists()  # nothing written either


def test_loader_workers_default_to_the_rank_share_of_the_cpus_and_are_recorded(tmp_path, monkeypatch):
    import json
    import os

    from training import checkpoint, distributed

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6}, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert distributed.cpu_share() == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert distributed.cpu_share() == 1  # never 0: a rank keeps one loader process
    # The run records the number it resolved (0 here: loader processes forked inside pytest can hang).
    from jobs.commands import train as train_command

    monkeypatch.setattr(train_command, "cpu_share", lambda: 0)
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", str(RELEASE / "dataset"), "--output", str(run), "--weights", "none",
                                   *TINY_TRAIN])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert json.loads((run / "config.json").read_text())["data"]["workers"] == 0
    assert checkpoint.load_checkpoint(run / "last.pt")["config"]["data"]["workers"] == 0


# The bogus file starts like a protocol-4 pickle, on purpose: torch warns about the protocol
# before its unpickler fails, which is the failure under test.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")
def test_evaluate_names_a_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "notes.pt"
    bogus.write_bytes(b"\x80\x04not a pickle at all")
    res = CliRunner().invoke(cli, ["evaluate", str(RELEASE / "dataset"), str(bogus), "--device", "cpu"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"{bogus}: not a checkpoint (expected a flowshard checkpoint" in res.output


def test_clips_log_the_padded_videos_and_refuse_a_clip_longer_than_all(caplog):
    import logging

    from pipeline.clips import ClipsConfig, check_lengths

    cfg = ClipsConfig(clip_len=10)
    with caplog.at_level(logging.WARNING, logger="pipeline.clips"):
        check_lengths([(9, 10), (30, 10), (4, 10)], cfg)
    assert "2 of 3 video samples hold fewer than the 10 flow fields" in caplog.text
    assert "repeat the last flow field" in caplog.text and "TSN's padding" in caplog.text
    caplog.clear()
    check_lengths([(30, 10)], cfg)
    assert not caplog.text
    with pytest.raises(ValueError, match="longer than every video sample .the longest holds 9.*--clip-len"):
        check_lengths([(9, 10), (4, 10)], cfg)
    with pytest.raises(ValueError, match="2 frames is longer"):
        check_lengths([(1, 2)], ClipsConfig(clip_len=0, rgb_frames=2))


def test_the_command_list_is_read_from_source_and_matches_the_commands():
    import subprocess
    import sys

    from jobs.cli import COMMANDS, short_help

    for name in COMMANDS:
        command = cli.get_command(None, name)
        assert command.name == name and short_help(name, 60) == command.get_short_help_str(60), name
    code = ("import sys; from click.testing import CliRunner; from jobs.cli import cli; "
            "out = CliRunner().invoke(cli, ['--help']).output; "
            "print(sorted(m for m in sys.modules if m.startswith('jobs.commands.') or m == 'torch')); print(out)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, _, text = proc.stdout.partition("\n")
    assert loaded == "[]"  # `flowshard --help` imports no command module (and no torch)
    assert [line.split()[0] for line in text.split("Commands:")[1].strip().splitlines()] == sorted(COMMANDS)
