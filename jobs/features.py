"""`flowshard features DATASET CHECKPOINT OUT.parquet`: per-video feature vectors of a
trained feature extractor (C3D's fc6) written to Parquet.

DATASET and CHECKPOINT come in the order `flowshard evaluate` takes them. Each video's clips
go through the network (centre crops); their fc6 activations are averaged and L2-normalised
(Tran et al. 2015: the video descriptor is the mean of its 16-frame clips' fc6 activations,
L2-normalised, then a linear SVM). One row per video and split:

    video_id string, split string, label string, label_id int32, clips int32, feature list<float32>

Which clips: by default one every 8 frames from the video's first frame to its end
(`--clip-every 8`: 16-frame clips overlapping by 8), the C3D paper's feature protocol as its
text states it (taken from the paper, not from the authors' code). The authors' feature
extraction demo (facebook/C3D, examples/c3d_feature_extraction, input_list_frm.txt) lists
non-overlapping clips instead, starting at frames 1, 17, 33, ...: `--clip-every 16` gives
those. `--clip-every 0 --test-clips N` takes N evenly spaced clips, as evaluation does.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from jobs.train import _given, open_trained
from pipeline.build.manifest import write_parquet
from training import data
from training.engine import stream_inputs

log = logging.getLogger(__name__)

FEATURE_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("split", pa.string()),
        ("label", pa.string()),
        ("label_id", pa.int32()),
        ("clips", pa.int32()),
        ("feature", pa.list_(pa.float32())),
    ]
)


def video_rows(
    features: np.ndarray, video_ids: list[str], labels: np.ndarray, split: str, class_names: list[str], l2: bool
) -> list[dict]:
    """Rows of per-video features: each video's clip features averaged (then L2-normalised)."""
    rows = []
    for vid in sorted(set(video_ids)):
        mask = np.array([v == vid for v in video_ids])
        mean = features[mask].astype(np.float64).mean(0)
        if l2:
            mean /= max(np.linalg.norm(mean), 1e-12)
        label_id = int(labels[mask][0])
        rows.append(
            {
                "video_id": vid,
                "split": split,
                "label": class_names[label_id],
                "label_id": label_id,
                "clips": int(mask.sum()),
                "feature": mean.astype(np.float32).tolist(),
            }
        )
    return rows


def split_features(model, loader, device) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(clip features (M, D), their video ids, their labels) of every batch of `loader`."""
    feats, videos, labels = [], [], []
    with torch.no_grad():
        for batch in loader:
            feats.append(model.features(stream_inputs(batch, model.cfg.stream_names, device)).float().cpu().numpy())
            videos.extend(batch["video_id"])
            labels.append(batch["label"].numpy())
    if not feats:
        raise ValueError("no clips to extract features from: the split is empty or every sample was skipped")
    return np.concatenate(feats), videos, np.concatenate(labels)


CLIP_EVERY = 8  # C3D's feature protocol: 16-frame clips every 8 frames


def extract_features(
    dataset: str,
    ckpt_path: str,
    out: str | Path,
    *,
    splits: tuple[str, ...] = (),
    device: str = "cpu",
    clip_every: int = CLIP_EVERY,
    test_clips: int | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    l2: bool = True,
) -> list[dict]:
    """Write OUT (Parquet, FEATURE_SCHEMA) with one row per video of each split (all when
    `splits` is empty); returns the rows. Clips every `clip_every` frames, or (0) `test_clips`
    evenly spaced ones (default: as trained)."""
    if clip_every < 0:
        raise ValueError(f"clip_every must be >= 0, got {clip_every}")
    if clip_every and test_clips is not None:
        raise ValueError(
            f"--test-clips {test_clips} picks evenly spaced clips: pass --clip-every 0 with it "
            f"(clips every {clip_every} frames take the whole video)"
        )
    _, cfg, source, model = open_trained(dataset, ckpt_path)
    dev = torch.device(device)
    model.to(dev).eval()
    data_cfg = dataclasses.replace(
        cfg.data,
        transform=dataclasses.replace(cfg.data.transform, test_crops=1),
        test_every=clip_every,
        **_given(test_clips=test_clips, batch_size=batch_size, workers=workers),
    )
    rows: list[dict] = []
    for split in splits or tuple(source.splits()):
        loader = data.make_loader(source, split, data_cfg, train=False, device=dev)
        feats, videos, labels = split_features(model, loader, dev)
        rows.extend(video_rows(feats, videos, labels, split, source.class_names, l2))
        log.info("%s: %d clips of %d videos", split, len(videos), len(set(videos)))
    write_parquet(Path(out), rows, FEATURE_SCHEMA)
    return rows
