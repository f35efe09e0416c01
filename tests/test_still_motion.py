"""Temporal-stream pre-training from still images: the motion each class promises, the
pretrain-flow command end to end, and a pre-trained temporal stream carried into other models."""
from __future__ import annotations

import json
import random

import cv2
import numpy as np
import pytest
import torch

from pipeline.synthetic import still_motion
from pipeline.synthetic import sets
from pipeline.synthetic.still_motion import StillMotionConfig
from test_clips import flowshard
from training.models import ModelConfig, build_model


@pytest.fixture(scope="module")
def photo():
    return sets.photos()[1]  # coffee


def mean_flow(frames: list[np.ndarray]) -> np.ndarray:
    """Farneback flow from frame 3 to 4, (H, W, 2)."""
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames[3:5]]
    return cv2.calcOpticalFlowFarneback(grey[0], grey[1], None, 0.5, 3, 15, 3, 5, 1.2, 0)


@pytest.mark.parametrize("motion", ["shift_left", "shift_right", "shift_up", "shift_down"])
def test_shifts_move_the_whole_view(photo, motion):
    cfg = StillMotionConfig(num_frames=8, size=(96, 72), shift=(2.0, 2.0))
    flow = mean_flow(still_motion.motion_video(photo, motion, cfg, random.Random(0)))
    inner = flow[12:-12, 12:-12].reshape(-1, 2).mean(0)
    np.testing.assert_allclose(inner, 2.0 * np.array(still_motion.SHIFTS[motion]), atol=0.4)


def test_zoom_and_rotation_have_their_flow_patterns(photo):
    cfg = StillMotionConfig(num_frames=8, size=(96, 72), zoom=(0.03, 0.03), rotate=(2.0, 2.0))
    sides = {}
    for motion in ("zoom_in", "zoom_out", "rotate_cw", "rotate_ccw"):
        flow = mean_flow(still_motion.motion_video(photo, motion, cfg, random.Random(1)))
        sides[motion] = (flow[20:52, 70:90, 0].mean() - flow[20:52, 6:26, 0].mean(),  # right minus left x
                         flow[4:20, 30:66, 0].mean())  # x motion along the top edge
    assert sides["zoom_in"][0] > 1.0 and sides["zoom_out"][0] < -1.0  # outwards, inwards
    assert sides["rotate_cw"][1] > 0.3 and sides["rotate_ccw"][1] < -0.3  # clockwise: the top edge moves right


@pytest.mark.parametrize("motion", ["object_left", "object_up"])
def test_objects_move_over_a_still_view(photo, motion):
    cfg = StillMotionConfig(num_frames=8, size=(96, 72), shift=(2.0, 2.0))
    frames = still_motion.motion_video(photo, motion, cfg, random.Random(2))
    moving = np.abs(frames[4].astype(int) - frames[3].astype(int)).sum(-1) > 30
    flow = mean_flow(frames)
    assert moving.any() and (~moving).mean() > 0.6  # a patch moves, most of the view is still
    d = np.array(still_motion.OBJECTS[motion])
    assert flow[moving].mean(0) @ d > 0.8 and np.abs(flow[~moving]).mean() < 0.5


def test_pretrain_flow_builds_a_dataset_whose_flow_stream_initialises_other_models(tmp_path, photo):
    images = tmp_path / "images"
    images.mkdir()
    for i, p in enumerate(sets.photos()[:3]):
        cv2.imwrite(str(images / f"photo{i}.png"), cv2.cvtColor(p, cv2.COLOR_RGB2BGR))
    (images / "broken.jpg").write_bytes(b"not an image")
    out = flowshard("pretrain-flow", str(images), str(tmp_path / "pre"), "--size", "64x48", "--frames", "8",
                    "--test-fraction", "0.3", "--flow", "farneback", "--resize", "none", "--executor", "local",
                    "--no-progress")
    assert "broken.jpg: not a readable image" in out
    info = json.loads((tmp_path / "pre" / "dataset.json").read_text())
    assert sorted(info["label_map"]) == sorted(still_motion.CLASSES) and len(still_motion.CLASSES) == 12
    assert info["counts"]["splits"] == {"train": 24, "test": 12}  # photo2 (and broken.jpg) are the test images
    run = tmp_path / "run"
    flowshard("train", str(tmp_path / "pre"), "--output", str(run), "--streams", "flow", "--arch", "resnet18",
              "--weights", "none", "--clip-len", "4", "--crop-size", "32", "--batch-size", "4", "--epochs", "1",
              "--steps-per-epoch", "2", "--eval-every", "0", "--workers", "0", "--device", "cpu", "--no-progress")
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]
    conv1 = state["streams.flow.trunk.0.weight"]
    layer4 = state["streams.flow.trunk.7.1.conv2.weight"]
    for model in ("fusion", "st_resnet"):
        net = build_model(ModelConfig(model=model, arch="resnet18", num_classes=4, clip_len=4, snippets=2,
                                      flow_weights=str(run / "last.pt")))
        torch.testing.assert_close(net.flow.conv1.weight, conv1)
        # ST-ResNet-18: a 3x1x1 temporal filter (taps I/3) in front of the unit's 2D conv, which keeps its weights
        unit = net.flow.layer4[1].conv2
        torch.testing.assert_close(unit.weight if model == "fusion" else unit[1].weight, layer4)
    two = build_model(ModelConfig(arch="resnet18", num_classes=4, clip_len=4, flow_weights=str(run / "last.pt")))
    torch.testing.assert_close(two.streams["flow"].trunk[0].weight, conv1)
    with pytest.raises(ValueError, match="do not fit"):  # trained for L = 4, asked for L = 10
        build_model(ModelConfig(arch="resnet18", num_classes=4, clip_len=10, flow_weights=str(run / "last.pt")))
