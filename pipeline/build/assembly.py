"""A unit's writer when videos are computed elsewhere: chunks in, tars out, in plan order.

The executor hands over each encoded chunk as soon as its flow is done, in any order and
interleaved between the unit's videos, and then each video's outcome once all its chunks
are in. Chunks are spooled to local disk at once, so the executor can release them (on Ray:
the object store holds only the chunks in flight, whatever the size of the unit or the
length of a video). A video is written into the unit's open temporary tar as soon as it and
every video planned before it are complete: one chunk and one sample part are held in
memory at a time. No Ray here: `pipeline.cluster.scheduler` runs this class as an actor.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import resource
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.build.config import BuildConfig
from pipeline.build.records import UnitRecord
from pipeline.build.units import Unit, UnitWriter
from pipeline.failures import PERMANENT, TRANSIENT
from pipeline.records import EncodedChunk, VideoRef, VideoResult
from pipeline.stages.plan import VideoPlan
from pipeline.stages.samples import ChunkSummary
from pipeline.stages.video import stream_video
from pipeline.storage import Location

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoOutcome:
    """How a computed video ended: its plan and chunk summaries, or why it failed."""

    plan: VideoPlan | None = None
    summaries: tuple[ChunkSummary, ...] = ()
    failure: str | None = None
    kind: str = ""  # failures.TRANSIENT or PERMANENT when failure is set
    content_sha256: str = ""  # hash of the input's bytes, where the worker computed it


SPOOL_PREFIX = "flowshard-spool-"
# Encoded chunks a writer holds in memory besides its spool (`ChunkSpool`): enough for the
# videos of a unit in flight at once at common sizes (a 64-frame chunk at 340x256 is ~2 MB).
HOLD_BYTES = 256 * 1024 * 1024


def spool_tag(output: Location | str, run: str = "") -> str:
    """The name of a build's spool folders: a short hash of OUTPUT, so a build finds the spools
    of its own dead runs (and only those) on every node, then `run`, this run's own token."""
    digest = hashlib.sha256(str(output).encode()).hexdigest()[:12]
    return f"{digest}-{run}" if run else digest


def remove_stale_spools(tag: str) -> int:
    """Remove this machine's spool folders (and the temporary tars inside them) of earlier runs
    of the build `tag` names (`spool_tag(OUTPUT, run)`): those of the same OUTPUT but another run.
    Called under the build lock, so each belongs to a build that is dead. Returns how many."""
    output, _, run = tag.partition("-")
    stale = [
        p
        for p in Path(tempfile.gettempdir()).glob(f"{SPOOL_PREFIX}{output}-*")
        if not p.name.startswith(f"{SPOOL_PREFIX}{output}-{run}-")
    ]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return len(stale)


