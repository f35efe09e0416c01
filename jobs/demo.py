"""Sample data for `flowshard demo`: labelled videos whose classes differ by motion."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from pipeline.synthetic import motion as synthetic

log = logging.getLogger(__name__)

DEMO_CLASSES = ("left", "right", "up", "down")


def make_demo_videos(
    root: str | Path,
    *,
    per_class: int = 4,
    test_per_class: int = 1,
    num_frames: int = 24,
    size: tuple[int, int] = (128, 96),
    seed: int = 0,
) -> Path:
    """Write a few videos per motion class and a list.csv (path,label,split) naming them.

    Each video pans over one of the photographs shipped with flowshard, and the same
    photographs move in every class, so only the flow tells the classes apart: the demo
    dataset is also a check that motion survives the pipeline, on real content.
    """
    root = Path(root)
    synthetic.make_motion_dataset(
        root, classes=DEMO_CLASSES, per_class=per_class, num_frames=num_frames, size=size, seed=seed, source="photo"
    )
    rows = []
    for motion in DEMO_CLASSES:
        for i in range(per_class):
            split = "test" if i >= per_class - test_per_class else "train"
            rows.append({"path": f"{motion}/v_{motion}_g{i:02d}.mp4", "label": motion, "split": split})
    listing = root / "list.csv"
    with open(listing, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    log.info("demo list with %d videos: %s", len(rows), listing)
    return listing
