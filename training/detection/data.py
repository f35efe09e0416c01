"""Detection items from video samples: the pick, transform and collate stages of `--task detect`.

They plug into training.data's one pipeline (shard list, open + hash, tar samples, pick,
shuffle, decode, transform, batch); only these three stages differ from classification.

An item is one stored frame of an annotated video sample (built with `build --boxes`):
its RGB frame, the L flow fields centred on it (field positions t - L/2 .. t + L/2 - 1 by
their start frame, clamped at the video's ends, so every frame has a stack) and the
frame's boxes (metadata "boxes", pipeline.boxes) with their track labels. Training draws
one frame per video sample and epoch (`--sampling simonyan`) or one from each of
`--segments` equal parts of it (`--sampling tsn`); evaluation takes every frame, which
linking into tubes needs. Samples without annotations ("tracks") are skipped in training;
evaluation takes their frames too, with no boxes: their detections are false positives
(training.detection.metrics).

Transforms: no crop (regions are found in the whole frame), RGB normalised like the
classification streams and flow as (q - 128) / 128; a horizontal flip (training, `--flip`)
mirrors both streams, negates flow x and moves every box to x1' = W - x2, x2' = W - x1.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch

from pipeline import boxes as box_ops
from pipeline import encode
from pipeline import snippets as snip
from training.transforms import FLOW_LUT, RGB_LUT, stack_fields

log = logging.getLogger(__name__)


def frame_fields(meta: dict, clip_len: int) -> list[list[int]]:
    """Per stored frame position, the positions of the `clip_len` flow fields centred on it.

    Field j of frame t's stack starts at frame t - clip_len // 2 + j (the two-stream
    convention, pipeline.snippets), clamped to the fields the sample holds.
    """
    starts = {int(f["from"]): i for i, f in enumerate(meta["flow_fields"])}
    if not starts:
        return [[] for _ in meta["frames"]]
    lo, hi = min(starts), max(starts)
    out = []
    for f in meta["frames"]:
        t = int(f["index"]) - clip_len // 2
        wanted = [min(max(t + j, lo), hi) for j in range(clip_len)]
        out.append([starts[_nearest(w, starts)] for w in wanted])
    return out


def _nearest(index: int, starts: dict[int, int]) -> int:
    """`index` if a stored field starts there, else the nearest start (a --clips sample has gaps)."""
    return index if index in starts else min(starts, key=lambda s: abs(s - index))


def frame_targets(frame: dict, tracks: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A frame's boxes (n, 4) float32, labels (n,) int64 (1 + the track's label id: 0 is background)
    and track ids (n,)."""
    rows = frame.get("boxes", [])
    b = np.array([r[:4] for r in rows], np.float32).reshape(-1, 4)
    labels = np.array([tracks[int(r[4])] + 1 for r in rows], np.int64)
    return b, labels, np.array([int(r[4]) for r in rows], np.int64)


def items_per_sample(cfg) -> int:
    """Training items one annotated video sample gives per epoch (`chosen_frames`): one per
    segment with `--sampling tsn`, else one. A video shorter than its segments gives fewer."""
    return cfg.segments if cfg.sampler == "tsn" else 1


def chosen_frames(count: int, key: str, cfg, train: bool, epoch: int) -> list[int]:
    """Positions of the frames a sample gives: every frame (evaluation) or one per segment (training)."""
    if not train:
        return list(range(count))
    rng = snip.sample_rng(cfg.seed, epoch, key)
    return sorted(set(snip.tsn_indices(count, items_per_sample(cfg), rng)))


