"""Detection metrics by the standard: unannotated videos count as negatives, tube overlap over
the whole temporal intersection (gaps score 0), and the VOC and best-unmatched matching rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import encode
from tests.test_training_data import write_dataset
from training import data
from training.detection import data as det_data
from training.detection import engine, metrics
from training.detection.metrics import FrameDetection
from training.detection.tubes import Tube, TubeConfig
from training.transforms import IMAGENET_MEAN, IMAGENET_STD

W, H, FRAMES = 32, 24, 6
BOX = [4.0, 4.0, 20.0, 16.0]


def _tube(frames, box, score=1.0, label=0):
    return Tube(label=label, frames=tuple(frames), boxes=np.array([box] * len(frames), float),
                scores=np.full(len(frames), score), score=score)


# --- tube overlap ---------------------------------------------------------------------------

def test_a_gap_in_a_tube_lowers_its_overlap():
    """Frames 4 and 5 of the truth have no box: they score 0 in the mean over the intersection."""
    dense = _tube(range(10), [0, 0, 10, 10])
    gappy = _tube([0, 1, 2, 3, 6, 7, 8, 9], [0, 0, 10, 10])
    assert metrics.tube_overlap(dense, dense) == pytest.approx(1.0)
    assert metrics.tube_overlap(dense, gappy) == pytest.approx(8 / 10)
    assert metrics.tube_overlap(gappy, dense) == pytest.approx(8 / 10)
    # Temporal IoU times the mean over the intersection (frames 2-9 of 0-11): 8 / 12 x 6 / 8.
    later = _tube(range(2, 12), [0, 0, 10, 10])
    assert metrics.tube_overlap(later, gappy) == pytest.approx(8 / 12 * 6 / 8)


def test_a_gap_can_turn_a_hit_into_a_miss():
    truth = {"v": [_tube([0, 1, 2, 7, 8, 9], [0, 0, 10, 10])]}  # boxes on 6 of 10 frames
    found = [("v", _tube(range(10), [0, 0, 10, 10], 0.9))]
    assert metrics.video_map(found, truth, ["a"], ious=(0.5, 0.7))["map"] == {"0.5": 1.0, "0.7": 0.0}


# --- matching rules -------------------------------------------------------------------------

G1, G2 = [0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0]  # two truths of one action, IoU 2/3 with each other
D1, D2 = G1, [0.5, 0.0, 10.5, 10.0]  # D2: IoU 95/105 with G1 (its best), 85/115 with G2


def test_match_rules_on_one_detection():
    overlaps, taken = np.array([0.9, 0.74]), np.array([True, False])
    assert metrics.match(overlaps, taken, 0.5, "voc") is None  # its best truth is taken: a false positive
    assert metrics.match(overlaps, taken, 0.5, "best_unmatched") == 1
    assert metrics.match(overlaps, taken, 0.8, "best_unmatched") is None  # 0.74 < 0.8
    assert metrics.match(np.array([0.9, 0.74]), np.array([False, False]), 0.5, "voc") == 0
    assert metrics.match(np.zeros(0), np.zeros(0, bool), 0.5, "voc") is None


def test_frame_matching_rules_differ_where_truths_overlap():
    gt = {0: {("v", 0): np.array([G1, G2])}}
    dets = [FrameDetection("v", 0, 0, 0.9, np.array(D1)), FrameDetection("v", 0, 0, 0.8, np.array(D2))]
    # VOC: D2's best truth G1 is D1's, so D2 is a false positive: precision 1 at recall 1/2 only.
    assert metrics.frame_map(dets, gt, ["a"], matching="voc")["map"] == pytest.approx(0.5)
    # Best unmatched: D2 takes G2, both truths found.
    assert metrics.frame_map(dets, gt, ["a"], matching="best_unmatched")["map"] == pytest.approx(1.0)
    assert metrics.frame_map(dets, gt, ["a"])["map"] == pytest.approx(0.5)  # VOC is the default


def test_video_matching_rules_differ_where_truth_tubes_overlap():
    gt = {"v": [_tube(range(5), G1), _tube(range(5), G2)]}
    tubes = [("v", _tube(range(5), D1, 0.9)), ("v", _tube(range(5), D2, 0.8))]
    assert metrics.video_map(tubes, gt, ["a"], ious=(0.5,), matching="voc")["map"]["0.5"] == pytest.approx(0.5)
    assert metrics.video_map(tubes, gt, ["a"], ious=(0.5,), matching="best_unmatched")["map"]["0.5"] == 1.0


def test_an_unknown_matching_rule_is_refused_by_name():
    with pytest.raises(ValueError, match="'hungarian'"):
        metrics.frame_map([], {}, ["a"], matching="hungarian")
    with pytest.raises(ValueError, match="'hungarian'"):
        engine.summarize([], ["a"], TubeConfig(), matching="hungarian")


# --- unannotated videos ---------------------------------------------------------------------

def det_sample(key: str, grey: int, annotated: bool) -> dict:
    """A test video of uniform grey frames; annotated: one "jump" track with BOX on every frame."""
    rgb = [encode.encode_rgb(np.full((H, W, 3), grey, np.uint8)) for _ in range(FRAMES)]
    flows = [encode.encode_flow(np.zeros((H, W, 2), np.float32), 20.0) for _ in range(FRAMES - 1)]
    frames = [{"index": i, "pts": i / 25} for i in range(FRAMES)]
    meta = {"schema_version": encode.SCHEMA_VERSION, "kind": "video", "video_id": key, "key": key, "part": 0,
            "num_parts": 1, "source": f"a/{key}.mp4", "label": "a", "label_id": 0, "split": "test", "fps": 25.0,
            "size": [W, H], "frames": frames, "flow_fields": [{"from": i, "to": i + 1} for i in range(FRAMES - 1)],
            "flow": {"algorithm": "farneback", "bound": 20.0, "step": 1}, "rgb": {"codec": "jpg", "quality": 90},
            "mode": "dense", "clips": []}
    if annotated:
        meta["tracks"] = [{"track": 0, "label": "jump", "label_id": 0}]
        for f in frames:
            f["boxes"] = [[*BOX, 0]]
    return encode.to_sample(key, meta, rgb, flows)


class BrightnessDetector(torch.nn.Module):
    """Finds "jump" at BOX in every frame, scoring brighter frames higher (0.5 + 0.4 x grey)."""

    def forward(self, inputs: dict) -> dict:
        mean, std = float(IMAGENET_MEAN[0]), float(IMAGENET_STD[0])
        out = []
        for frame in inputs["rgb"]:
            grey = float((frame[0] * std + mean).mean().clamp(0, 1))
            out.append({"boxes": torch.tensor([BOX]), "scores": torch.tensor([0.5 + 0.4 * grey]),
                        "labels": torch.tensor([1])})
        return {"rgb": out}


def test_an_unannotated_videos_false_positives_lower_frame_and_video_map(tmp_path):
    """An annotated dark video and an unannotated bright one, the same detection on every frame:
    the bright video's detections (and its tube) rank first and are all false positives."""
    source = data.open_source(write_dataset(tmp_path, {"test-00000.tar": [
        det_sample("annotated", 60, True), det_sample("unannotated", 200, False)]}))
    cfg = data.DataConfig(task="detect", streams="rgb", batch_size=4, workers=0)
    loader = data.make_loader(source, "test", cfg, train=False)
    results = engine.evaluate(BrightnessDetector(), loader, torch.device("cpu"), streams=("rgb",),
                              class_names=["jump"], tube_cfg=TubeConfig(), progress=False)
    r = results["rgb"]
    # 6 false positives, then 6 true positives: the best precision at full recall is 6 / 12.
    assert r["frame_map"] == pytest.approx(0.5)
    assert r["video_map"] == {"0.2": pytest.approx(0.5), "0.5": pytest.approx(0.5)}  # FP tube, then TP tube
    assert r["frames"] == 2 * FRAMES and r["matching"] == "voc"  # every frame of both videos evaluated
    # Without the unannotated video both would be perfect.
    alone = data.open_source(write_dataset(tmp_path / "alone", {"test-00000.tar": [det_sample("annotated", 60, True)]}))
    r = engine.evaluate(BrightnessDetector(), data.make_loader(alone, "test", cfg, train=False), torch.device("cpu"),
                        streams=("rgb",), class_names=["jump"], tube_cfg=TubeConfig(), progress=False)["rgb"]
    assert r["frame_map"] == pytest.approx(1.0) and r["video_map"]["0.5"] == pytest.approx(1.0)


def test_unannotated_videos_give_every_frame_without_boxes_at_evaluation_only():
    sample = det_sample("neg", 100, False)
    meta = encode.load_meta(sample["json"])
    cfg = data.DataConfig(task="detect", streams="rgb", batch_size=2, workers=0)
    items = det_data.pick_items(sample, meta, cfg, train=False, epoch=0, where="test")
    assert [it["frame"] for it in items] == list(range(FRAMES))
    assert all(it["boxes"].shape == (0, 4) and it["label"] == -1 for it in items)
    assert det_data.pick_items(sample, meta, cfg, train=True, epoch=0, where="test") == []  # training: skipped


def test_a_split_without_any_box_is_refused():
    record = {"video_id": "v", "frame": 0, "label": -1, "gt_boxes": np.zeros((0, 4)), "gt_labels": np.zeros(0, int),
              "gt_tracks": np.zeros(0, int), "dets": {"rgb": (np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))}}
    with pytest.raises(ValueError, match="no videos with boxes"):
        engine.summarize([record], ["a"], TubeConfig())
