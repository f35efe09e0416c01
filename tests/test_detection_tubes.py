"""Tube linking (Viterbi over score + overlap), temporal trimming, and mAP against hand-computed values."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.detection import metrics
from training.detection.metrics import FrameDetection
from training.detection.tubes import Tube, TubeConfig, action_frames, best_path, energy, iou_matrix, link

A = [[0, 0, 10, 10], [1, 0, 11, 10], [2, 0, 12, 10]]  # drifts right: IoU 90/110 between frames
B = [[50, 50, 60, 60], [50, 50, 60, 60], [80, 80, 90, 90]]  # jumps away in frame 2


def test_iou_matrix():
    assert iou_matrix(np.array([A[0]]), np.array([A[1], B[0]])).tolist() == [[pytest.approx(90 / 110), 0.0]]


def test_viterbi_finds_the_best_path_and_the_next_one():
    boxes = [np.array([A[t], B[t]], float) for t in range(3)]
    scores = [np.array([0.9, 0.8]), np.array([0.2, 0.9]), np.array([0.9, 0.9])]
    # By hand: A A A = (0.9 + 0.2 + 0.9 + 2 * 90/110) / 3 = 1.2121; B B B = (2.6 + 1 + 0) / 3 = 1.2;
    # the greedy choice per frame (A, B, B or A) links nothing: (0.9 + 0.9 + 0.9 + 0) / 3 = 0.9.
    path, e = best_path(boxes, scores, 1.0)
    assert path == [0, 0, 0] and e == pytest.approx((2.0 + 2 * 90 / 110) / 3)
    brute = max(itertools.product(range(2), repeat=3),
                key=lambda p: energy(np.array([boxes[t][i] for t, i in enumerate(p)]),
                                     np.array([scores[t][i] for t, i in enumerate(p)]), 1.0))
    assert list(brute) == path
    assert best_path(boxes, scores, 0.0)[0] == [0, 1, 0]  # without overlap: the top score of each frame
    tubes = link([10, 11, 12], boxes, scores, label=3, cfg=TubeConfig(trim=False))
    assert [t.frames for t in tubes] == [(10, 11, 12)] * 2 and [t.label for t in tubes] == [3, 3]
    assert np.array_equal(tubes[0].boxes, np.array(A, float)) and np.array_equal(tubes[1].boxes, np.array(B, float))
    assert tubes[1].score == pytest.approx((0.8 + 0.9 + 0.9 + 1.0) / 3)


def test_frames_without_candidates_split_the_video():
    boxes = [np.array([A[0]]), np.zeros((0, 4)), np.array([A[1]]), np.array([A[2]])]
    scores = [np.array([0.9]), np.zeros(0), np.array([0.8]), np.array([0.7])]
    tubes = link([0, 1, 2, 3], boxes, scores, label=0, cfg=TubeConfig(trim=False, min_frames=1))
    assert [t.frames for t in tubes] == [(0,), (2, 3)]


def test_trimming_keeps_the_action_frames():
    s = np.array([0.05, 0.05, 0.9, 0.8, 0.9, 0.05, 0.05])
    # Background at both ends gains 4 x (0.3 - 0.05) = 1.0 for two label changes (0.6).
    assert action_frames(s, 0.3, 0.3).tolist() == [False, False, True, True, True, False, False]
    assert action_frames(s, 0.3, 0.6).all()  # changes cost more than they gain: all action
    # A one-frame dip costs two label changes (0.6) but gains only 0.25: it stays in the action.
    dip = np.array([0.9, 0.9, 0.05, 0.9, 0.9])
    assert action_frames(dip, 0.3, 0.3).all()
    assert not action_frames(dip, 0.3, 0.1)[2]
    tube = Tube(label=1, frames=tuple(range(7)), boxes=np.array([A[0]] * 7, float), scores=s)
    boxes = [tube.boxes[t:t + 1] for t in range(7)]
    (trimmed,) = link(list(range(7)), boxes, [s[t:t + 1] for t in range(7)], 1, TubeConfig())
    assert trimmed.frames == (2, 3, 4) and trimmed.score == pytest.approx((2.6 + 2.0) / 3)


def test_average_precision_by_hand():
    # Scores .9 (hit), .8 (miss), .7 (hit) against 2 positives: precision 1, 1/2, 2/3 at recall
    # 1/2, 1/2, 1; VOC's envelope gives 1/2 * 1 + 1/2 * 2/3.
    assert metrics.average_precision([0.8, 0.9, 0.7], [False, True, True], 2) == pytest.approx(0.5 + 1 / 3)
    assert metrics.average_precision([0.5], [True], 4) == pytest.approx(0.25)
    assert np.isnan(metrics.average_precision([0.5], [False], 0))


def test_frame_map_by_hand():
    box = np.array([0.0, 0, 10, 10])
    gt = {0: {("v", 0): np.array([box]), ("v", 1): np.array([box])}, 1: {("v", 0): np.array([box + 20])}}
    dets = [FrameDetection("v", 0, 0, 0.9, box), FrameDetection("v", 0, 0, 0.8, box + 1),  # duplicate: a miss
            FrameDetection("v", 1, 0, 0.7, box + [0, 0, 0, 1]),  # IoU 100/110
            FrameDetection("v", 0, 1, 0.6, box + [20, 20, 24, 20]),  # IoU 100/140 >= 0.5
            FrameDetection("v", 2, 1, 0.95, box)]  # a frame without ground truth: a miss
    out = metrics.frame_map(dets, gt, ["a", "b", "c"])
    assert out["ap"]["a"] == pytest.approx(0.5 + 1 / 3)
    assert out["ap"]["b"] == pytest.approx(0.5) and np.isnan(out["ap"]["c"])  # precision 1/2 at recall 1
    assert out["map"] == pytest.approx((5 / 6 + 0.5) / 2)


def _tube(frames, box, score=1.0, label=0):
    return Tube(label=label, frames=tuple(frames), boxes=np.array([box] * len(frames), float),
                scores=np.full(len(frames), score), score=score)


def test_tube_overlap_and_video_map_by_hand():
    a, b = _tube(range(0, 4), [0, 0, 10, 10]), _tube(range(2, 6), [0, 0, 10, 5])
    assert metrics.tube_overlap(a, b) == pytest.approx(2 / 6 * 0.5)  # frames 2-3 of 0-5, box IoU 1/2
    assert metrics.tube_overlap(a, _tube(range(5, 9), [0, 0, 10, 10])) == 0.0
    gt = {"v1": [_tube(range(0, 10), [0, 0, 10, 10])], "v2": [_tube(range(0, 10), [0, 0, 10, 10])]}
    tubes = [("v1", _tube(range(0, 10), [0, 0, 10, 10], 0.9)),  # overlap 1
             ("v2", _tube(range(0, 4), [0, 0, 10, 10], 0.8)),  # overlap 0.4: a hit at 0.2, a miss at 0.5
             ("v1", _tube(range(0, 10), [0, 0, 10, 10], 0.7)),  # v1's truth is taken: a miss
             ("v2", _tube(range(0, 10), [1, 0, 11, 10], 0.6, label=1))]  # another action
    out = metrics.video_map(tubes, gt, ["a", "b"])
    assert out["ap"]["0.2"]["a"] == pytest.approx(1.0) and np.isnan(out["ap"]["0.2"]["b"])
    assert out["ap"]["0.5"]["a"] == pytest.approx(0.5) and out["map"] == {"0.2": 1.0, "0.5": 0.5}
