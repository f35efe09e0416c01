"""Training and evaluation of the two-stream detector, as plain functions (see training.engine).

Evaluation runs the detector on every frame of the test videos, links each output's
detections into tubes per video and action (training.detection.tubes) and reports, per
output (rgb, flow, fused, and late beside a concat-fused model):

    frame_map, frame_ap        frame-mAP at IoU 0.5 and AP per action
    video_map, video_ap        video-mAP at spatio-temporal overlap 0.2 and 0.5 ({"0.2", "0.5"})
    clip_top1, video_top1, ... the classification metrics of training.metrics, where a frame
                               scores each action by its best detection of it and a video
                               averages its frames; a video's class is its tracks' action
                               (annotated videos only)
    matching                   the rule that matched detections to ground truth
                               (training.detection.metrics: "voc" or "best_unmatched")

Every frame of every video of the split is scored, annotated or not: an unannotated video's
detections are false positives (training.detection.metrics).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from training import distributed, metrics
from training.checkpoint import unwrap
from training.detection import metrics as det_metrics
from training.detection.tubes import Tube, TubeConfig, link
from training.engine import autocast, epoch_batches, log_step, optimize, write_epoch

log = logging.getLogger(__name__)


def to_device(batch: dict, streams: tuple[str, ...], device: torch.device) -> dict:
    """The model's inputs of a detection batch on `device`."""
    out = {s: [x.to(device, non_blocking=True) for x in batch[s]] for s in streams}
    out["targets"] = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch["targets"]]
    return out


def train_one_epoch(
    model,
    optimizer,
    scheduler,
    loader,
    device: torch.device,
    epoch: int,
    *,
    streams: tuple[str, ...],
    steps: int,
    step: int,
    scaler=None,
    amp_dtype=None,
    clip_grad: float = 0.0,
    writer=None,
    log_every: int = 10,
    progress: bool = True,
    start: int = 0,
    after_step: Callable[[int, int], None] | None = None,
) -> tuple[int, dict]:
    """Train for exactly `steps` batches on the sum of every stream's RPN and box losses;
    `start` and `after_step` as in training.engine.train_one_epoch (step checkpoints)."""
    model.train()
    totals: dict[str, float] = defaultdict(float)
    frames = 0
    began = time.perf_counter()
    for done, (bar, batch) in enumerate(epoch_batches(loader, steps - start, epoch, progress), start + 1):
        with autocast(device, amp_dtype):
            losses = model(to_device(batch, streams, device))
        value = optimize(sum(v.float() for v in losses.values()), model, optimizer, scheduler, scaler, clip_grad, step)
        step += 1
        frames += len(batch["targets"])
        totals["loss"] += value
        for k, v in losses.items():
            totals[k] += float(v.detach())
        log_step(bar, writer, value, optimizer, step, log_every)
        if after_step is not None:
            after_step(step, done)
    stats = {k: v / max(1, steps - start) for k, v in totals.items()}
    stats["frames_per_s"] = frames / max(time.perf_counter() - began, 1e-9)
    stats = {k: distributed.all_reduce_mean(v, str(device)) for k, v in stats.items()}
    write_epoch(writer, stats, step)
    return step, stats


