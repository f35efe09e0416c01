"""Locations: a local path is a `pathlib.Path`, a remote one its URL string.

Local code keeps its behaviour and bytes; a remote location is "s3://bucket/prefix/name"
(`location`, `join`, `name`). `file://` URLs are local paths.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

Location = Path | str


def scheme(loc: Location) -> str:
    """The URL scheme of a location ("" for a local path)."""
    text = str(loc)
    return text.split("://", 1)[0].lower() if "://" in text else ""


def is_remote(loc: Location) -> bool:
    """True for a URL other than file://, i.e. anything fsspec must open."""
    return scheme(loc) not in ("", "file")


def location(loc: Location) -> Location:
    """A local path as a Path (file:// URLs included), a remote URL as a string without a trailing "/"."""
    if is_remote(loc):
        text = str(loc)
        return text if text.endswith("://") else text.rstrip("/")
    text = str(loc)
    return Path(text[len("file://") :]) if text.startswith("file://") else Path(text)


def join(base: Location, *parts: str) -> Location:
    """`base / part / ...`: a Path locally, a URL with "/" separators remotely."""
    if not is_remote(base):
        return Path(location(base), *parts)
    out = str(location(base))
    for part in parts:
        out = f"{out}/{str(part).strip('/')}" if part else out
    return out


def name(loc: Location) -> str:
    """The last component of a location."""
    return Path(loc).name if not is_remote(loc) else str(location(loc)).rsplit("/", 1)[-1]


def parent(loc: Location) -> Location:
    """The folder (or prefix) holding a location."""
    if not is_remote(loc):
        return Path(loc).parent
    head, _, _tail = str(location(loc)).rpartition("/")
    return head if head and not head.endswith(":/") else str(loc)


def normalize_url(url: str) -> str:
    """A URL with "." and ".." resolved in its key ("s3://b/lists/../v/a.mp4" -> "s3://b/v/a.mp4")."""
    proto, _, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    key = posixpath.normpath(key) if key else ""
    if key.startswith("..") or key == ".":
        raise ValueError(f"{url!r} points outside its bucket")
    return f"{proto}://{bucket}/{key}" if key else f"{proto}://{bucket}"
