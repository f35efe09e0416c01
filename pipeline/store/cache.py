"""Local copies of remote inputs, one per machine and object version, pruned by size."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import posixpath
import tempfile
import threading
from pathlib import Path
from typing import TypedDict

from pipeline.store.files import FileStat, stat
from pipeline.store.locations import Location, is_remote, name
from pipeline.store.lock import lock as exclusive
from pipeline.store.retry import remote as _remote

CACHE_BYTES = 8 << 30  # local copies of remote inputs kept per machine


class _CacheSettings(TypedDict):
    dir: str | None  # None: a folder under the system's temporary directory
    bytes: int


_CACHE: _CacheSettings = {"dir": None, "bytes": CACHE_BYTES}
_CACHE_LOCK = threading.Lock()


def _cache_dir() -> Path:
    folder = Path(_CACHE["dir"] or Path(tempfile.gettempdir()) / "flowshard-inputs")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def local_copy(loc: Location, st: FileStat | None = None) -> str:
    """A local file holding the bytes of `loc` (a local path is returned as it is).

    Remote objects are downloaded whole into a per-machine cache named by the object's URL,
    ETag and size, so a probe and the decode that follows (possibly in another process)
    download it once. Decoders get a seekable file: containers whose index sits at the end
    (an mp4 moov atom) cannot be read from a pipe. The least recently used copies are
    removed when the cache outgrows its budget. Raises FileNotFoundError when nothing is there.
    """
    if not is_remote(loc):
        return str(loc)
    url = str(loc)
    st = st or stat(url)
    if st is None or not st.is_file:
        raise FileNotFoundError(errno.ENOENT, f"{url}: no such object")
    ident = hashlib.sha256(f"{url}\0{st.tag}\0{st.size}".encode()).hexdigest()[:32]
    suffix = posixpath.splitext(name(url).split("?", 1)[0])[1][:16]
    path = _cache_dir() / f"{ident}{suffix}"
    if _cached(path, st.size):
        return str(path)
    # Processes on this machine that want the object at once (the parts of a video shared over
    # several CPUs each probe and decode it) download it once: the first holds the lock, the
    # others wait for it and find the copy. The lock file goes once the copy is in place: one
    # waiting on the removed file still gets its lock and finds the copy; at worst, one arriving
    # in between downloads again, which costs bytes and never gives a wrong file.
    lock_file = path.with_name(f".{path.name}.lock")
    with exclusive(lock_file, wait_s=math.inf):
        try:
            if _cached(path, st.size):
                return str(path)
            _download(url, path, st.size)
        finally:
            lock_file.unlink(missing_ok=True)
    _prune_cache(keep=path)
    return str(path)


def _download(url: str, path: Path, size: int) -> None:
    """The object at `url` into `path`, whole (through a temporary file beside it) or not at all."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        _remote(url, "cannot download it", lambda fs, p: fs.get_file(p, str(tmp)))
        if tmp.stat().st_size != size:
            raise OSError(errno.EIO, f"{url}: downloaded {tmp.stat().st_size} bytes, the object has {size}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _cached(path: Path, size: int) -> bool:
    """Whether the cache holds `path` whole (marked most recently used when it does)."""
    if path.is_file() and path.stat().st_size == size:
        os.utime(path)
        return True
    return False


def _prune_cache(keep: Path) -> None:
    with _CACHE_LOCK:
        files = []
        for p in _cache_dir().iterdir():
            if p.name.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError):  # another process pruned it first
                st = p.stat()
                files.append((st.st_mtime, st.st_size, p))
        total = sum(s for _, s, _ in files)
        for _, nbytes, p in sorted(files):
            if total <= _CACHE["bytes"]:
                break
            if p != keep:
                p.unlink(missing_ok=True)  # a decoder that has it open keeps reading it
                total -= nbytes
