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
import logging
import os
import pickle
import resource
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace

from pipeline.build.config import BuildConfig
from pipeline.build.records import UnitRecord
from pipeline.build.units import Unit, UnitWriter
from pipeline.failures import PERMANENT
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


class ChunkSpool:
    """Encoded chunks of the videos in progress, on local disk until their video is written.

    One file per video, chunks appended as they come; read back in chunk order. The files
    live in a private folder this process created (mode 0700) and only this process reads
    them back, which is why pickle is safe here: nothing untrusted is ever unpickled.
    """

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="flowshard-spool-")
        self.index: dict[str, dict[int, tuple[int, int]]] = {}  # key -> chunk index -> (offset, length)

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, f"{key}.chunks")

    def add(self, key: str, chunk: EncodedChunk) -> None:
        """Append one chunk of video `key`."""
        data = pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)
        with open(self._path(key), "ab") as f:
            offset = f.tell()
            f.write(data)
        self.index.setdefault(key, {})[chunk.index] = (offset, len(data))

    def read(self, key: str) -> Iterator[EncodedChunk]:
        """The chunks of video `key` in chunk order, one at a time."""
        entries = sorted(self.index.get(key, {}).items())
        if not entries:
            return
        with open(self._path(key), "rb") as f:
            for _, (offset, length) in entries:
                f.seek(offset)
                yield pickle.loads(f.read(length))

    def drop(self, key: str) -> None:
        """Forget video `key`'s chunks (written, failed, or restarted)."""
        self.index.pop(key, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def close(self) -> None:
        """Remove the spool folder."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.index.clear()


class UnitAssembler:
    """Writes one unit at a time from chunks and outcomes handed over in any order (see the
    module docstring); reusable for one unit after another."""

    def __init__(self) -> None:
        self.writer: UnitWriter | None = None
        self.spool: ChunkSpool | None = None
        self.cfg: BuildConfig | None = None
        self.order: list[VideoRef] = []
        self.outcomes: dict[str, VideoOutcome] = {}
        self.attempts: dict[str, int] = {}

    def begin(self, unit: Unit, output: Location, cfg: BuildConfig) -> None:
        """Start writing `unit` (its stored videos are copied in place by the writer)."""
        self.abort()
        self.cfg = cfg
        self.writer = UnitWriter(unit, output, cfg)
        self.spool = ChunkSpool()
        self.order = list(unit.compute_refs)
        self.outcomes, self.attempts = {}, {}

    def chunk(self, key: str, attempt: int, chunk: EncodedChunk) -> None:
        """Spool one encoded chunk of attempt `attempt` of video `key`; a newer attempt starts over."""
        _, spool, _ = self._unit()
        current = self.attempts.get(key, attempt)
        if attempt < current:
            return  # a late chunk of an attempt that was given up
        if attempt > current:
            spool.drop(key)
        self.attempts[key] = attempt
        spool.add(key, chunk)

    def video(self, key: str, attempt: int, outcome: VideoOutcome) -> int:
        """Record video `key`'s outcome and write every video now complete in plan order;
        returns how many of the unit's computed videos are still unwritten."""
        writer, spool, _ = self._unit()
        if attempt < self.attempts.get(key, attempt):
            return len(self.order)
        if attempt > self.attempts.get(key, attempt):
            spool.drop(key)
        self.outcomes[key] = outcome
        while self.order and self.order[0].key in self.outcomes:
            ref = self.order.pop(0)
            writer.add(self._result(ref, self.outcomes.pop(ref.key)))
            spool.drop(ref.key)
        return len(self.order)

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
        writer, spool, _ = self._unit()
        if self.order:
            raise RuntimeError(f"{writer.unit.stem}: {len(self.order)} video(s) never completed, "
                               f"first {self.order[0].key}")
        try:
            return writer.close()
        except BaseException:
            writer.abort()
            raise
        finally:
            spool.close()
            self.writer = self.spool = None

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
