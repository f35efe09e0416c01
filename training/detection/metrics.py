"""Detection metrics: frame-mAP and video-mAP, with PASCAL VOC average precision.

frame-mAP (IoU 0.5): per action, every detection in every evaluated frame, highest score
first, is a true positive when it overlaps a not yet matched ground-truth box of that
action in its frame by IoU >= 0.5, else a false positive; AP is the area under the
precision/recall curve, mAP the mean over the actions that have ground truth.

video-mAP (0.2, 0.5): the same over action tubes, each matched to a ground-truth tube of
its video and action by spatio-temporal overlap: the temporal IoU of their frame ranges
times the mean IoU of their boxes over the frames both cover (Weinzaepfel et al. 2015,
Kalogeiton et al. 2017).

AP is VOC 2010's: precision made monotone (each point takes the best precision at any
higher recall), then summed over the recall steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.detection.tubes import Tube, iou_matrix

FRAME_IOU = 0.5
VIDEO_IOUS = (0.2, 0.5)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the monotone precision envelope over recall (VOC 2010+)."""
    r = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    p = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def average_precision(scores: list[float], hits: list[bool], positives: int) -> float:
    """AP of detections with these scores, each a hit (true positive) or not; NaN without positives.

    `hits` must be decided in the order of descending score (ties: the order given).
    """
    if positives == 0:
        return float("nan")
    if not scores:
        return 0.0
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    tp = np.asarray(hits, np.float64)[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    return voc_ap(ctp / positives, ctp / np.maximum(ctp + cfp, 1e-12))


@dataclass(frozen=True)
class FrameDetection:
    """One detection: where (video, frame index), its action, score and box."""

    video: str
    frame: int
    label: int
    score: float
    box: np.ndarray


def frame_ap(dets: list[FrameDetection], gt: dict[tuple[str, int], np.ndarray], iou: float = FRAME_IOU) -> float:
    """AP of one action's detections against its ground-truth boxes per (video, frame)."""
    order = sorted(range(len(dets)), key=lambda i: -dets[i].score)
    used = {k: np.zeros(len(v), bool) for k, v in gt.items()}
    hits = [False] * len(dets)
    for i in order:
        d = dets[i]
        boxes = gt.get((d.video, d.frame))
        if boxes is None or len(boxes) == 0:
            continue
        ov = iou_matrix(d.box[None], boxes)[0]
        ov[used[(d.video, d.frame)]] = -1
        j = int(ov.argmax())
        if ov[j] >= iou:
            used[(d.video, d.frame)][j] = True
            hits[i] = True
    return average_precision([d.score for d in dets], hits, sum(len(v) for v in gt.values()))


def frame_map(dets: list[FrameDetection], gt: dict[int, dict[tuple[str, int], np.ndarray]],
              class_names: list[str], iou: float = FRAME_IOU) -> dict:
    """{"map", "ap": {action: AP}} over the actions with ground truth (gt: action -> frame -> boxes)."""
    aps = {}
    for c, name in enumerate(class_names):
        aps[name] = frame_ap([d for d in dets if d.label == c], gt.get(c, {}), iou)
    return {"map": _mean(aps), "ap": aps}


def tube_overlap(a: Tube, b: Tube) -> float:
    """Spatio-temporal IoU: temporal IoU of the frame ranges x mean box IoU where both have boxes."""
    (a0, a1), (b0, b1) = (min(a.frames), max(a.frames)), (min(b.frames), max(b.frames))
    inter = min(a1, b1) - max(a0, b0) + 1
    if inter <= 0:
        return 0.0
    t_iou = inter / (max(a1, b1) - min(a0, b0) + 1)
    boxes_a, boxes_b = a.box_at(), b.box_at()
    common = sorted(set(boxes_a) & set(boxes_b))
    if not common:
        return 0.0
    s_iou = np.mean([iou_matrix(boxes_a[f][None], boxes_b[f][None])[0, 0] for f in common])
    return float(t_iou * s_iou)


def video_ap(tubes: list[tuple[str, Tube]], gt: dict[str, list[Tube]], iou: float) -> float:
    """AP of one action's tubes (video, tube) against the ground-truth tubes of each video."""
    order = sorted(range(len(tubes)), key=lambda i: -tubes[i][1].score)
    used = {k: np.zeros(len(v), bool) for k, v in gt.items()}
    hits = [False] * len(tubes)
    for i in order:
        video, tube = tubes[i]
        cands = gt.get(video, [])
        if not cands:
            continue
        ov = np.array([tube_overlap(tube, g) for g in cands])
        ov[used[video]] = -1
        j = int(ov.argmax())
        if ov[j] >= iou:
            used[video][j] = True
            hits[i] = True
    return average_precision([t.score for _, t in tubes], hits, sum(len(v) for v in gt.values()))


def video_map(tubes: list[tuple[str, Tube]], gt: dict[str, list[Tube]], class_names: list[str],
              ious: tuple[float, ...] = VIDEO_IOUS) -> dict:
    """{"map": {iou: mAP}, "ap": {iou: {action: AP}}} (iou keys as strings, e.g. "0.5")."""
    out = {"map": {}, "ap": {}}
    for thr in ious:
        aps = {}
        for c, name in enumerate(class_names):
            aps[name] = video_ap([(v, t) for v, t in tubes if t.label == c],
                                 {v: [g for g in ts if g.label == c] for v, ts in gt.items()}, thr)
        out["map"][f"{thr:g}"], out["ap"][f"{thr:g}"] = _mean(aps), aps
    return out


def _mean(aps: dict[str, float]) -> float:
    vals = [v for v in aps.values() if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")
