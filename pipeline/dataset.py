"""Reading a built dataset: `open_dataset(OUTPUT[@VERSION])` for users, the trainer and `verify`.

    from pipeline import open_dataset
    ds = open_dataset("out/ucf101")            # the latest version
    ds = open_dataset("out/ucf101@3f2a9c")     # a version by id or unique prefix (>= 6 chars)
    ds = open_dataset("out/ucf101@paper")      # a version by its tag (`flowshard tag`)
    for v in ds.videos(split="test"): ...
    s = ds.read(v.video_id)   # s.frames (T,H,W,3) uint8, s.flow (F,H,W,2) float32 px, s.meta
                              # s.warped (F,H,W,2) float32 px with --flow-warp, else None

Code that reads the files itself resolves a spec with `resolve_dataset(spec) -> (root, version)`
and finds the version's dataset.json and manifests in `version_dir(root, version)`; shard
files are always in root/shards/. OUTPUT may be a local folder or a bucket prefix
("s3://bucket/out@3f2a9c"): files are read through `pipeline.storage`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from pipeline import encode, shard, storage
from pipeline.build import manifest, tags, versions
from pipeline.build.versions import version_dir
from pipeline.encode import DecodedSample, SchemaError
from pipeline.storage import Location

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
    error_kind: str = ""  # "transient" or "permanent" for an error row ("" in manifests older than it)
    declared_frames: int = 0  # frames its container declares (duration x rate); 0: unknown or an older manifest
    decoded_frames: int = 0  # frames decoded (`frames` counts those stored); 0: unknown or an older manifest

    @property
    def warning(self) -> str:
        """What is odd about a stored video, e.g. "decoded 142 of 250 declared frames"; "" if nothing.

        One frame short is a rounding of duration x rate, not a short file.
        """
        if self.status == "ok" and self.declared_frames and 0 < self.decoded_frames < self.declared_frames - 1:
            return f"decoded {self.decoded_frames} of {self.declared_frames} declared frames"
        return ""


@dataclass(frozen=True)
class ShardEntry:
    """One shard: its file, split, sample count, size and sha256."""

    name: str
    path: str
    split: str
    samples: int
    bytes: int
    sha256: str


def resolve_dataset(path: Location) -> tuple[Location, str]:
    """Split "OUTPUT@VERSION" into (OUTPUT, full version id); "OUTPUT" alone means the latest.

    VERSION is a full id, a unique prefix of at least 6 characters or a tag (`pipeline.build.tags`);
    a pruned version raises tags.VersionPruned (a FileNotFoundError) saying when. A path whose own name
    contains "@" (an existing folder) is taken as a path. Raises FileNotFoundError when
    OUTPUT holds no dataset and ValueError naming an unknown or ambiguous version. OUTPUT is
    a Path locally and a URL string on object storage.
    """
    text = str(path)
    root: Location  # the text before "@", then where it is
    spec: str | None
    root, sep, spec = text.rpartition("@")
    if not sep or not spec or "/" in spec or not root or storage.isdir(text):
        root, spec = text, None
    root = storage.location(root)
    return root, versions.resolve_version(root, spec)


class Dataset:
    """One committed version of a dataset folder.

    root: the OUTPUT folder (shards live in root/shards/); folder: where this version's
    dataset.json and manifests are.
    """

    def __init__(self, root: Location, version: str | None = None) -> None:
        self.root = storage.location(root)
        self.folder = version_dir(self.root, version) if version else self.root
        self.info = manifest.read_info(self.folder)
        if version and self.info.get("version") != version:
            gone = tags.pruned_error(self.root, version)
            if gone is not None:
                raise gone
            raise ValueError(f"{self.root}: version {version!r} is not committed here")
        if not version and self.info.get("version"):
            # The top-level dataset.json names the latest version; read that version's own
            # folder, which is complete even if a crash interrupted refreshing the top-level copies.
            self.folder = version_dir(self.root, self.info["version"])
        schema = self.info.get("schema_version")
        if schema not in encode.KNOWN_SCHEMAS:
            raise SchemaError(
                f"{self.root}: schema version {schema!r} is not one this flowshard reads {encode.KNOWN_SCHEMAS}"
            )

    @property
    def label_map(self) -> dict[str, int]:
        return dict(self.info["label_map"])

    @property
    def num_classes(self) -> int:
        return len(self.info["label_map"])

    @property
    def version(self) -> str:
        return self.info.get("version", "")

    def _check_pruned(self, exc: Exception) -> None:
        """Raise tags.VersionPruned when a file went missing because this version was pruned
        after it was opened (a reader must see why, not a missing-file traceback)."""
        if self.version and not versions.is_committed(self.root, self.version):
            gone = tags.pruned_error(self.root, self.version)
            if gone is not None:
                raise gone from exc

    def _rows(self, name: str) -> list[dict]:
        try:
            return manifest.read_rows(storage.join(self.folder, name))
        except FileNotFoundError as exc:
            self._check_pruned(exc)
            raise

    @cached_property
    def _videos(self) -> list[VideoEntry]:
        rows = self._rows(manifest.MANIFEST)
        return [
            VideoEntry(
                video_id=r["id"],
                path=r["path"],
                label=r["label"],
                label_id=r["label_id"],
                split=r["split"],
                status=r["status"],
                error=r["error"] or "",
                frames=r["frames"],
                flow_fields=r["flow_fields"],
                parts=r["parts"],
                shard=r["shard"] or "",
                sha256=r["sha256"] or "",
                error_kind=r.get("error_kind") or "",
                declared_frames=r.get("declared_frames") or 0,
                decoded_frames=r.get("decoded_frames") or 0,
            )
            for r in rows
        ]

    @cached_property
    def _shards(self) -> list[ShardEntry]:
        rows = self._rows(manifest.SHARDS)
        return [
            ShardEntry(
                name=r["name"],
                path=str(storage.join(self.root, manifest.SHARD_DIR, r["name"])),
                split=r["split"],
                samples=r["samples"],
                bytes=r["bytes"],
                sha256=r["sha256"],
            )
            for r in rows
        ]

    def videos(self, split: str | None = None, *, include_errors: bool = False) -> list[VideoEntry]:
        """Videos stored in the dataset (optionally of one split; error rows on request)."""
        return [v for v in self._videos if (split is None or v.split == split) and (include_errors or v.status == "ok")]

    def errors(self) -> list[VideoEntry]:
        """Videos that could not be processed, with their reasons."""
        return [v for v in self._videos if v.status != "ok"]

    def shards(self, split: str | None = None) -> list[ShardEntry]:
        """The shard files (optionally of one split), in name order."""
        return [s for s in self._shards if split is None or s.split == split]

    def iter_samples(self, split: str | None = None) -> Iterator[dict]:
        """Raw samples ({"__key__", "__shard__", member: bytes}) of every shard, in shard order."""
        for s in self.shards(split):
            yield from self._iter_shard(s.path)

    def _iter_shard(self, path: Location) -> Iterator[dict]:
        try:
            yield from shard.iter_shard(path)
        except shard.ShardError as exc:  # a missing shard is a ShardError too
            self._check_pruned(exc)
            raise

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
        parts = [
            smp
            for name in names
            for smp in self._iter_shard(storage.join(self.root, manifest.SHARD_DIR, name))
            if smp["__key__"] == video_id or smp["__key__"].startswith(f"{video_id}_part")
        ]
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
        warped = np.concatenate([d.warped for d in decoded]) if decoded[0].warped is not None else None
        return DecodedSample(
            frames=np.concatenate([d.frames for d in decoded]),
            flow=np.concatenate([d.flow for d in decoded]),
            meta=meta,
            warped=warped,
        )


def open_dataset(path: Location) -> Dataset:
    """Open "OUTPUT" (the latest version) or "OUTPUT@VERSION"; raises FileNotFoundError,
    ValueError (unknown or ambiguous version) or SchemaError with the reason."""
    root, vid = resolve_dataset(path)
    return Dataset(root, vid)
