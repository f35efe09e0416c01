"""Detection metrics: frame-mAP and video-mAP, with PASCAL VOC average precision.

Every evaluated frame and video counts, annotated or not: a video without boxes is a
negative, and each of its detections and tubes is a false positive (as in ACT's
evaluation code for UCF101-24 and J-HMDB, Kalogeiton et al. 2017, which scores the
detections of every test video).

frame-mAP (IoU 0.5): per action, every detection in every evaluated frame, highest score
first, is matched to a ground-truth box of that action in its frame (`match`), a true
positive when it takes one, else a false positive; AP is the area under the
precision/recall curve, mAP the mean over the actions that have ground truth.

video-mAP (0.2, 0.5): the same over action tubes, each matched to a ground-truth tube of
its video and action by spatio-temporal overlap (`tube_overlap`): the temporal IoU of their
frame ranges times the mean box IoU over the whole temporal intersection, where a frame in
which one tube has no box scores 0 (Weinzaepfel et al. 2015; ACT's `iou3dt`).

Matching (`matching`, the same rule for frames and tubes; the results name it):
    "voc" (default)   the VOC devkit's rule: a detection's best-overlapping ground truth;
                      a false positive if that one is already taken, even when another
                      one it overlaps enough is free
    "best_unmatched"  the best-overlapping ground truth not yet taken (ACT's evaluation
                      code deletes matched ground truth; the only rule of release 0.1)
They differ only where ground truths of one action overlap each other.

AP is VOC 2010's: precision made monotone (each point takes the best precision at any
higher recall), then summed over the recall steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.detection.tubes import Tube, iou_matrix

FRAME_IOU = 0.5
VIDEO_IOUS = (0.2, 0.5)
MATCHING_RULES = ("voc", "best_unmatched")
DEFAULT_MATCHING = "voc"


def check_matching(matching: str) -> str:
    """`matching` if it is one of MATCHING_RULES, else ValueError naming it."""
    if matching not in MATCHING_RULES:
        raise ValueError(f"unknown matching rule {matching!r}; choose one of {MATCHING_RULES}")
    return matching


def match(overlaps: np.ndarray, taken: np.ndarray, threshold: float, matching: str) -> int | None:
    """The ground truth a detection takes (its index; the caller marks it taken), or None for a
    false positive, given its overlap with each ground truth and which are already taken."""
    if len(overlaps) == 0:
        return None
    if matching == "best_unmatched":
        overlaps = np.where(taken, -1.0, overlaps)
    j = int(np.argmax(overlaps))  # the first of equal overlaps, as the VOC devkit's max
    if overlaps[j] < threshold or taken[j]:
        return None
    return j


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


def frame_ap(
    dets: list[FrameDetection],
    gt: dict[tuple[str, int], np.ndarray],
    iou: float = FRAME_IOU,
    matching: str = DEFAULT_MATCHING,
) -> float:
    """AP of one action's detections against its ground-truth boxes per (video, frame)."""
    check_matching(matching)
    order = sorted(range(len(dets)), key=lambda i: -dets[i].score)
    used = {k: np.zeros(len(v), bool) for k, v in gt.items()}
    hits = [False] * len(dets)
    for i in order:
        d = dets[i]
        key = (d.video, d.frame)
        boxes = gt.get(key)
        if boxes is None or len(boxes) == 0:
            continue  # no ground truth of this action in the frame: a false positive
        j = match(iou_matrix(d.box[None], boxes)[0], used[key], iou, matching)
        if j is not None:
            used[key][j] = hits[i] = True
    return average_precision([d.score for d in dets], hits, sum(len(v) for v in gt.values()))


def frame_map(
    dets: list[FrameDetection],
    gt: dict[int, dict[tuple[str, int], np.ndarray]],
    class_names: list[str],
    iou: float = FRAME_IOU,
    matching: str = DEFAULT_MATCHING,
) -> dict:
    """{"map", "ap": {action: AP}} over the actions with ground truth (gt: action -> frame -> boxes)."""
    aps = {}
    for c, name in enumerate(class_names):
        aps[name] = frame_ap([d for d in dets if d.label == c], gt.get(c, {}), iou, matching)
    return {"map": _mean(aps), "ap": aps}


def tube_overlap(a: Tube, b: Tube) -> float:
    """Spatio-temporal IoU: temporal IoU of the frame ranges x the mean box IoU over the temporal
    intersection, a frame where one tube has no box (a gap) scoring 0.

    The intersection's frames are those either tube holds: frames a video sample does not
    store (between the clips of a --clips build) are not evaluated and not counted.
    """
    (a0, a1), (b0, b1) = (min(a.frames), max(a.frames)), (min(b.frames), max(b.frames))
    lo, hi = max(a0, b0), min(a1, b1)
    if hi < lo:
        return 0.0
    t_iou = (hi - lo + 1) / (max(a1, b1) - min(a0, b0) + 1)
    boxes_a, boxes_b = a.box_at(), b.box_at()
    frames = sorted(f for f in set(boxes_a) | set(boxes_b) if lo <= f <= hi)
    ious = [
        iou_matrix(boxes_a[f][None], boxes_b[f][None])[0, 0] if f in boxes_a and f in boxes_b else 0.0 for f in frames
    ]
    return float(t_iou * np.mean(ious))


def video_ap(
    tubes: list[tuple[str, Tube]], gt: dict[str, list[Tube]], iou: float, matching: str = DEFAULT_MATCHING
) -> float:
    """AP of one action's tubes (video, tube) against the ground-truth tubes of each video."""
    check_matching(matching)
    order = sorted(range(len(tubes)), key=lambda i: -tubes[i][1].score)
    used = {k: np.zeros(len(v), bool) for k, v in gt.items()}
    hits = [False] * len(tubes)
    for i in order:
        video, tube = tubes[i]
        cands = gt.get(video, [])
        if not cands:
            continue  # no ground-truth tube of this action in the video: a false positive
        j = match(np.array([tube_overlap(tube, g) for g in cands]), used[video], iou, matching)
        if j is not None:
            used[video][j] = hits[i] = True
    return average_precision([t.score for _, t in tubes], hits, sum(len(v) for v in gt.values()))


def video_map(
    tubes: list[tuple[str, Tube]],
    gt: dict[str, list[Tube]],
    class_names: list[str],
    ious: tuple[float, ...] = VIDEO_IOUS,
    matching: str = DEFAULT_MATCHING,
) -> dict:
    """{"map": {iou: mAP}, "ap": {iou: {action: AP}}} (iou keys as strings, e.g. "0.5")."""
    out: dict[str, dict] = {"map": {}, "ap": {}}
    for thr in ious:
        aps = {}
        for c, name in enumerate(class_names):
            aps[name] = video_ap(
                [(v, t) for v, t in tubes if t.label == c],
                {v: [g for g in ts if g.label == c] for v, ts in gt.items()},
                thr,
                matching,
            )
        out["map"][f"{thr:g}"], out["ap"][f"{thr:g}"] = _mean(aps), aps
    return out


def _mean(aps: dict[str, float]) -> float:
    vals = [v for v in aps.values() if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")
