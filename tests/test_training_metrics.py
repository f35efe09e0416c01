"""Metrics: top-k, video averaging, mean class accuracy, confusion matrix PNG."""
from __future__ import annotations

import numpy as np
import pytest

from training import metrics


def test_topk_accuracy():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = np.array([1, 1, 0])
    assert metrics.topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert metrics.topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
    assert metrics.topk_accuracy(scores, labels, 5) == 1.0  # k capped at the class count


def test_video_level_averages_the_clips_of_a_video():
    # Video a: two clips lean wrong, one strongly right -> the average is right.
    scores = np.array([[0.6, 0.4], [0.55, 0.45], [0.0, 1.0], [0.9, 0.1]])
    labels = np.array([1, 1, 1, 0])
    videos = ["a", "a", "a", "b"]
    s = metrics.summarize(scores, labels, videos, num_classes=2)
    assert s["clip_top1"] == pytest.approx(0.5)
    assert s["video_top1"] == 1.0 and s["videos"] == 2 and s["clips"] == 4
    assert s["confusion"] == [[1, 0], [0, 1]]


def test_mixed_labels_in_one_video_are_an_error():
    with pytest.raises(ValueError, match="video 'a'"):
        metrics.video_average(np.ones((2, 2)), np.array([0, 1]), ["a", "a"])


def test_mean_class_accuracy_weights_classes_equally():
    labels = np.array([0] * 8 + [1] * 2)
    pred = np.array([0] * 8 + [0] * 2)  # always class 0
    cm = metrics.confusion_matrix(pred, labels, 3)
    assert metrics.mean_class_accuracy(cm) == pytest.approx(0.5)  # class 2 absent: not counted
    assert cm.tolist() == [[8, 0, 0], [2, 0, 0], [0, 0, 0]]


def test_summarize_outputs_marks_absent_streams():
    out = metrics.summarize_outputs({"flow": np.eye(2), "fused": np.eye(2)}, np.array([0, 1]), ["a", "b"], 2)
    assert out["rgb"] is None
    for key in ("clip_top1", "video_top1", "video_top5", "mean_class_accuracy"):
        assert out["fused"][key] == 1.0


def test_confusion_png(tmp_path):
    path = metrics.plot_confusion([[3, 1], [0, 4]], ["left", "right"], tmp_path / "cm.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
