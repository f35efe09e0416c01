"""A build's settings and its unit of commit: one planned shard, and how its tars are written.

Shared by the build (`pipeline.build.run`, which plans, resumes and commits) and the executors
that run units (`pipeline.cluster.ray_runner`), so neither imports the other.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from pipeline import boxes, shard, storage
from pipeline.build import manifest
from pipeline.build import reuse
from pipeline.build.manifest import SHARD_DIR
from pipeline.records import VideoRef, VideoResult
from pipeline.storage import Location
from pipeline.worker import WorkerConfig, process_video

log = logging.getLogger(__name__)

STATE_DIR = ".flowshard"  # OUTPUT's build state: unit records, hash cache, lock, probes
DEFAULT_SHARD_BYTES = 1 << 30  # 1 GiB
DEFAULT_SHARD_SAMPLES = 1000


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    """How samples are grouped into tar shards."""

    max_bytes: int = DEFAULT_SHARD_BYTES
    max_samples: int = DEFAULT_SHARD_SAMPLES
    seed: int = 0  # seeds the shuffle that assigns videos to shards

    def __post_init__(self) -> None:
        if self.max_bytes < 1 << 16:
            raise ValueError(f"shard size must be at least 64 KiB, got {self.max_bytes}")
        if self.max_samples < 1:
            raise ValueError(f"shard sample count must be >= 1, got {self.max_samples}")


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """A whole build: per-video work plus shard layout."""

    worker: WorkerConfig = field(default_factory=WorkerConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    split: int | None = None  # official split number for UCF101/HMDB51 roots
    # {tool: version} of the tools that make the bytes (`pipeline.tools.fingerprint`); the
    # build fills it in, so a changed tool gives another version id.
    tools: Mapping[str, str] = field(default_factory=dict)
    boxes: boxes.BoxesConfig | None = None  # `--boxes FILE`: per-frame boxes stored with the samples

    def output_dict(self) -> dict:
        """Settings (and tools) that change the output bytes."""
        out = {**self.worker.output_dict(), "shard": {"max_bytes": self.shard.max_bytes,
               "max_samples": self.shard.max_samples, "seed": self.shard.seed}}
        return {**out, "tools": dict(sorted(self.tools.items()))} if self.tools else out

    def config_hash(self) -> str:
        return hashlib.sha256(manifest.dump_json(self.output_dict())).hexdigest()[:16]


@dataclass(frozen=True)
class Unit:
    """One planned shard: its place in the plan, split and videos in write order.

    stem: the tar name stem, `name` plus a hash of everything the tar bytes depend on ("" until
    `identify`); media: key -> (content sha256, media key); stored: videos copied from stored
    samples instead of computed.
    """

    name: str
    split: str
    refs: tuple[VideoRef, ...]
    stem: str = ""
    media: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    stored: Mapping[str, reuse.StoredVideo] = field(default_factory=dict)

    @property
    def compute_refs(self) -> tuple[VideoRef, ...]:
        """The videos that must be decoded and get flow computed, in write order."""
        return tuple(r for r in self.refs if r.key not in self.stored)


# --- writing a unit ---------------------------------------------------------------------------

class UnitWriter:
    """Writes one unit's tar(s) from computed results handed over one at a time, in plan order.

    Stored videos (copied from earlier shards) are written in their places in between, so
    the tar's sample order is the plan's whichever way results arrive. Every sample goes
    straight into the open temporary tar (`shard.RollingWriter`): only one video's samples,
    one at a time, are ever held.
    """

    def __init__(self, unit: Unit, output: Location, cfg: BuildConfig) -> None:
        self.unit, self.cfg = unit, cfg
        out = storage.location(output)
        self.shard_dir = storage.join(out, SHARD_DIR)
        self.tars = shard.RollingWriter(self.shard_dir, unit.stem, max_bytes=cfg.shard.max_bytes,
                                        max_samples=cfg.shard.max_samples)
        self.store = reuse.StoredSamples(self.shard_dir, unit.stored.values())
        self.rows: list[VideoResult] = []
        self.next = 0  # position in unit.refs of the next video to write

    def add(self, res: VideoResult) -> None:
        """Write the next computed video (and the stored ones planned before it)."""
        self._copy_stored()
        expected = self.unit.refs[self.next].key if self.next < len(self.unit.refs) else "none"
        if res.ref.key != expected:
            raise RuntimeError(f"{self.unit.stem}: expected the result of {expected}, got {res.ref.key}")
        self._write(res)

    def close(self) -> dict:
        """Write the stored videos left, commit the tar(s) and return the unit record."""
        self._copy_stored()
        if self.next != len(self.unit.refs):
            raise RuntimeError(f"{self.unit.stem}: expected the result of {self.unit.refs[self.next].key}, got none")
        self.store.close()
        records = self._guard(self.tars.close)
        shard_of = {k: r.name for r in records for k in r.keys}
        reused = sum(1 for r in self.rows if r.stats.get("reused"))
        return {"unit": self.unit.name, "stem": self.unit.stem, "split": self.unit.split,
                "computed": len(self.rows) - reused, "reused": reused,
                "shards": [{"name": r.name, "split": self.unit.split, "samples": r.samples, "bytes": r.bytes,
                            "sha256": r.sha256} for r in records if r.samples],
                "videos": [_row_of(r, shard_of, self.unit) for r in self.rows]}

    def abort(self) -> None:
        """Drop the open temporary tar and close the stored shards."""
        self.store.close()
        self.tars.abort()

    def _copy_stored(self) -> None:
        while self.next < len(self.unit.refs) and self.unit.refs[self.next].key in self.unit.stored:
            ref = self.unit.refs[self.next]
            self._write(_copy_or_compute(ref, self.unit.stored[ref.key], self.store, self.cfg))

    def _write(self, res: VideoResult) -> None:
        digests = []
        for sample in res.samples:  # may be a generator: digest each sample as it passes
            digests.append(_digest(sample))
            self._guard(lambda: self.tars.add(sample))
        self.rows.append(dataclasses.replace(res, samples=tuple(digests)))
        self.next += 1

    def _guard(self, write):
        try:
            return write()
        except OSError as exc:
            raise manifest.os_error(exc, f"{self.shard_dir}: cannot write the shard(s) of unit {self.unit.stem} "
                                         f"({exc.strerror or exc}); no partial shard was left") from exc


def write_unit(unit: Unit, results: Iterable[VideoResult], output: Location, cfg: BuildConfig) -> dict:
    """Write a unit's samples (in plan order) to its tar(s) and return the unit record.

    `results` holds the computed videos (`unit.compute_refs`, in order) and is consumed
    lazily; stored videos are read from their shards in between, so only one video's
    samples are held at a time.
    """
    writer = UnitWriter(unit, output, cfg)
    try:
        for res in results:
            writer.add(res)
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def _copy_or_compute(ref: VideoRef, stored: reuse.StoredVideo, store: reuse.StoredSamples,
                     cfg: BuildConfig) -> VideoResult:
    """A stored video copied; recomputed here instead if its stored samples are gone or altered."""
    try:
        return reuse.load_video(ref, stored, store, cfg.worker)
    except reuse.StaleSample as exc:
        log.warning("%s; recomputing %s", exc, ref.source)
        return process_video(ref, cfg.worker)


def _digest(sample: dict) -> dict:
    """What the manifest row needs of a sample, not its bytes (they are streamed to the tar)."""
    return {"__key__": sample["__key__"], "__sha__": shard.sample_sha256(sample),
            "__bytes__": shard.sample_bytes(sample), "__boxes__": boxes.sample_tubes(sample)}


def _row_of(res: VideoResult, shard_of: dict[str, str], unit: Unit) -> dict:
    s = res.samples
    digest = hashlib.sha256("".join(x["__sha__"] for x in s).encode()).hexdigest() if s else ""
    content, media = unit.media.get(res.ref.key, ("", ""))
    content = res.stats.get("content_sha256") or content  # hashed by the worker that read the bytes
    return {"id": res.ref.key, "path": res.ref.source, "label": res.ref.label, "label_id": res.ref.label_id,
            "split": res.ref.split, "status": res.status, "error": res.error,
            "error_kind": (res.error_kind or "permanent") if res.status != "ok" else "", "frames": res.frames,
            "flow_fields": res.flow_fields, "parts": len(s),
            "shard": ",".join(dict.fromkeys(shard_of[x["__key__"]] for x in s)),
            "bytes": sum(x["__bytes__"] for x in s), "sha256": digest,
            "content_sha256": content, "media_key": media if res.status == "ok" else "",
            "boxes": boxes.manifest_value([x["__boxes__"] for x in s])}
