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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

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


def write_shard(samples: Iterable[dict], path: Location) -> ShardRecord:
    """Write samples to a tar at `path` atomically and describe it.

    Locally: a temporary name beside it, fsync, rename. Remotely: a local temporary file,
    uploaded whole once complete (`storage.put_file`), so the key never holds a partial tar.
    """
    remote = storage.is_remote(path)
    final = storage.location(path)
    shard_name = storage.name(final)
    tmp = _temporary(final, remote)
    keys: list[str] = []
    try:
        with open(tmp, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for sample in samples:
                    keys.append(sample["__key__"])
                    for name, data in sample_members(sample):
                        tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
            raw.flush()
            os.fsync(raw.fileno())
        if len(set(keys)) != len(keys):
            raise ValueError(f"{shard_name}: duplicate sample keys in one shard")
        digest, size = sha256_file(tmp), tmp.stat().st_size
        if remote:
            storage.put_file(tmp, final)
        else:
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    log.debug("wrote %s: %d samples, %d bytes", shard_name, len(keys), size)
    return ShardRecord(name=shard_name, samples=len(keys), bytes=size, sha256=digest, keys=tuple(keys))


def _temporary(final: Location, remote: bool) -> Path:
    """Where a shard is assembled: beside it locally (same filesystem, so the rename is atomic),
    in the system temp folder for a remote shard (bounded by the shard size)."""
    if not remote:
        return final.with_name(f".{final.name}.tmp-{os.getpid()}")
    fd, tmp = tempfile.mkstemp(prefix=f"flowshard-{storage.name(final)}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def sample_bytes(sample: dict) -> int:
    """Bytes the sample takes in a tar (headers and padding included)."""
    return sum(512 + -(-len(data) // 512) * 512 for _, data in sample_members(sample))


def write_rolling(samples: Iterable[dict], directory: Location, stem: str, *,
                  max_bytes: int, max_samples: int) -> list[ShardRecord]:
    """Write samples in order into `stem.tar`, then `stem_1.tar`, ... each within the bounds.

    A sample larger than max_bytes on its own still goes into a shard by itself.
    """
    records: list[ShardRecord] = []
    batch: list[dict] = []
    size = 0

    def flush() -> None:
        name = f"{stem}.tar" if not records else f"{stem}_{len(records)}.tar"
        records.append(write_shard(batch, storage.join(directory, name)))

    for sample in samples:
        nbytes = sample_bytes(sample)
        if batch and (size + nbytes > max_bytes or len(batch) >= max_samples):
            flush()
            batch, size = [], 0
        batch.append(sample)
        size += nbytes
    if batch or not records:
        flush()
    return records


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
                data = tar.extractfile(info).read()
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
