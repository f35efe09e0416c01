"""Writes that readers see whole or not at all.

Locally: a temporary name in the same folder, fsync, rename. On object storage an object
becomes visible only when its upload completes (one PUT, or a multipart upload whose parts
are committed by its last request), so the final key is written directly and a failed or
killed upload leaves nothing visible; s3fs aborts a failed multipart upload, and one cut
off by a killed process stays invisible (an AbortIncompleteMultipartUpload lifecycle rule
reclaims its parts). Larger objects, such as tar shards, are assembled in a local
temporary file and uploaded whole (`put_file`).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from pipeline.store.locations import Location, is_remote
from pipeline.store.retry import remote as _remote


def makedirs(loc: Location) -> None:
    """Create a folder and its parents; nothing to do on object storage (prefixes need none)."""
    if not is_remote(loc):
        Path(loc).mkdir(parents=True, exist_ok=True)


def write_bytes_atomic(loc: Location, data: bytes) -> None:
    """Write a whole file so that readers see the old bytes or the new ones, never a part.

    Locally: temporary name, fsync, rename (the temporary file is removed on failure).
    Remotely: one upload to the final key, visible only once complete.
    Raises OSError naming the file.
    """
    if is_remote(loc):
        _remote(str(loc), "cannot write it", lambda fs, p: fs.pipe_file(p, data))
        return
    path = Path(loc)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # the folder itself is gone or unwritable: nothing was left behind
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EROFS, errno.EACCES):
            raise


def put_file(local: str | Path, loc: Location) -> None:
    """Copy a complete local file to `loc` so that it appears whole or not at all.

    Remotely the upload goes to the final key (one PUT, or a multipart upload that commits
    at its end) and its size is checked after; locally a temporary copy is renamed.
    """
    want = os.path.getsize(local)
    if not is_remote(loc):
        dest = Path(loc)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        try:
            shutil.copyfile(local, tmp)
            os.replace(tmp, dest)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return

    def upload(fs, path):
        fs.put_file(str(local), path)
        got = fs.info(path).get("size")
        if got != want:
            raise OSError(errno.EIO, f"uploaded {want} bytes, the store holds {got}")

    _remote(str(loc), "cannot upload it", upload)


def remove(loc: Location, *, missing_ok: bool = True) -> None:
    """Delete a file (an object)."""
    if not is_remote(loc):
        Path(loc).unlink(missing_ok=missing_ok)
        return
    try:
        _remote(str(loc), "cannot delete it", lambda fs, p: fs.rm_file(p))
    except FileNotFoundError:
        if not missing_ok:
            raise