def pick_items(sample: dict, meta: dict, cfg, train: bool, epoch: int, where: str) -> list[dict]:
    """The detection items of a video sample, holding only the chosen members' bytes."""
    if meta.get("kind") != "video":
        raise encode.SchemaError(
            f"{where}: detection reads video samples (the built dataset), not {meta.get('kind')!r} samples"
        )
    if "tracks" not in meta and train:
        log.debug("%s: no boxes, skipped in training", where)
        return []
    if cfg.uses_flow and not meta["flow_fields"]:
        log.warning("%s: no flow fields, skipped", where)
        return []
    tracks = {int(t["track"]): int(t["label_id"]) for t in meta.get("tracks", [])}
    fields = frame_fields(meta, cfg.clip_len) if cfg.uses_flow else None
    classes = [int(t["label_id"]) for t in meta.get("tracks", [])]
    items = []
    for p in chosen_frames(len(meta["frames"]), sample["__key__"], cfg, train, epoch):
        frame = meta["frames"][p]
        b, labels, ids = frame_targets(frame, tracks)
        try:
            items.append(
                {
                    "__key__": sample["__key__"],
                    "__shard__": sample.get("__shard__", ""),
                    "video_id": meta["video_id"],
                    "frame": int(frame["index"]),
                    "clip": p,
                    "boxes": b,
                    "labels": labels,
                    "tracks": ids,
                    "label": max(set(classes), key=classes.count) if classes else -1,
                    "rgb": [[sample[encode.rgb_member(p)]]] if cfg.uses_rgb else None,
                    "flow": [[sample[encode.flow_member(f)] for f in fields[p]]] if fields is not None else None,
                }
            )
        except KeyError as exc:
            raise encode.SchemaError(f"{where}: member {exc} named by its metadata is missing") from exc
    return items


def transform_item(item: dict, cfg, train: bool, epoch: int) -> dict:
    """Normalise both streams of a decoded item; in training, flip half of them (seeded per item)."""
    rng = snip.sample_rng(cfg.seed, epoch, f"{item['__key__']}/{item['clip']}/augment")
    return view(item, flip=train and cfg.transform.flip and rng.random() < 0.5)


def view(item: dict, flip: bool) -> dict:
    """The item's frame and flow normalised, and with `flip` frame, flow (x negated) and boxes mirrored."""
    width = None
    if item["rgb"] is not None:
        frame = item["rgb"][0, 0]  # (H, W, 3) uint8
        width = frame.shape[1]
        frame = cv2.flip(frame, 1) if flip else frame
        item["rgb"] = np.ascontiguousarray(cv2.LUT(frame, RGB_LUT).transpose(2, 0, 1))
    if item["flow"] is not None:
        planes = stack_fields(item["flow"][0].planes)  # (2L, H, W) uint8, [x0, y0, x1, ...]
        width = planes.shape[2]
        item["flow"] = flow_view(planes, flip)
    if flip:
        if width is None:
            raise ValueError("cannot flip the boxes of an item with neither an rgb nor a flow stream")
        item["boxes"] = box_ops.flip_boxes(item["boxes"], width)
    return item


def flow_view(planes: np.ndarray, flip: bool) -> np.ndarray:
    """(2L, H, W) quantised -> float32 (q - 128) / 128, mirrored with x negated when flipped."""
    channels, h, w = planes.shape
    if flip:
        planes = np.ascontiguousarray(planes[:, :, ::-1])
    out = np.empty((channels, h, w), np.float32)
    cv2.LUT(planes.reshape(channels * h, w), FLOW_LUT, dst=out.reshape(channels * h, w))
    if flip:
        np.negative(out[0::2], out=out[0::2])
    return out


def collate(items: list[dict]) -> dict:
    """Items -> a batch of lists (frames may differ in size between videos): "rgb", "flow" (tensors
    (3, H, W) and (2L, H, W)), "targets" ({"boxes", "labels"}), "video_id", "frame" (index),
    "label" (the video's action), "tracks" (track id per box), "key"."""
    batch = {
        "targets": [{"boxes": torch.from_numpy(it["boxes"]), "labels": torch.from_numpy(it["labels"])} for it in items],
        "video_id": [it["video_id"] for it in items],
        "frame": [it["frame"] for it in items],
        "label": [it["label"] for it in items],
        "tracks": [it["tracks"] for it in items],
        "key": [it["__key__"] for it in items],
    }
    for name in ("rgb", "flow"):
        if items[0][name] is not None:
            batch[name] = [torch.from_numpy(it[name]) for it in items]
    return batch
