"""Reusing stored samples: the shards of earlier versions are the cache of later builds.

A video whose media key (content hash + the settings that shape its frame and flow members,
see `pipeline.build.versions.media_key`) matches a sample stored in OUTPUT/shards/ is not decoded
and no flow is computed for it: its frame, flow and warped members are copied byte for byte, and
only its JSON member is written anew (label, split, source, key, parts). The copy goes
through the same assembly code as a fresh computation, so both give identical bytes.

Stored members are read by seeking to their offsets (one header scan per shard, keeping
only the wanted samples), and each video's parts are checked against the hash its manifest
recorded before they are used: an altered shard is never copied into a new version. On
object storage the same reads are range requests (`pipeline.storage.open_read`).
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from pipeline import boxes, encode, shard, storage
from pipeline.build import manifest
from pipeline.build.versions import VERSIONS_DIR
from pipeline.records import VideoRef, VideoResult
from pipeline.stages.config import WorkerConfig
from pipeline.stages.samples import Field, clip_sample, dense_samples
from pipeline.storage import Location

log = logging.getLogger(__name__)

_PER_PART = frozenset({"key", "part", "num_parts", "frames", "flow_fields", "clips"})
_BY_REF = ("video_id", "source", "label", "label_id", "split")


class StaleSample(ValueError):
    """A stored sample is missing or does not match its recorded hash; the message names the shard."""


@dataclass(frozen=True)
class StoredVideo:
    """Where a video's samples are stored: its sample key, shard file(s), part count and hash."""

    key: str
    shards: tuple[str, ...]
    parts: int
    sha256: str
    content_sha256: str = ""  # of the input's bytes, as its manifest row recorded it
    declared_frames: int = 0  # as its manifest row recorded it (0: unknown)
    decoded_frames: int = 0

    def sample_keys(self) -> list[str]:
        """The keys of its parts, as `pipeline.stages.samples.part_key` names them."""
        if self.parts == 1:
            return [self.key]
        return [f"{self.key}_part{k:03d}" for k in range(self.parts)]


# --- the index of stored videos (driver side) ------------------------------------------------


def stored_videos(root: Location, versions: Iterable[str]) -> dict[str, StoredVideo]:
    """media key -> StoredVideo over the given committed versions, keeping only videos whose
    shards are all present with their recorded size."""
    index: dict[str, StoredVideo] = {}
    intact: dict[str, bool] = {}
    for vid in versions:
        folder = storage.join(root, VERSIONS_DIR, vid)
        sizes = {r["name"]: r["bytes"] for r in manifest.read_rows(storage.join(folder, manifest.SHARDS))}
        for row in manifest.read_rows(storage.join(folder, manifest.MANIFEST)):
            mk = row.get("media_key") or ""
            if row["status"] != "ok" or not mk or mk in index:
                continue
            names = tuple(n for n in (row["shard"] or "").split(",") if n)
            if names and all(_intact(root, n, sizes.get(n), intact) for n in names):
                index[mk] = StoredVideo(
                    key=row["id"],
                    shards=names,
                    parts=row["parts"],
                    sha256=row["sha256"],
                    content_sha256=row.get("content_sha256") or "",
                    declared_frames=row.get("declared_frames") or 0,
                    decoded_frames=row.get("decoded_frames") or 0,
                )
    return index


def _intact(root: Location, name: str, size: int | None, seen: dict[str, bool]) -> bool:
    if name not in seen:
        path = storage.join(root, manifest.SHARD_DIR, name)
        seen[name] = size is not None and storage.size(path) == size
        if not seen[name]:
            log.warning("%s: missing or not its recorded size; its videos will be recomputed", path)
    return seen[name]


# --- reading stored members (writer side) -----------------------------------------------------


