"""Reading a built dataset: `open_dataset(OUTPUT)` for users, the trainer and `verify`.

    from pipeline import open_dataset
    ds = open_dataset("out/ucf101")
    for v in ds.videos(split="test"): ...
    s = ds.read(v.video_id)   # s.frames (T,H,W,3) uint8, s.flow (F,H,W,2) float32 px, s.meta
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline import encode, manifest, shard
from pipeline.encode import DecodedSample, SchemaError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoEntry:
    """One manifest row: a video, its label and split, and what was stored for it."""

    video_id: str
    path: str
    label: str
    label_id: int
    split: str
    status: str
    error: str
    frames: int
    flow_fields: int
    parts: int
    shard: str  # the tar(s) holding its samples, comma-separated when its parts span several
    sha256: str


@dataclass(frozen=True)
class ShardEntry:
    """One shard: its file, split, sample count, size and sha256."""

    name: str
    path: str
    split: str
    samples: int
    bytes: int
    sha256: str


class Dataset:
    """A finished dataset folder (dataset.json present)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.info = manifest.read_info(self.root)
        version = self.info.get("schema_version")
        if version not in encode.KNOWN_SCHEMAS:
            raise SchemaError(f"{self.root}: schema version {version!r} is not one this flowshard reads "
                              f"{encode.KNOWN_SCHEMAS}")

    @property
    def label_map(self) -> dict[str, int]:
        return dict(self.info["label_map"])

    @property
    def num_classes(self) -> int:
        return len(self.info["label_map"])

    @property
    def version(self) -> str:
        return self.info.get("version", "")

    @cached_property
    def _videos(self) -> list[VideoEntry]:
        rows = manifest.read_rows(self.root / manifest.MANIFEST)
        return [VideoEntry(video_id=r["id"], path=r["path"], label=r["label"], label_id=r["label_id"],
                           split=r["split"], status=r["status"], error=r["error"] or "", frames=r["frames"],
                           flow_fields=r["flow_fields"], parts=r["parts"], shard=r["shard"] or "",
                           sha256=r["sha256"] or "") for r in rows]

    @cached_property
    def _shards(self) -> list[ShardEntry]:
        rows = manifest.read_rows(self.root / manifest.SHARDS)
        return [ShardEntry(name=r["name"], path=str(self.root / manifest.SHARD_DIR / r["name"]), split=r["split"],
                           samples=r["samples"], bytes=r["bytes"], sha256=r["sha256"]) for r in rows]

    def videos(self, split: str | None = None, *, include_errors: bool = False) -> list[VideoEntry]:
        """Videos stored in the dataset (optionally of one split; error rows on request)."""
        return [v for v in self._videos if (split is None or v.split == split)
                and (include_errors or v.status == "ok")]

    def errors(self) -> list[VideoEntry]:
        """Videos that could not be processed, with their reasons."""
        return [v for v in self._videos if v.status != "ok"]

    def shards(self, split: str | None = None) -> list[ShardEntry]:
        """The shard files (optionally of one split), in name order."""
        return [s for s in self._shards if split is None or s.split == split]

    def iter_samples(self, split: str | None = None) -> Iterator[dict]:
        """Raw samples ({"__key__", "__shard__", member: bytes}) of every shard, in shard order."""
        for s in self.shards(split):
            yield from shard.iter_shard(s.path)

    def _entry(self, video_id: str) -> VideoEntry:
        for v in self._videos:
            if v.video_id == video_id:
                if v.status != "ok":
                    raise KeyError(f"{video_id}: not stored ({v.error})")
                return v
        raise KeyError(f"{self.root}: no video {video_id!r}")

    def raw(self, video_id: str) -> list[dict]:
        """The raw sample dicts of a video (one per part), read from its shard(s)."""
        entry = self._entry(video_id)
        names = entry.shard.split(",")  # a long video's parts may span a unit's overflow tars
        parts = [smp for name in names for smp in shard.iter_shard(self.root / manifest.SHARD_DIR / name)
                 if smp["__key__"] == video_id or smp["__key__"].startswith(f"{video_id}_part")]
        parts = [p for p in parts if encode.load_meta(p[encode.META], p["__key__"]).get("video_id") == video_id]
        if len(parts) != entry.parts:
            raise SchemaError(f"{video_id}: {len(parts)} of {entry.parts} parts found in {names}")
        return sorted(parts, key=lambda p: encode.load_meta(p[encode.META])["part"])

    def read(self, video_id: str) -> DecodedSample:
        """Decode a whole video: all its parts' frames and flow, with merged metadata."""
        decoded = [encode.from_sample(p, f"{video_id}") for p in self.raw(video_id)]
        meta = dict(decoded[0].meta)
        meta["frames"] = [f for d in decoded for f in d.meta["frames"]]
        meta["flow_fields"] = [f for d in decoded for f in d.meta["flow_fields"]]
        return DecodedSample(frames=np.concatenate([d.frames for d in decoded]),
                             flow=np.concatenate([d.flow for d in decoded]), meta=meta)


def open_dataset(path: str | Path) -> Dataset:
    """Open a finished dataset folder; raises FileNotFoundError or SchemaError with the reason."""
    return Dataset(path)