class ChunkSpool:
    """Encoded chunks and outcomes of a unit's videos, on local disk until the unit is committed.

    One file per video, (attempt, chunk) records appended as they come, read back in chunk
    order; a video's outcome in a file of its own once it is complete. Everything stays until
    the unit is committed, so a writer that is lost mid-unit is replaced by one on the same node
    that rewrites the unit from the spool (`reopen`) instead of computing it again.

    The chunks are also held in memory, up to `hold_bytes` in all, and a video whose chunks
    are all held is written from memory: the disk copy is then only for a writer that takes
    over, and is never read back (unpickling it again cost about as much as writing the tar). The files
    live in a private folder (mode 0700) and only a writer of this build reads them back, which
    is why pickle is safe here: nothing untrusted is ever unpickled.
    """

    def __init__(self, tag: str = "", folder: str | None = None, hold_bytes: int = HOLD_BYTES) -> None:
        self.dir = folder or tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{tag + '-' if tag else ''}")
        self.index: dict[str, dict[int, tuple[int, int]]] = {}  # key -> chunk index -> (offset, length)
        self.held: dict[str, dict[int, EncodedChunk]] = {}  # key -> chunk index -> chunk, in memory
        self.hold_bytes, self.held_bytes = hold_bytes, 0
        self.reads = 0  # chunks read back from disk (a take-over, or more than `hold_bytes` at once)

    @classmethod
    def reopen(cls, folder: str) -> tuple[ChunkSpool, dict[str, tuple[int, VideoOutcome]]]:
        """The spool a lost writer left in `folder`, and the outcomes (attempt, outcome) it holds.

        A video's chunks count only with its outcome (of the same attempt): the chunks of a video
        still in progress are dropped, since that video is computed again."""
        spool = cls(folder=folder)
        outcomes: dict[str, tuple[int, VideoOutcome]] = {}
        for path in Path(folder).glob("*.outcome"):
            with open(path, "rb") as f:
                outcomes[path.stem] = pickle.load(f)
        for path in Path(folder).glob("*.chunks"):
            key = path.stem
            attempt, entries = spool._scan(path)
            if key in outcomes and attempt == outcomes[key][0]:
                spool.index[key] = entries
            else:
                spool.drop(key)
        return spool, outcomes

    def _path(self, key: str, suffix: str = ".chunks") -> str:
        return os.path.join(self.dir, f"{key}{suffix}")

    @staticmethod
    def _scan(path: Path) -> tuple[int | None, dict[int, tuple[int, int]]]:
        """(attempt, chunk index -> (offset, length)) of a chunk file; a record cut short by a
        killed writer ends the scan."""
        entries: dict[int, tuple[int, int]] = {}
        attempt = None
        with open(path, "rb") as f:
            while True:
                offset = f.tell()
                try:
                    attempt, chunk = pickle.load(f)
                except Exception:  # EOF, or the tail of a record the killed writer never finished
                    return attempt, entries
                entries[chunk.index] = (offset, f.tell() - offset)

    def add(self, key: str, chunk: EncodedChunk, attempt: int = 0) -> None:
        """Append one chunk of attempt `attempt` of video `key`."""
        data = pickle.dumps((attempt, chunk), protocol=pickle.HIGHEST_PROTOCOL)
        with open(self._path(key), "ab") as f:
            offset = f.tell()
            f.write(data)
        self.index.setdefault(key, {})[chunk.index] = (offset, len(data))
        held = self.held.setdefault(key, {})
        self.held_bytes -= _size(held.pop(chunk.index, None))
        size = _size(chunk)
        if self.held_bytes + size <= self.hold_bytes:
            held[chunk.index] = chunk
            self.held_bytes += size

    def save_outcome(self, key: str, attempt: int, outcome: VideoOutcome) -> None:
        """Keep video `key`'s outcome beside its chunks (written whole: a torn file never counts)."""
        tmp = self._path(key, ".outcome.tmp")
        with open(tmp, "wb") as f:
            pickle.dump((attempt, outcome), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, self._path(key, ".outcome"))

    def read(self, key: str) -> Iterator[EncodedChunk]:
        """The chunks of video `key` in chunk order, one at a time."""
        entries = sorted(self.index.get(key, {}).items())
        if not entries:
            return
        held = self.held.get(key, {})
        if all(index in held for index, _ in entries):
            yield from (held[index] for index, _ in entries)
            return
        with open(self._path(key), "rb") as f:
            for _, (offset, length) in entries:
                f.seek(offset)
                self.reads += 1
                yield pickle.loads(f.read(length))[1]

    def release(self, key: str) -> None:
        """Video `key` is written: its chunks leave memory (the disk copy stays until commit)."""
        self.held_bytes -= sum(_size(c) for c in self.held.pop(key, {}).values())

    def drop(self, key: str) -> None:
        """Forget video `key`'s chunks and outcome (a try given up, or restarted)."""
        self.index.pop(key, None)
        self.release(key)
        for suffix in (".chunks", ".outcome"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(key, suffix))

    def close(self) -> None:
        """Remove the spool folder."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.index.clear()
        self.held.clear()
        self.held_bytes = 0


def _size(chunk: EncodedChunk | None) -> int:
    """Bytes a held chunk counts against the spool's memory bound (its encoded members)."""
    if chunk is None:
        return 0
    return sum(map(len, chunk.frame_bytes)) + sum(map(len, chunk.flow_bytes)) + sum(map(len, chunk.warped_bytes))


