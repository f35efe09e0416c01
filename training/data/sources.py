"""Where training data comes from: a dataset folder's pinned shards, or a list of shard URLs.

Sources. A dataset folder (a built video dataset, kind "videos", or derived clip shards,
kind "clips"), local or on object storage (s3://bucket/prefix), optionally with "@VERSION",
pins its exact shards and their sha256 in shards.parquet; a list of shard URLs is read as
given, without hashes. Remote shards are streamed through fsspec file objects
(`pipeline.storage.open_read`: sequential range requests, retried), never a shell pipe. Each sample
says what it is in its json: "clip"
samples (the fast path: one RGB frame and one stacked member of L flow fields) or "video"
samples (every frame and field of a video, dense or built with --clips; clips are sampled
here, which TSN's segments need).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds

from pipeline import storage
from pipeline.build.manifest import DATASET_JSON, SHARD_DIR, SHARDS, read_info, read_rows
from pipeline.storage import Location


@dataclass(frozen=True)
class ShardSpec:
    """One shard to read: where it is and, from a manifest, its split, size and hash."""

    name: str
    url: str
    split: str = ""
    samples: int = 0
    sha256: str | None = None


@dataclass(frozen=True)
class DataSource:
    """The shards of a dataset folder (or URL list) and what training needs to know of it."""

    kind: str
    label_map: dict[str, int]
    shards: tuple[ShardSpec, ...]
    root: Location | None = None
    version: str = ""
    info: dict = field(default_factory=dict)
    folder: Location | None = None  # the opened version's dataset.json and manifests (None: a URL list)

    @property
    def num_classes(self) -> int:
        return len(self.label_map)

    @property
    def class_names(self) -> list[str]:
        return [name for name, _ in sorted(self.label_map.items(), key=lambda kv: kv[1])]

    def splits(self) -> list[str]:
        return sorted({s.split for s in self.shards})

    def split_shards(self, split: str) -> list[ShardSpec]:
        shards = [s for s in self.shards if s.split == split or self.kind == "urls"]
        if not shards:
            raise ValueError(
                f"no shards of split {split!r} in {self.root or 'the URL list'}; splits present: {self.splits()}"
            )
        return shards

    def num_samples(self, split: str) -> int:
        return sum(s.samples for s in self.split_shards(split))

    def num_videos(self, split: str) -> int:
        """Videos of a split: the counts dataset.json records, else its samples."""
        counts = self.info.get("counts") or {}
        by_split = counts.get("videos") if self.kind == "clips" else counts.get("splits")
        if isinstance(by_split, dict) and split in by_split:
            return int(by_split[split])
        return self.num_samples(split)


def open_source(spec: str | Path) -> DataSource:
    """A dataset folder: its kind, labels, version and the shards its manifest pins.

    "OUTPUT@VERSION" picks a version (pipeline.dataset.resolve_dataset); the version's own
    folder (pipeline.build.versions.version_dir) holds its dataset.json and manifests, and the
    shard files are in OUTPUT/shards/. Clip-shard folders (kind "clips") hold one version.
    """
    from pipeline.build.versions import version_dir
    from pipeline.dataset import Dataset, resolve_dataset

    root, vid = resolve_dataset(spec)
    folder = version_dir(root, vid) if vid else root
    info = read_info(folder)
    if info.get("kind") == "clips":
        rows = read_rows(storage.join(folder, SHARDS))
        shards = tuple(
            ShardSpec(
                name=r["name"],
                url=str(storage.join(root, SHARD_DIR, r["name"])),
                split=r["split"],
                samples=int(r["samples"]),
                sha256=r["sha256"],
            )
            for r in rows
        )
        return DataSource(
            kind="clips",
            label_map=dict(info["label_map"]),
            shards=shards,
            root=root,
            version=_dataset_version(folder),
            info=info,
            folder=folder,
        )
    ds = Dataset(root, vid or None)
    if ds.info.get("kind", "videos") != "videos":
        raise ValueError(f"{spec}: dataset kind {ds.info.get('kind')!r} is neither 'videos' nor 'clips'")
    shards = tuple(
        ShardSpec(name=s.name, url=str(s.path), split=s.split, samples=int(s.samples), sha256=s.sha256)
        for s in ds.shards()
    )
    return DataSource(
        kind="videos",
        label_map=dict(ds.label_map),
        shards=shards,
        root=ds.root,
        version=_dataset_version(ds.folder),
        info=ds.info,
        folder=ds.folder,
    )


def _dataset_version(folder: Location) -> str:
    """training.checkpoint.dataset_version, for a local or remote folder: the dataset.json
    "version", else the sha256 of dataset.json."""
    data = storage.read_bytes(storage.join(folder, DATASET_JSON))
    version = json.loads(data).get("version")
    return str(version) if version else hashlib.sha256(data).hexdigest()


def url_source(urls: Iterable[str], *, label_map: dict[str, int]) -> DataSource:
    """Shards given as URLs or paths (brace patterns expanded); no hashes to check."""
    expanded = [u for pattern in urls for u in wds.shardlists.expand_urls(pattern)]
    if not expanded:
        raise ValueError("the URL list is empty")
    shards = tuple(ShardSpec(name=u.rsplit("/", 1)[-1], url=u) for u in expanded)
    return DataSource(kind="urls", label_map=dict(label_map), shards=shards)
