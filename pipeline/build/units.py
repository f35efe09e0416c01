"""A build's unit of commit: one planned shard, and how its tars are written.

Shared by the build (`pipeline.build.run`, which plans, resumes and commits) and the executors
that run units (`pipeline.build.executors.LocalExecutor`, `pipeline.cluster.executor.RayExecutor`),
so neither imports the other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pipeline import boxes, shard, storage
from pipeline.build import manifest, reuse
from pipeline.build.config import BuildConfig
from pipeline.build.manifest import SHARD_DIR
from pipeline.build.records import ShardRow, UnitRecord, VideoRow
from pipeline.records import VideoRef, VideoResult
from pipeline.stages.plan import expected_frames
from pipeline.stages.video import process_video
from pipeline.storage import Location

log = logging.getLogger(__name__)


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

    def __init__(self, unit: Unit, output: Location, cfg: BuildConfig, tmp_dir: str | None = None) -> None:
        self.unit, self.cfg = unit, cfg
        out = storage.location(output)
        self.shard_dir = storage.join(out, SHARD_DIR)
        # tmp_dir: where a tar bound for object storage is assembled (a writer's spool folder,
        # removed with it); local tars are assembled beside their final name.
        self.tars = shard.RollingWriter(
            self.shard_dir, unit.stem, max_bytes=cfg.shard.max_bytes, max_samples=cfg.shard.max_samples, tmp_dir=tmp_dir
        )
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

    def close(self) -> UnitRecord:
        """Write the stored videos left, commit the tar(s) and return the unit record."""
        self._copy_stored()
        if self.next != len(self.unit.refs):
            raise RuntimeError(f"{self.unit.stem}: expected the result of {self.unit.refs[self.next].key}, got none")
        self.store.close()
        tars = self._guard(self.tars.close)
        shard_of = {k: r.name for r in tars for k in r.keys}
        reused = sum(1 for r in self.rows if r.stats.get("reused"))
        return UnitRecord(
            unit=self.unit.name,
            stem=self.unit.stem,
            split=self.unit.split,
            computed=len(self.rows) - reused,
            reused=reused,
            shards=tuple(
                ShardRow(name=r.name, split=self.unit.split, samples=r.samples, bytes=r.bytes, sha256=r.sha256)
                for r in tars
                if r.samples
            ),
            videos=tuple(_row_of(r, shard_of, self.unit, self.cfg) for r in self.rows),
        )

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
            self._guard(lambda sample=sample: self.tars.add(sample))
        self.rows.append(dataclasses.replace(res, samples=tuple(digests)))
        self.next += 1

    def _guard(self, write):
        try:
            return write()
        except OSError as exc:
            raise manifest.os_error(
                exc,
                f"{self.shard_dir}: cannot write the shard(s) of unit {self.unit.stem} "
                f"({exc.strerror or exc}); no partial shard was left",
            ) from exc


def write_unit(unit: Unit, results: Iterable[VideoResult], output: Location, cfg: BuildConfig) -> UnitRecord:
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


def _copy_or_compute(
    ref: VideoRef, stored: reuse.StoredVideo, store: reuse.StoredSamples, cfg: BuildConfig
) -> VideoResult:
    """A stored video copied; recomputed here instead if its stored samples are gone or altered."""
    try:
        return reuse.load_video(ref, stored, store, cfg.worker)
    except reuse.StaleSample as exc:
        log.warning("%s; recomputing %s", exc, ref.source)
        return process_video(ref, cfg.worker)


def _digest(sample: dict) -> dict:
    """What the manifest row needs of a sample, not its bytes (they are streamed to the tar)."""
    return {
        "__key__": sample["__key__"],
        "__sha__": shard.sample_sha256(sample),
        "__bytes__": shard.sample_bytes(sample),
        "__boxes__": boxes.sample_tubes(sample),
    }


def declared_frames(res: VideoResult, cfg: BuildConfig) -> int:
    """Frames the video's container declares at the stored rate: from its probe, or as recorded
    with the stored samples it was copied from; 0 when unknown."""
    if res.info is not None:
        return expected_frames(res.info, cfg.worker.decode)
    return int(res.stats.get("declared_frames") or 0)


def _row_of(res: VideoResult, shard_of: dict[str, str], unit: Unit, cfg: BuildConfig) -> VideoRow:
    s = tuple(res.samples)  # the digests UnitWriter._write kept (a tuple already)
    digest = hashlib.sha256("".join(x["__sha__"] for x in s).encode()).hexdigest() if s else ""
    content, media = unit.media.get(res.ref.key, ("", ""))
    content = res.stats.get("content_sha256") or content  # hashed by the worker that read the bytes
    return VideoRow(
        id=res.ref.key,
        path=res.ref.source,
        label=res.ref.label,
        label_id=res.ref.label_id,
        split=res.ref.split,
        status=res.status,
        error=res.error,
        error_kind=(res.error_kind or "permanent") if res.status != "ok" else "",
        frames=res.frames,
        flow_fields=res.flow_fields,
        parts=len(s),
        shard=",".join(dict.fromkeys(shard_of[x["__key__"]] for x in s)),
        bytes=sum(x["__bytes__"] for x in s),
        sha256=digest,
        content_sha256=content,
        media_key=media if res.status == "ok" else "",
        boxes=boxes.manifest_value([x["__boxes__"] for x in s]),
        declared_frames=declared_frames(res, cfg),
        decoded_frames=int(res.stats.get("decoded_frames") or 0) if res.status == "ok" else 0,
    )
