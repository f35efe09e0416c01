"""Atomic, byte-reproducible WebDataset tar shards.

A shard is written under a temporary name and renamed when complete, so a reader or a
resumed build never sees a partial tar. On object storage (`pipeline.storage`) the tar is
assembled in a local temporary file and uploaded whole: its key appears only once the upload
completes. Tar headers carry a fixed mtime, uid/gid and owner names, and members are sorted
within each sample, so the same samples always give the same bytes, wherever they are
written (webdataset's TarWriter stamps the current time, hence our own writer).
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline import storage
from pipeline.storage import Location

log = logging.getLogger(__name__)

TAR_MTIME = 1_577_836_800  # 2020-01-01T00:00:00Z: fixed so rebuilds are byte-identical
TAR_MODE = 0o444


class ShardError(ValueError):
    """A shard is missing, truncated or not a valid tar; the message names the shard."""


@dataclass(frozen=True)
class ShardRecord:
    """What was written: one row of shards.parquet."""

    name: str  # file name, e.g. "train-00003.tar"
    samples: int
    bytes: int
    sha256: str
    keys: tuple[str, ...]


def sample_members(sample: dict) -> list[tuple[str, bytes]]:
    """The (member name, bytes) pairs of a sample dict, sorted by name; "__key__" excluded."""
    key = sample["__key__"]
    items = sorted((k, v) for k, v in sample.items() if not k.startswith("__"))
    return [(f"{key}.{ext}", v if isinstance(v, bytes) else bytes(v)) for ext, v in items]


def sample_sha256(sample: dict) -> str:
    """Content hash of a sample: member names and bytes, in their tar order."""
    h = hashlib.sha256()
    for name, data in sample_members(sample):
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, TAR_MTIME, TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def sha256_file(path: Location, chunk: int = 1 << 20) -> str:
    """sha256 of a file (local or remote), read in chunks."""
    if storage.is_remote(path):
        return storage.sha256(path, chunk)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class _TarStream:
    """One shard being written: samples are appended to its temporary tar as they come, so
    the writer holds one sample at a time, never the whole shard; `commit` makes it visible."""

    def __init__(self, path: Location, tmp_dir: str | None = None) -> None:
        self.remote = storage.is_remote(path)
        self.final = storage.location(path)
        self.name = storage.name(self.final)
        self.tmp = _temporary(self.final, self.remote, tmp_dir)
        self.keys: list[str] = []
        # Both stay open across add() calls (a streamed writer): close() or abort() closes them.
        self.raw = open(self.tmp, "wb")  # noqa: SIM115
        self.tar = tarfile.open(fileobj=self.raw, mode="w", format=tarfile.GNU_FORMAT)  # noqa: SIM115

    def add(self, sample: dict) -> None:
        """Append one sample's members (sorted by name) to the temporary tar."""
        self.keys.append(sample["__key__"])
        for name, data in sample_members(sample):
            self.tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
        self.raw.flush()  # to the page cache: nothing of a written sample stays in this process

    def commit(self) -> ShardRecord:
        """End the tar, fsync it, and rename (locally) or upload it whole (remotely)."""
        try:
            self.tar.close()
            self.raw.flush()
            os.fsync(self.raw.fileno())
            self.raw.close()
            if len(set(self.keys)) != len(self.keys):
                raise ValueError(f"{self.name}: duplicate sample keys in one shard")
            digest, size = sha256_file(self.tmp), self.tmp.stat().st_size
            if self.remote:
                storage.put_file(self.tmp, self.final)
            else:
                os.replace(self.tmp, self.final)
        finally:
            self.abort()
        log.debug("wrote %s: %d samples, %d bytes", self.name, len(self.keys), size)
        return ShardRecord(name=self.name, samples=len(self.keys), bytes=size, sha256=digest, keys=tuple(self.keys))

    def abort(self) -> None:
        """Drop the temporary tar (nothing of it was ever visible under the shard's name)."""
        self.raw.close()
        self.tmp.unlink(missing_ok=True)


def write_shard(samples: Iterable[dict], path: Location) -> ShardRecord:
    """Write samples to a tar at `path` atomically and describe it.

    Locally: a temporary name beside it, fsync, rename. Remotely: a local temporary file,
    uploaded whole once complete (`storage.put_file`), so the key never holds a partial tar.
    """
    stream = _TarStream(path)
    try:
        for sample in samples:
            stream.add(sample)
    except BaseException:
        stream.abort()
        raise
    return stream.commit()


