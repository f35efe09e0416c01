"""Action tubes: per-frame detections linked over time (Gkioxari & Malik 2015, section 3.3).

For an action c, a tube is one region R_t per frame. Its energy is

    E(R) = 1/T * sum_t s_c(R_t) + lambda/T * sum_t ov(R_t, R_t+1)

with s_c the region's score for c and ov the intersection-over-union of consecutive
regions: a tube follows regions that score high and move smoothly. The best tube is found
by the Viterbi algorithm in O(T n^2) for n regions per frame; its regions are removed and
the next best found, for several tubes per action (the paper keeps the best; videos
with several actors need more).

The paper's videos (UCF Sports, J-HMDB) are trimmed to their action. For untrimmed
videos each tube is then cut in time (`trim`), as Saha et al. (BMVC 2016) do: each frame
of the tube is labelled action or background by a second dynamic program that rewards
s_c(R_t) for action frames, `threshold` for background ones and charges `penalty` for each
change of label; every run of action frames becomes a tube, scored by its own energy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, kw_only=True)
class TubeConfig:
    """Linking and trimming settings (`flowshard evaluate --tube-param KEY=VALUE`)."""

    overlap_weight: float = 1.0  # lambda
    candidates: int = 10  # highest-scoring detections of the class per frame linked
    max_tubes: int = 3  # tubes per action and video
    trim: bool = True
    threshold: float = 0.3  # a frame's score for "background" in trimming
    penalty: float = 0.3  # cost of a label change in trimming
    min_frames: int = 2  # shorter tubes are dropped

    def __post_init__(self) -> None:
        if self.overlap_weight < 0 or self.candidates < 1 or self.max_tubes < 1 or self.min_frames < 1:
            raise ValueError("overlap_weight must be >= 0 and candidates, max_tubes, min_frames >= 1")
        if not 0 <= self.threshold <= 1 or self.penalty < 0:
            raise ValueError(f"threshold must be in [0, 1] and penalty >= 0, got {self.threshold}, {self.penalty}")


def tube_config(params: dict) -> TubeConfig:
    """A TubeConfig from KEY=VALUE settings, ValueError naming an unknown key."""
    known = set(TubeConfig.__dataclass_fields__)
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown tube setting(s) {unknown}; known: {sorted(known)}")
    return TubeConfig(**params)


@dataclass(frozen=True)
class Tube:
    """A tube of action `label`: one box per frame of `frames` (consecutive stored frames)."""

    label: int
    frames: tuple[int, ...]
    boxes: np.ndarray = field(repr=False)  # (T, 4) x1, y1, x2, y2
    scores: np.ndarray = field(repr=False)  # (T,) the boxes' scores for `label`
    score: float = 0.0  # the tube's energy E(R)

    def box_at(self) -> dict[int, np.ndarray]:
        return dict(zip(self.frames, self.boxes, strict=True))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in a (n, 4) with every box in b (m, 4)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def best_path(boxes: list[np.ndarray], scores: list[np.ndarray], overlap_weight: float) -> tuple[list[int], float]:
    """The Viterbi path through one candidate per frame maximising E(R); (indices, energy).

    Every frame must hold at least one candidate.
    """
    value = np.asarray(scores[0], np.float64)
    back = []
    for t in range(1, len(boxes)):
        link = value[:, None] + overlap_weight * iou_matrix(boxes[t - 1], boxes[t])
        back.append(link.argmax(axis=0))
        value = np.asarray(scores[t], np.float64) + link.max(axis=0)
    path = [int(value.argmax())]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1], float(value.max()) / len(boxes)


def energy(boxes: np.ndarray, scores: np.ndarray, overlap_weight: float) -> float:
    """E(R) of a tube given its boxes (T, 4) and scores (T,)."""
    ov = sum(iou_matrix(boxes[t], boxes[t + 1])[0, 0] for t in range(len(boxes) - 1))
    return float((np.sum(scores) + overlap_weight * ov) / len(boxes))


def link(
    frames: list[int], boxes: list[np.ndarray], scores: list[np.ndarray], label: int, cfg: TubeConfig
) -> list[Tube]:
    """Tubes of action `label` through consecutive frames, each frame's candidates (n_t, 4), (n_t,).

    The best path is taken, its boxes removed, and again, up to cfg.max_tubes or until a
    frame runs out of candidates. Runs of frames without any candidate split the video:
    each run is linked on its own.
    """
    tubes = []
    for lo, hi in _runs([len(s) > 0 for s in scores]):
        b = [np.asarray(x, np.float64).reshape(-1, 4) for x in boxes[lo:hi]]
        s = [np.asarray(x, np.float64).reshape(-1) for x in scores[lo:hi]]
        for _ in range(cfg.max_tubes):
            if any(len(x) == 0 for x in s):
                break
            path, score = best_path(b, s, cfg.overlap_weight)
            tube = Tube(
                label=label,
                frames=tuple(frames[lo:hi]),
                boxes=np.stack([b[t][i] for t, i in enumerate(path)]),
                scores=np.array([s[t][i] for t, i in enumerate(path)]),
                score=score,
            )
            tubes.extend(trim(tube, cfg) if cfg.trim else [tube])
            b = [np.delete(x, i, axis=0) for x, i in zip(b, path, strict=True)]
            s = [np.delete(x, i) for x, i in zip(s, path, strict=True)]
    return [t for t in tubes if len(t.frames) >= cfg.min_frames]


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """[lo, hi) ranges of consecutive True flags."""
    runs, start = [], None
    for i, f in enumerate([*flags, False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            runs.append((start, i))
            start = None
    return runs


def action_frames(scores: np.ndarray, threshold: float, penalty: float) -> np.ndarray:
    """Per frame, True where the two-label dynamic program puts the action (see the module docstring)."""
    unary = np.stack([np.full(len(scores), threshold, np.float64), np.asarray(scores, np.float64)], axis=1)
    value = unary[0].copy()
    back = np.zeros((len(scores), 2), np.int64)
    switch = np.array([[0.0, penalty], [penalty, 0.0]])  # [from, to]
    for t in range(1, len(scores)):
        cand = value[:, None] - switch
        back[t] = cand.argmax(axis=0)
        value = unary[t] + cand.max(axis=0)
    labels = np.zeros(len(scores), np.int64)
    labels[-1] = int(value.argmax())
    for t in range(len(scores) - 1, 0, -1):
        labels[t - 1] = back[t, labels[t]]
    return labels.astype(bool)


def trim(tube: Tube, cfg: TubeConfig) -> list[Tube]:
    """The runs of action frames of `tube`, each a tube scored by its own energy."""
    keep = action_frames(tube.scores, cfg.threshold, cfg.penalty)
    out = []
    for lo, hi in _runs(keep.tolist()):
        boxes, scores = tube.boxes[lo:hi], tube.scores[lo:hi]
        out.append(
            Tube(
                label=tube.label,
                frames=tube.frames[lo:hi],
                boxes=boxes,
                scores=scores,
                score=energy(boxes, scores, cfg.overlap_weight),
            )
        )
    return out