def _numpy(det: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A torchvision detection dict -> (boxes, scores, 0-based action ids)."""
    return (
        det["boxes"].float().cpu().numpy(),
        det["scores"].float().cpu().numpy(),
        det["labels"].cpu().numpy().astype(np.int64) - 1,
    )


@torch.no_grad()
def detect(
    model, loader, device: torch.device, *, streams: tuple[str, ...], amp_dtype=None, progress: bool = True
) -> list[dict]:
    """Every frame's detections per output and its ground truth, gathered from all ranks.

    One record per frame: video_id, frame, label, gt_boxes (n, 4), gt_labels (n,) 0-based,
    gt_tracks (n,), dets {output: (boxes, scores, labels)}.
    """
    net = unwrap(model)
    net.eval()
    records = []
    for batch in tqdm(loader, desc="detect", disable=not progress, leave=False, dynamic_ncols=True):
        inputs = {s: [x.to(device) for x in batch[s]] for s in streams}
        with autocast(device, amp_dtype):
            out = net(inputs)
        for i, target in enumerate(batch["targets"]):
            records.append(
                {
                    "video_id": batch["video_id"][i],
                    "frame": batch["frame"][i],
                    "label": batch["label"][i],
                    "gt_boxes": target["boxes"].numpy(),
                    "gt_labels": target["labels"].numpy() - 1,
                    "gt_tracks": batch["tracks"][i],
                    "dets": {k: _numpy(v[i]) for k, v in out.items()},
                }
            )
    gathered = distributed.all_gather_object(records)
    return [r for part in gathered for r in part]


def ground_truth_tubes(records: list[dict]) -> dict[str, list[Tube]]:
    """video -> its annotated tracks as tubes (frames where the track has a box)."""
    per: dict[tuple[str, int], list] = defaultdict(list)
    for r in records:
        for box, label, track in zip(r["gt_boxes"], r["gt_labels"], r["gt_tracks"], strict=True):
            per[(r["video_id"], int(track))].append((r["frame"], box, int(label)))
    out: dict[str, list[Tube]] = defaultdict(list)
    for (video, _), rows in sorted(per.items()):
        rows.sort(key=lambda x: x[0])
        out[video].append(
            Tube(
                label=rows[0][2],
                frames=tuple(f for f, _, _ in rows),
                boxes=np.stack([b for _, b, _ in rows]),
                scores=np.ones(len(rows)),
                score=1.0,
            )
        )
    return dict(out)


def video_tubes(records: list[dict], output: str, num_actions: int, cfg: TubeConfig) -> list[tuple[str, Tube]]:
    """Each video's detections of `output` linked into tubes, per action."""
    by_video: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_video[r["video_id"]].append(r)
    tubes: list[tuple[str, Tube]] = []
    for video, rows in sorted(by_video.items()):
        rows.sort(key=lambda r: r["frame"])
        frames = [r["frame"] for r in rows]
        for c in range(num_actions):
            boxes, scores = [], []
            for r in rows:
                b, s, lab = r["dets"][output]
                keep = np.nonzero(lab == c)[0]
                keep = keep[np.argsort(-s[keep], kind="stable")][: cfg.candidates]
                boxes.append(b[keep])
                scores.append(s[keep])
            tubes.extend((video, t) for t in link(frames, boxes, scores, c, cfg))
    return tubes


def frame_scores(records: list[dict], output: str, num_actions: int) -> np.ndarray:
    """(frames, actions): each frame's best detection score per action (0 without one)."""
    out = np.zeros((len(records), num_actions), np.float32)
    for i, r in enumerate(records):
        _, s, lab = r["dets"][output]
        np.maximum.at(out[i], lab, s)
    return out


def summarize(
    records: list[dict], class_names: list[str], cfg: TubeConfig, matching: str = det_metrics.DEFAULT_MATCHING
) -> dict:
    """Per output: frame-mAP, video-mAP and classification metrics (see the module docstring)."""
    det_metrics.check_matching(matching)
    if not any(len(r["gt_boxes"]) for r in records):
        raise ValueError("evaluation saw no annotated frames: the split has no videos with boxes")
    num = len(class_names)
    gt_frames: dict[int, dict] = defaultdict(dict)
    for r in records:
        for c in range(num):
            gt_frames[c][(r["video_id"], r["frame"])] = r["gt_boxes"][r["gt_labels"] == c]
    gt_tubes = ground_truth_tubes(records)
    labelled = [i for i, r in enumerate(records) if r["label"] >= 0]
    results = {}
    for output in records[0]["dets"]:
        dets = [
            det_metrics.FrameDetection(r["video_id"], r["frame"], int(lab), float(s), b)
            for r in records
            for b, s, lab in zip(*r["dets"][output], strict=True)
        ]
        frame = det_metrics.frame_map(dets, gt_frames, class_names, matching=matching)
        tubes = video_tubes(records, output, num, cfg)
        video = det_metrics.video_map(tubes, gt_tubes, class_names, matching=matching)
        scores = frame_scores(records, output, num)
        cls = metrics.summarize(
            scores[labelled],
            np.array([records[i]["label"] for i in labelled], np.int64),
            [records[i]["video_id"] for i in labelled],
            num,
        )
        results[output] = {
            **cls,
            "frame_map": frame["map"],
            "frame_ap": frame["ap"],
            "video_map": video["map"],
            "video_ap": video["ap"],
            "frames": len(records),
            "tubes": len(tubes),
            "matching": matching,
        }
    return results


def evaluate(
    model,
    loader,
    device: torch.device,
    *,
    streams: tuple[str, ...],
    class_names: list[str],
    tube_cfg: TubeConfig,
    matching: str = det_metrics.DEFAULT_MATCHING,
    amp_dtype=None,
    progress: bool = True,
) -> dict:
    """Detect on every frame of the loader's videos, link tubes, and score them."""
    det_metrics.check_matching(matching)  # before the detector runs over the whole split
    records = detect(model, loader, device, streams=streams, amp_dtype=amp_dtype, progress=progress)
    return summarize(records, class_names, tube_cfg, matching)
