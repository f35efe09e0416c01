"""Atomic, byte-reproducible WebDataset tar shards.

A shard is written under a temporary name and renamed when complete, so a reader or a
resumed build never sees a partial tar. Tar headers carry a fixed mtime, uid/gid and
owner names, and members are sorted within each sample, so the same samples always give
the same bytes (webdataset's TarWriter stamps the current time, hence our own writer).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

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


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def write_shard(samples: Iterable[dict], path: str | Path) -> ShardRecord:
    """Write samples to a tar at `path` atomically (temp name, fsync, rename) and describe it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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
            raise ValueError(f"{path.name}: duplicate sample keys in one shard")
        digest, size = sha256_file(tmp), tmp.stat().st_size
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.debug("wrote %s: %d samples, %d bytes", path.name, len(keys), size)
    return ShardRecord(name=path.name, samples=len(keys), bytes=size, sha256=digest, keys=tuple(keys))


def sample_bytes(sample: dict) -> int:
    """Bytes the sample takes in a tar (headers and padding included)."""
    return sum(512 + -(-len(data) // 512) * 512 for _, data in sample_members(sample))


def write_rolling(samples: Iterable[dict], directory: str | Path, stem: str, *,
                  max_bytes: int, max_samples: int) -> list[ShardRecord]:
    """Write samples in order into `stem.tar`, then `stem_1.tar`, ... each within the bounds.

    A sample larger than max_bytes on its own still goes into a shard by itself.
    """
    directory = Path(directory)
    records: list[ShardRecord] = []
    batch: list[dict] = []
    size = 0

    def flush() -> None:
        name = f"{stem}.tar" if not records else f"{stem}_{len(records)}.tar"
        records.append(write_shard(batch, directory / name))

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


def check_complete(path: Path) -> None:
    """Raise ShardError unless the tar ends with its end-of-archive blocks.

    tarfile stops quietly at a tar cut on a header boundary, so a truncation would read
    as a shorter shard; a complete tar is whole 512-byte blocks ending in two zero blocks.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(max(0, size - 1024))
            tail = f.read()
    except OSError as exc:
        raise ShardError(f"{path}: cannot read the shard ({exc.strerror or exc})") from exc
    if size < 1024 or size % 512 or tail.count(0) != len(tail):
        raise ShardError(f"{path}: truncated tar shard ({size} bytes, no end-of-archive marker)")


def iter_shard(path: str | Path) -> Iterator[dict]:
    """Yield the samples of a tar shard as dicts {"__key__", "__shard__", ext: bytes}.

    Members of one sample are contiguous; a truncated or corrupt tar raises ShardError
    naming the shard.
    """
    path = Path(path)
    check_complete(path)
    current: dict | None = None
    try:
        with tarfile.open(path, mode="r|") as tar:
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
                    current = {"__key__": key, "__shard__": path.name}
                current[ext] = data
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardError(f"{path}: not a complete tar shard ({exc})") from exc
    if current is not None:
        yield current
