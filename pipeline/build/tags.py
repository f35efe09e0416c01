"""Names of versions: the tags users give them, and the record of versions that were pruned.

    OUTPUT/tags.json     {"tags": {"paper": {"version": "<id>", "tagged": "<UTC time>"}}}
    OUTPUT/pruned.json   {"versions": {"<id>": {"pruned": "<UTC time>", "names": ["paper"]}}}

A tag is a name a person gives one version ("the version the paper used"): it is usable
wherever a version id is (`OUTPUT@paper`, see `pipeline.build.versions.resolve_version`) and
moves to another version only when asked to (`force`). A name that could be read as a
version id or a prefix of one (hex digits only) is refused, so `OUTPUT@SPEC` never means two
things. pruned.json keeps the id, time and names of every pruned version, so that a reader
asking for one learns "version V was pruned at T" instead of meeting a missing file.

Both files are small JSON objects written atomically through `pipeline.storage`; tag changes
hold OUTPUT/.tags.lock (a lock of its own: tagging never waits for a build) so two writers never
lose each other's names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime

from pipeline import storage
from pipeline.build import manifest
from pipeline.storage import Location

log = logging.getLogger(__name__)

TAGS = "tags.json"
PRUNED = "pruned.json"
TAGS_LOCK = ".tags.lock"
TAG_LOCK_WAIT_S = 30.0  # tag changes are quick: a second writer waits this long, then gives up
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED = frozenset({"latest"})  # `OUTPUT@latest` already means the latest version
_HEX = frozenset("0123456789abcdefABCDEF")


class VersionPruned(FileNotFoundError):
    """A version that was pruned was asked for; the message says which and when."""


def now_utc() -> str:
    """The current time as the catalog prints times (UTC, to the second)."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


def check_name(name: str) -> str:
    """`name` if it can be a tag; ValueError naming it and the rule it breaks otherwise."""
    if not NAME_RE.fullmatch(name or ""):
        raise ValueError(f"tag {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if set(name) <= _HEX:
        raise ValueError(
            f"tag {name!r} could be read as a version id prefix (hex digits only): add a letter beyond a-f"
        )
    if name.lower() in RESERVED:
        raise ValueError(f"tag {name!r} is reserved")
    return name


def _check_id(version: str) -> None:
    if not version or not set(version) <= _HEX:
        raise ValueError(f"{version!r} is not a full version id")


# --- tags -------------------------------------------------------------------------------------


def read_tags(root: Location) -> dict[str, dict]:
    """name -> {"version", "tagged"} of OUTPUT's tags ({} when it has none)."""
    return dict(_read_json(storage.join(root, TAGS)).get("tags", {}))


def lookup(root: Location, name: str) -> str | None:
    """The version id tag `name` points to, or None when OUTPUT has no such tag."""
    entry = read_tags(root).get(name)
    return entry["version"] if entry else None


def names_by_version(root: Location) -> dict[str, list[str]]:
    """version id -> its tags, sorted."""
    out: dict[str, list[str]] = {}
    for name, entry in sorted(read_tags(root).items()):
        out.setdefault(entry["version"], []).append(name)
    return out


def set_tag(root: Location, name: str, version: str, *, force: bool = False) -> str | None:
    """Point tag `name` at full version id `version` (resolve a spec first: `versions.resolve_version`).

    Returns the version the tag pointed to before (None for a new tag). A tag that points to
    another version moves only with `force`; ValueError otherwise.
    """
    check_name(name)
    _check_id(version)
    with tag_lock(root):
        tags = read_tags(root)
        old = tags.get(name, {}).get("version")
        if old and old != version and not force:
            raise ValueError(f"tag {name!r} already names version {old}: pass --force to move it to {version}")
        if old != version:
            tags[name] = {"version": version, "tagged": now_utc()}
            _write_tags(root, tags)
    return old


def delete_tag(root: Location, name: str) -> str:
    """Remove tag `name`; returns the version it named. ValueError when there is no such tag."""
    with tag_lock(root):
        tags = read_tags(root)
        if name not in tags:
            raise ValueError(f"{root}: no tag {name!r}; tags: {sorted(tags) or 'none'}")
        entry = tags.pop(name)
        _write_tags(root, tags)
    return entry["version"]


def drop_tags_of(root: Location, versions: set[str]) -> list[str]:
    """Remove every tag naming one of `versions` (they are being pruned); returns the names.

    The caller holds `tag_lock`."""
    tags = read_tags(root)
    gone = sorted(n for n, e in tags.items() if e["version"] in versions)
    if gone:
        _write_tags(root, {n: e for n, e in tags.items() if n not in gone})
    return gone


def _write_tags(root: Location, tags: dict[str, dict]) -> None:
    manifest.atomic_write_bytes(storage.join(root, TAGS), manifest.dump_json({"tags": dict(sorted(tags.items()))}))


@contextlib.contextmanager
def tag_lock(root: Location, *, wait_s: float = TAG_LOCK_WAIT_S) -> Iterator[storage.Lock]:
    """Hold OUTPUT's tag lock, waiting up to `wait_s` for another writer of tags to finish."""
    path = storage.join(root, TAGS_LOCK)
    storage.makedirs(root)
    with storage.lock(path, wait_s=wait_s) as held:
        yield held


# --- pruned versions --------------------------------------------------------------------------


def read_pruned(root: Location) -> dict[str, dict]:
    """version id -> {"pruned": UTC time, "names": [...]} of every version pruned from OUTPUT."""
    return dict(_read_json(storage.join(root, PRUNED)).get("versions", {}))


def record_pruned(root: Location, entries: dict[str, dict]) -> None:
    """Add versions to pruned.json (entries already there keep their first time)."""
    known = read_pruned(root)
    merged = {**entries, **known}
    if merged != known:
        manifest.atomic_write_bytes(
            storage.join(root, PRUNED), manifest.dump_json({"versions": dict(sorted(merged.items()))})
        )


def pruned_error(root: Location, spec: str, *, min_prefix: int = 6) -> VersionPruned | None:
    """The error for a spec (full id, id prefix of >= `min_prefix` characters or former tag) that
    names a pruned version, or None when it names none."""
    for vid, entry in sorted(read_pruned(root).items()):
        if vid == spec or spec in entry.get("names", []) or (len(spec) >= min_prefix and vid.startswith(spec)):
            names = entry.get("names") or []
            called = f" ({', '.join(names)})" if names else ""
            return VersionPruned(f"{root}: version {vid}{called} was pruned at {entry.get('pruned')} UTC")
    return None


def _read_json(path: Location) -> dict:
    try:
        return json.loads(storage.read_bytes(path))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def opened_name(spec: str) -> str:
    """The tag a dataset spec ("OUTPUT@NAME") opened its version by; "" for an id, a prefix or none."""
    _, sep, tail = str(spec).rpartition("@")
    if not sep or "/" in tail:
        return ""
    try:
        return check_name(tail)
    except ValueError:
        return ""