class StoredSamples:
    """Reads the members of wanted stored samples from shards in OUTPUT/shards/."""

    MAX_OPEN = 16  # source shards kept open between reads (a unit copies from a few at a time)

    def __init__(self, shard_dir: Location, wanted: Iterable[StoredVideo]) -> None:
        self.dir = shard_dir
        self.wanted = {k for v in wanted for k in v.sample_keys()}
        self._index: dict[str, dict[str, list[tuple[str, int, int]]]] = {}
        self._files: dict[str, IO[bytes]] = {}

    def _file(self, name: str):
        if name not in self._files:
            if len(self._files) >= self.MAX_OPEN:
                self.close()
            self._files[name] = storage.open_read(storage.join(self.dir, name))
        return self._files[name]

    def close(self) -> None:
        """Close the source shards held open."""
        for f in self._files.values():
            f.close()
        self._files.clear()

    def _members(self, name: str) -> dict[str, list[tuple[str, int, int]]]:
        """sample key -> [(member suffix, data offset, size)] of the wanted samples in a shard."""
        if name not in self._index:
            index: dict[str, list[tuple[str, int, int]]] = {}
            path = storage.join(self.dir, name)
            try:
                # Seekable: reads headers and skips data (range requests on object storage).
                with storage.open_read(path) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
                    for info in tar:
                        key, _, ext = info.name.partition(".")
                        if info.isfile() and key in self.wanted:
                            index.setdefault(key, []).append((ext, info.offset_data, info.size))
            except (tarfile.TarError, OSError) as exc:
                raise StaleSample(f"{path}: cannot read the stored shard ({exc})") from exc
            # Kept for the unit's whole write: only wanted samples are indexed, so this stays as
            # small as the unit, and each source shard's headers are scanned once.
            self._index[name] = index
        return self._index[name]

    def read(self, video: StoredVideo) -> list[dict]:
        """The raw sample dicts of a stored video's parts, checked against its recorded hash."""
        parts = [self._read_sample(video, key) for key in video.sample_keys()]
        digest = hashlib.sha256("".join(shard.sample_sha256(p) for p in parts).encode()).hexdigest()
        if digest != video.sha256:
            raise StaleSample(
                f"{','.join(video.shards)}: stored sample {video.key} does not match the hash "
                f"its manifest recorded (the shard was altered)"
            )
        return parts

    def _read_sample(self, video: StoredVideo, key: str) -> dict:
        for name in video.shards:
            members = self._members(name).get(key)
            if members:
                try:
                    f = self._file(name)
                    sample = {"__key__": key}
                    for ext, offset, size in members:
                        f.seek(offset)
                        sample[ext] = f.read(size)
                except OSError as exc:
                    raise StaleSample(
                        f"{storage.join(self.dir, name)}: cannot read stored sample {key} ({exc})"
                    ) from exc
                return sample
        raise StaleSample(f"{','.join(video.shards)}: stored sample {key} not found")


# --- re-packing ---------------------------------------------------------------------------------


def repack(ref: VideoRef, parts: list[dict], max_frames: int) -> list[dict]:
    """New samples for `ref` from a stored video's parts: frame and flow members copied as they
    are, metadata rewritten for the new key, label, split and source, parts re-cut."""
    pairs = sorted(((encode.load_meta(p[encode.META], p["__key__"]), p) for p in parts), key=lambda mp: mp[0]["part"])
    frames = [(f["index"], f["pts"], p[encode.rgb_member(i)]) for m, p in pairs for i, f in enumerate(m["frames"])]
    fields = [stored_field(m, p, i) for m, p in pairs for i in range(len(m["flow_fields"]))]
    first = pairs[0][0]
    meta = {k: v for k, v in first.items() if k not in _PER_PART}
    meta.update(zip(_BY_REF, (ref.key, ref.source, ref.label, ref.label_id, ref.split), strict=True))
    if meta["mode"] == "clips":
        return [clip_sample(ref, meta, frames, fields, first["clips"])]
    return dense_samples(ref, meta, frames, fields, max_frames)


def _check_boxes(ref: VideoRef, metas: list[dict], cfg: WorkerConfig) -> None:
    """The checks a computed video's boxes get, on its stored metadata (dense samples hold every
    frame; a clips-mode sample does not say how many frames the video had, so only sizes are checked)."""
    if ref.boxes is None:
        return
    first = metas[0]
    boxes.check_frame_size(ref.boxes, *first["source_size"])
    if first.get("mode") != "clips":
        rate = boxes.source_rate(cfg.decode.fps, first.get("source_fps", 0.0))
        boxes.check_frames(ref.boxes, sum(len(m["frames"]) for m in metas), rate)


def stored_field(meta: dict, sample: dict, i: int) -> Field:
    """Field position i of a stored sample: its pair, flow member and, if stored, warped member
    and camera motion (all copied as they are)."""
    f = meta["flow_fields"][i]
    warped = sample[encode.warped_member(i)] if encode.has_warped(meta) else None
    return Field(f["from"], f["to"], sample[encode.flow_member(i)], warped, f.get("camera"))


def load_video(ref: VideoRef, video: StoredVideo, store: StoredSamples, cfg: WorkerConfig) -> VideoResult:
    """A stored video as a VideoResult for `ref`, without decoding or flow; raises StaleSample.

    Its boxes (`ref.boxes`, which may be new) are checked against the stored frames: a box
    that no longer fits is an error row, as in a fresh computation.
    """
    parts = store.read(video)
    try:
        _check_boxes(ref, [encode.load_meta(p[encode.META], p["__key__"]) for p in parts], cfg)
        samples = repack(ref, parts, cfg.sample.max_frames)
    except ValueError as exc:
        return VideoResult(ref=ref, status="error", error=f"{ref.source}: {exc}")
    metas = [encode.load_meta(s[encode.META]) for s in samples]
    return VideoResult(
        ref=ref,
        status="ok",
        samples=tuple(samples),
        frames=sum(len(m["frames"]) for m in metas),
        flow_fields=sum(len(m["flow_fields"]) for m in metas),
        stats={
            "reused": True,
            "content_sha256": video.content_sha256,
            "declared_frames": video.declared_frames,
            "decoded_frames": video.decoded_frames,
        },
    )