class UnitAssembler:
    """Writes one unit at a time from chunks and outcomes handed over in any order (see the
    module docstring); reusable for one unit after another.

    `finish` commits a unit here and now; `finish_in_background` commits it (the upload, on
    object storage) in a thread while the next unit spools, and `committed(name)` returns its
    record. The Ray scheduler runs `committed` in a concurrency group of its own, so the calls
    feeding the next unit are not held up behind it.
    """

    def __init__(self, tag: str = "") -> None:
        self.tag = tag  # spool_tag(OUTPUT): names this build's spool folders
        self.writer: UnitWriter | None = None
        self.spool: ChunkSpool | None = None
        self.cfg: BuildConfig | None = None
        self.order: list[VideoRef] = []
        self.outcomes: dict[str, VideoOutcome] = {}
        self.attempts: dict[str, int] = {}
        self.commits: dict[str, Future] = {}
        self.uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowshard-upload")

    def begin(self, unit: Unit, output: Location, cfg: BuildConfig) -> str:
        """Start writing `unit` (its stored videos are copied in place by the writer); returns
        the spool folder, which a writer that replaces this one on the same node reopens."""
        self.abort()
        self.cfg = cfg
        self.spool = ChunkSpool(self.tag)
        self.writer = UnitWriter(unit, output, cfg, tmp_dir=self.spool.dir)
        self.order = list(unit.compute_refs)
        self.outcomes, self.attempts = {}, {}
        return self.spool.dir

    def resume(self, unit: Unit, output: Location, cfg: BuildConfig, folder: str) -> list[str]:
        """Take over `unit` from a lost writer's spool in `folder` (on this node): its tar is
        written again from the spooled videos. Returns the keys of the videos the spool holds
        complete; the caller computes the others again."""
        self.abort()
        self.cfg = cfg
        self.spool, saved = ChunkSpool.reopen(folder)
        # The lost writer's temporary tar beside the shards is removed when the build's run ends.
        self.writer = UnitWriter(unit, output, cfg, tmp_dir=self.spool.dir)
        self.order = list(unit.compute_refs)
        self.attempts = {key: attempt for key, (attempt, _) in saved.items()}
        self.outcomes = {key: outcome for key, (_, outcome) in saved.items()}
        self._write_ready()
        log.info(
            "%s: taken over from its spool with %d of %d video(s) complete",
            unit.stem,
            len(saved),
            len(unit.compute_refs),
        )
        return sorted(saved)

    def take(
        self, chunks: list[tuple[str, int]], outcomes: list[tuple[str, int, VideoOutcome]], *payloads: EncodedChunk
    ) -> int:
        """One batched call: spool `chunks` ((key, attempt) of each of `payloads`), then record
        `outcomes`; returns how many of the unit's computed videos are still unwritten."""
        for (key, attempt), chunk in zip(chunks, payloads, strict=True):
            self.chunk(key, attempt, chunk)
        for key, attempt, outcome in outcomes:
            self.video(key, attempt, outcome)
        return len(self.order)

    def chunk(self, key: str, attempt: int, chunk: EncodedChunk) -> None:
        """Spool one encoded chunk of attempt `attempt` of video `key`; a newer attempt starts over."""
        current = self.attempts.get(key, attempt)
        if attempt < current:
            return  # a late chunk of an attempt that was given up
        _, spool, _ = self._unit()
        if attempt > current:
            spool.drop(key)
        self.attempts[key] = attempt
        spool.add(key, chunk, attempt)

    def video(self, key: str, attempt: int, outcome: VideoOutcome) -> int:
        """Record video `key`'s outcome and write every video now complete in plan order;
        returns how many of the unit's computed videos are still unwritten."""
        if attempt < self.attempts.get(key, attempt):
            return len(self.order)
        _, spool, _ = self._unit()
        if attempt > self.attempts.get(key, attempt):
            spool.drop(key)
        self.attempts[key] = attempt
        spool.save_outcome(key, attempt, outcome)
        self.outcomes[key] = outcome
        self._write_ready()
        return len(self.order)

    def give_up(self, reason: str) -> None:
        """Every video not yet complete becomes a transient error row saying `reason` (a unit
        whose writers were lost too often: `--retry-errors` computes them again)."""
        for ref in list(self.order):
            self.outcomes.setdefault(ref.key, VideoOutcome(failure=f"{ref.source}: {reason}", kind=TRANSIENT))
        self._write_ready()

    def _write_ready(self) -> None:
        # The spool keeps what was written until the unit is committed: a writer taking over
        # from this one writes the tar again from it.
        writer, spool, _ = self._unit()
        while self.order and self.order[0].key in self.outcomes:
            ref = self.order.pop(0)
            writer.add(self._result(ref, self.outcomes.pop(ref.key)))
            spool.release(ref.key)

    def _unit(self) -> tuple[UnitWriter, ChunkSpool, BuildConfig]:
        """The writer, spool and config of the unit in progress; RuntimeError before begin()."""
        if self.writer is None or self.spool is None or self.cfg is None:
            raise RuntimeError("no unit in progress: begin() was not called")
        return self.writer, self.spool, self.cfg

    def _result(self, ref: VideoRef, o: VideoOutcome) -> VideoResult:
        if o.failure is not None:
            return VideoResult(ref=ref, status="error", error=o.failure, error_kind=o.kind or PERMANENT)
        if o.plan is None:
            raise RuntimeError(f"{ref.source}: its outcome has neither a plan nor a failure")
        _, spool, cfg = self._unit()
        res = stream_video(ref, o.plan, list(o.summaries), spool.read(ref.key), cfg.worker)
        if res.status != "ok":  # chunks that do not cover the video: the data, not the machine
            res = replace(res, error_kind=res.error_kind or PERMANENT)
        return replace(res, stats={**res.stats, "content_sha256": o.content_sha256}) if o.content_sha256 else res

    def finish(self) -> UnitRecord:
        """Commit the unit's tar(s) and return its record; every computed video must be in."""
        writer, spool = self._hand_over()
        return _commit(writer, spool)

    def finish_in_background(self) -> None:
        """Commit the unit in a thread (`committed` returns its record) and be ready for the next.

        At most one commit runs at a time: a second waits for the first, which bounds the local
        disk a writer holds to two units."""
        wait(list(self.commits.values()))
        writer, spool = self._hand_over()
        self.commits[writer.unit.name] = self.uploader.submit(_commit, writer, spool)

    def committed(self, name: str) -> UnitRecord:
        """The record of unit `name` once its background commit is done (or the error it raised)."""
        return self.commits.pop(name).result()

    def _hand_over(self) -> tuple[UnitWriter, ChunkSpool]:
        if self.writer is None or self.spool is None:
            raise RuntimeError("no unit is being written")
        if self.order:
            raise RuntimeError(
                f"{self.writer.unit.stem}: {len(self.order)} video(s) never completed, first {self.order[0].key}"
            )
        writer, spool = self.writer, self.spool
        self.writer = self.spool = None
        return writer, spool

    def abort(self) -> None:
        """Drop the unit in progress (its temporary tar and spool)."""
        if self.writer is not None:
            self.writer.abort()
        if self.spool is not None:
            self.spool.close()
        self.writer = self.spool = None

    def peak_rss(self) -> int:
        """Peak resident memory of this process in bytes (what the benchmarks report)."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def pid(self) -> int:
        """This process's id."""
        return os.getpid()


def _commit(writer: UnitWriter, spool: ChunkSpool) -> UnitRecord:
    """Close the unit's tar(s); the spool goes once they are committed, and stays (for a writer
    that takes over) when they could not be."""
    try:
        record = writer.close()
    except BaseException:
        writer.abort()
        raise
    spool.close()
    return record
