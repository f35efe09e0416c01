"""Reading and listing files and objects: stat, open, read, hash, list.

Remotely every operation is retried on transient errors (`pipeline.store.retry`); reads
of a file object go out as range requests of `READ_BLOCK` bytes.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.store.config import filesystem
from pipeline.store.locations import Location, is_remote, name, parent
from pipeline.store.retry import remote as _remote

READ_BLOCK = 8 << 20  # range-request size of streamed remote reads
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileStat:
    """Size, modification time (seconds) and identity tag of a file or object.

    tag: the object's ETag remotely (changes when its bytes change), mtime_ns locally.
    version_id: the object's version where the store keeps versions (S3 versioning), else "".
    """

    size: int
    mtime: float
    tag: str
    is_file: bool
    version_id: str = ""


def stat(loc: Location) -> FileStat | None:
    """A file's size, time and identity tag; None when nothing is there."""
    if not is_remote(loc):
        try:
            st = os.stat(loc)
        except OSError:
            return None
        import stat as stat_mod

        return FileStat(
            size=st.st_size, mtime=st.st_mtime, tag=str(st.st_mtime_ns), is_file=stat_mod.S_ISREG(st.st_mode)
        )
    try:
        info = _remote(str(loc), "", lambda fs, p: fs.info(p))
    except FileNotFoundError:
        return None
    return _file_stat(info)


def _file_stat(info: dict) -> FileStat:
    mtime = info.get("LastModified") or info.get("mtime") or info.get("updated") or 0
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    elif isinstance(mtime, str):
        from datetime import datetime

        mtime = datetime.fromisoformat(mtime.replace("Z", "+00:00")).timestamp()
    tag = str(info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("checksum") or "")
    version = info.get("VersionId") or info.get("version_id") or info.get("generation") or ""
    return FileStat(
        size=int(info.get("size") or 0),
        mtime=float(mtime),
        tag=tag.strip('"'),
        is_file=info.get("type", "file") == "file",
        version_id="" if version == "null" else str(version),
    )


def size(loc: Location) -> int | None:
    """A file's size in bytes; None when there is no file there."""
    st = stat(loc)
    return st.size if st is not None and st.is_file else None


# Remotely these go through `stat`: fsspec's generic isfile() answers False on any error,
# and a throttled request must not read as a missing file.


def exists(loc: Location) -> bool:
    """True when a file or folder (a non-empty prefix, remotely) is there."""
    if not is_remote(loc):
        return os.path.exists(loc)
    return stat(loc) is not None


def isfile(loc: Location) -> bool:
    """True when a file (an object, remotely) is there."""
    if not is_remote(loc):
        return os.path.isfile(loc)
    st = stat(loc)
    return st is not None and st.is_file


def isdir(loc: Location) -> bool:
    """True for a folder (remotely: a prefix with objects below it)."""
    if not is_remote(loc):
        return os.path.isdir(loc)
    st = stat(loc)
    return st is not None and not st.is_file


def open_read(loc: Location, *, block_size: int = READ_BLOCK):
    """A seekable binary file object; remotely reads go out as range requests of `block_size`."""
    if not is_remote(loc):
        return open(loc, "rb")
    return _remote(
        str(loc), "cannot open it", lambda fs, p: fs.open(p, "rb", block_size=block_size, cache_type="readahead")
    )


def read_bytes(loc: Location) -> bytes:
    """A whole file's bytes."""
    if not is_remote(loc):
        try:
            return Path(loc).read_bytes()
        except NotADirectoryError:  # a file where a folder belongs: nothing lies under it
            raise FileNotFoundError(errno.ENOENT, "no such file (a parent is a file, not a folder)", str(loc)) from None
    return _remote(str(loc), "", lambda fs, p: fs.cat_file(p))


def read_text(loc: Location, *, errors: str = "strict") -> str:
    """A whole file as UTF-8 text."""
    return read_bytes(loc).decode("utf-8", errors=errors)


def sha256(loc: Location, chunk: int = HASH_CHUNK) -> str:
    """sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open_read(loc) as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def list_entries(loc: Location) -> list[tuple[str, bool]]:
    """(name, is_folder) of the entries directly in a folder or prefix, sorted; [] if there is none."""
    if not is_remote(loc):
        try:
            with os.scandir(loc) as it:
                return sorted((e.name, e.is_dir()) for e in it)
        except (FileNotFoundError, NotADirectoryError):
            return []
    try:
        infos = _remote(str(loc), "cannot list it", lambda fs, p: fs.ls(p, detail=True))
    except FileNotFoundError:
        return []
    base = filesystem(str(loc))[1].rstrip("/")
    out = {
        (i["name"].rstrip("/").rsplit("/", 1)[-1], i.get("type") == "directory")
        for i in infos
        if i["name"].rstrip("/") != base
    }
    return sorted(out)


def list_files(loc: Location, suffix: str = "") -> list[str]:
    """Names of the files directly in a folder (ending in `suffix`), sorted."""
    return [n for n, is_dir in list_entries(loc) if not is_dir and n.endswith(suffix)]


def list_dirs(loc: Location) -> list[str]:
    """Names of the sub-folders (sub-prefixes) directly in a folder, sorted."""
    return [n for n, is_dir in list_entries(loc) if is_dir]


def walk_files(loc: Location) -> list[str]:
    """Paths (POSIX, relative to `loc`) of every file below it, sorted."""
    if not is_remote(loc):
        root = Path(loc)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    found = _remote(str(loc), "cannot list it", lambda fs, p: fs.find(p, detail=True))
    base = filesystem(str(loc))[1].rstrip("/") + "/"
    return sorted(k[len(base) :] for k, i in found.items() if i.get("type", "file") == "file" and k.startswith(base))


def stat_many(urls: list[str]) -> dict[str, FileStat | None]:
    """FileStat of many files, one listing per folder that holds several of them."""
    by_parent: dict[str, list[str]] = {}
    for url in urls:
        by_parent.setdefault(str(parent(url)), []).append(url)
    out: dict[str, FileStat | None] = {}
    for folder, members in by_parent.items():
        if len(members) < 2 or not is_remote(folder):
            out.update({u: stat(u) for u in members})
            continue
        try:
            infos = _remote(folder, "cannot list it", lambda fs, p: fs.ls(p, detail=True))
        except FileNotFoundError:
            infos = []
        listed = {i["name"].rstrip("/").rsplit("/", 1)[-1]: _file_stat(i) for i in infos}
        out.update({u: listed.get(name(u)) for u in members})
    return out