def _temporary(final: Location, remote: bool, tmp_dir: str | None = None) -> Path:
    """Where a shard is assembled: beside it locally (same filesystem, so the rename is atomic),
    in `tmp_dir` (default: the system temp folder) for a remote shard (bounded by the shard size)."""
    if not remote:
        local = Path(final)
        return local.with_name(f".{local.name}.tmp-{os.getpid()}")
    fd, tmp = tempfile.mkstemp(prefix=f"flowshard-{storage.name(final)}.", suffix=".tmp", dir=tmp_dir)
    os.close(fd)
    return Path(tmp)


def sample_bytes(sample: dict) -> int:
    """Bytes the sample takes in a tar (headers and padding included)."""
    return sum(512 + -(-len(data) // 512) * 512 for _, data in sample_members(sample))


class RollingWriter:
    """Writes samples in order into `stem.tar`, then `stem_1.tar`, ... each within the bounds.

    Each sample goes into the open shard's temporary tar as it is added (one sample held at
    a time); a shard is committed when the next sample would not fit. A sample larger than
    max_bytes on its own still goes into a shard by itself; no samples give one empty shard.
    """

    def __init__(
        self, directory: Location, stem: str, *, max_bytes: int, max_samples: int, tmp_dir: str | None = None
    ) -> None:
        self.directory, self.stem, self.tmp_dir = directory, stem, tmp_dir
        self.max_bytes, self.max_samples = max_bytes, max_samples
        self.records: list[ShardRecord] = []
        self.current: _TarStream | None = None
        self.size = self.count = 0

    def _open(self) -> _TarStream:
        name = f"{self.stem}.tar" if not self.records else f"{self.stem}_{len(self.records)}.tar"
        self.current, self.size, self.count = _TarStream(storage.join(self.directory, name), self.tmp_dir), 0, 0
        return self.current

    def add(self, sample: dict) -> None:
        """Append a sample, committing the open shard first if the sample would not fit in it."""
        nbytes = sample_bytes(sample)
        if self.current is not None and (self.size + nbytes > self.max_bytes or self.count >= self.max_samples):
            self.records.append(self.current.commit())
            self.current = None
        current = self.current if self.current is not None else self._open()
        current.add(sample)
        self.size, self.count = self.size + nbytes, self.count + 1

    def close(self) -> list[ShardRecord]:
        """Commit the open shard and return the records of every shard written."""
        if self.current is None and not self.records:
            self._open()
        if self.current is not None:
            current, self.current = self.current, None
            self.records.append(current.commit())
        return self.records

    def abort(self) -> None:
        """Drop the open shard's temporary tar; committed shards stay (a rerun rewrites them)."""
        if self.current is not None:
            self.current.abort()
            self.current = None


def write_rolling(
    samples: Iterable[dict], directory: Location, stem: str, *, max_bytes: int, max_samples: int
) -> list[ShardRecord]:
    """`RollingWriter` over an iterable of samples."""
    writer = RollingWriter(directory, stem, max_bytes=max_bytes, max_samples=max_samples)
    try:
        for sample in samples:
            writer.add(sample)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def check_complete(path: Location) -> None:
    """Raise ShardError unless the tar ends with its end-of-archive blocks.

    tarfile stops quietly at a tar cut on a header boundary, so a truncation would read
    as a shorter shard; a complete tar is whole 512-byte blocks ending in two zero blocks.
    """
    try:
        size = storage.size(path)
        if size is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        with storage.open_read(path, block_size=1024) as f:
            f.seek(max(0, size - 1024))
            tail = f.read()
    except OSError as exc:
        raise ShardError(f"{path}: cannot read the shard ({exc.strerror or exc})") from exc
    if size < 1024 or size % 512 or tail.count(0) != len(tail):
        raise ShardError(f"{path}: truncated tar shard ({size} bytes, no end-of-archive marker)")


def iter_shard(path: Location) -> Iterator[dict]:
    """Yield the samples of a tar shard as dicts {"__key__", "__shard__", ext: bytes}.

    Members of one sample are contiguous; a truncated or corrupt tar raises ShardError
    naming the shard.
    """
    path = storage.location(path)
    check_complete(path)
    current: dict | None = None
    try:
        with storage.open_read(path) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = info.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                member = tar.extractfile(info)
                if member is None:  # not for a regular file (checked above); a clear error all the same
                    raise ShardError(f"{path}: member {info.name} cannot be read")
                data = member.read()
                if len(data) != info.size:
                    raise ShardError(f"{path}: member {info.name} is truncated")
                if current is None or current["__key__"] != key:
                    if current is not None:
                        yield current
                    current = {"__key__": key, "__shard__": storage.name(path)}
                current[ext] = data
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardError(f"{path}: not a complete tar shard ({exc})") from exc
    if current is not None:
        yield current
