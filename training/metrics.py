"""Accuracy at clip and video level, per stream and fused; the confusion matrix.

Clip level scores each test clip (its crops averaged) on its own; video level averages
the scores of all clips of a video (TSN's protocol, parts of long videos included) and
scores the average. Mean class accuracy is the mean over classes of per-class recall at
video level, the number UCF101/HMDB51 papers report next to top-1.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

OUTPUTS = ("rgb", "flow", "fused")


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores (k capped at the class count)."""
    if len(scores) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def video_average(
    scores: np.ndarray, labels: np.ndarray, video_ids: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Average the clip scores of each video; every clip of a video must carry one label."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, vid in enumerate(video_ids):
        rows[vid].append(i)
    ids = sorted(rows)
    out_labels = []
    for vid in ids:
        found = set(labels[rows[vid]].tolist())
        if len(found) != 1:
            raise ValueError(f"video {vid!r} has clips with different labels {sorted(found)}")
        out_labels.append(found.pop())
    out = np.stack([scores[rows[v]].mean(axis=0) for v in ids]) if ids else np.zeros((0, scores.shape[1]))
    return out, np.asarray(out_labels, dtype=np.int64), ids


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(true, predicted) counts."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm


def mean_class_accuracy(cm: np.ndarray) -> float:
    """Mean per-class recall over the classes that occur."""
    totals = cm.sum(axis=1)
    present = totals > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[present] / totals[present]))


def summarize(scores: np.ndarray, labels: np.ndarray, video_ids: list[str], num_classes: int) -> dict:
    """Clip and video top-1/top-5 and video-level mean class accuracy of one output."""
    vscores, vlabels, _ = video_average(scores, labels, video_ids)
    cm = (
        confusion_matrix(vscores.argmax(axis=1), vlabels, num_classes)
        if len(vlabels)
        else np.zeros((num_classes, num_classes), np.int64)
    )
    return {
        "clip_top1": topk_accuracy(scores, labels, 1),
        "clip_top5": topk_accuracy(scores, labels, 5),
        "video_top1": topk_accuracy(vscores, vlabels, 1),
        "video_top5": topk_accuracy(vscores, vlabels, 5),
        "mean_class_accuracy": mean_class_accuracy(cm),
        "clips": int(len(labels)),
        "videos": int(len(vlabels)),
        "confusion": cm.tolist(),
    }


def summarize_outputs(
    scores: dict[str, np.ndarray], labels: np.ndarray, video_ids: list[str], num_classes: int
) -> dict:
    """{"rgb", "flow", "fused", + any other output of the model} -> summary; one of the
    three the model lacks maps to None."""
    names = list(OUTPUTS) + sorted(set(scores) - set(OUTPUTS))
    return {
        name: (summarize(scores[name], labels, video_ids, num_classes) if name in scores else None) for name in names
    }


def plot_confusion(cm: np.ndarray | list, class_names: list[str], path: str | Path, title: str = "") -> Path:
    """Write a confusion-matrix PNG (rows: true class, columns: predicted), row-normalised."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    size = max(4.0, min(24.0, 0.35 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    try:
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=max(4, 10 - n // 20))
        ax.set_yticks(range(n), class_names, fontsize=max(4, 10 - n // 20))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if title:
            ax.set_title(title)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if cm[i, j]:
                        ax.text(
                            j,
                            i,
                            str(int(cm[i, j])),
                            ha="center",
                            va="center",
                            fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black",
                        )
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
