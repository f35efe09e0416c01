"""Resume: each finished unit leaves its record in OUTPUT/.flowshard/units/<stem>.json.

A rerun of the same command plans the same units and skips those whose record and tars are
intact, so a killed build finishes with the same bytes an uninterrupted one would have
written. A new tar that is byte for byte a stored one is shared instead of kept twice.

"Intact" costs a stat per tar, not a read: each record keeps its tars' size and the store's
identity tag (`ShardRow.tag`: the object's ETag, or a local file's mtime_ns), taken when the
record was written. A tar whose tag still matches is the one recorded; one whose tag differs
(touched, copied back, or a record from before tags) is hashed in full. `flowshard verify`
always hashes every tar.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace

from pipeline import shard, storage
from pipeline.build import manifest
from pipeline.build import versions as version
from pipeline.build.config import STATE_DIR
from pipeline.build.manifest import SHARD_DIR
from pipeline.build.records import ShardRow, UnitRecord
from pipeline.build.units import Unit
from pipeline.storage import Location

log = logging.getLogger(__name__)


def unit_record_path(output: Location, unit: Unit) -> Location:
    """Where the record of a finished unit with this stem lives."""
    return storage.join(output, STATE_DIR, "units", f"{unit.stem}.json")


def load_finished(output: Location, unit: Unit) -> UnitRecord | None:
    """The unit's record if a unit with this stem finished and its tars are intact: of their
    recorded size, and of their recorded store tag or else sha256 (a tar altered in place,
    same size, is written again)."""
    path = unit_record_path(output, unit)
    try:
        data = json.loads(storage.read_bytes(path))
    except (FileNotFoundError, ValueError):  # never finished, or a record from another layout
        return None
    try:
        rec = UnitRecord.from_json(data)
    except ValueError as exc:  # not a record this release can read: the unit is written again
        log.warning("%s: %s; writing the unit again", path, exc)
        return None
    if rec.stem != unit.stem:
        return None
    for s in rec.shards:
        tar = storage.join(output, SHARD_DIR, s.name)
        if not _intact(tar, s):
            log.warning("%s: not the tar unit %s recorded; writing the unit again", tar, unit.stem)
            return None
    return rec


def load_without(output: Location, unit: Unit, whole: Unit, retried: frozenset[str]) -> UnitRecord | None:
    """The record of `unit`, which is `whole` less the videos in `retried`, made from `whole`'s
    record when those videos are error rows there: with no samples in its tars, the unit's tars
    are the same, so it is committed as it stands (and its record saved under `unit`'s stem)."""
    rec = load_finished(output, whole)
    if rec is None or any(v.status == "ok" for v in rec.videos if v.id in retried):
        return None
    keep = {r.key for r in unit.refs}
    rec = replace(rec, stem=unit.stem, videos=tuple(v for v in rec.videos if v.id in keep))
    if {v.id for v in rec.videos} != keep:
        return None
    save_record(output, unit, rec)
    return rec


def _intact(tar: Location, row: ShardRow) -> bool:
    """Whether `tar` is the one `row` records: a stat when its tag still matches, else a full hash."""
    st = storage.stat(tar)
    if st is None or not st.is_file or st.size != row.bytes:
        return False
    return (bool(row.tag) and st.tag == row.tag) or _sha256(tar) == row.sha256


def with_tags(output: Location, record: UnitRecord) -> UnitRecord:
    """The record with each tar's current store tag, for `load_finished` to compare against."""
    shards = []
    for s in record.shards:
        st = storage.stat(storage.join(output, SHARD_DIR, s.name))
        shards.append(replace(s, tag=st.tag if st is not None else ""))
    return replace(record, shards=tuple(shards))


def _sha256(path: Location) -> str:
    try:
        return shard.sha256_file(path)
    except OSError:
        return ""


def stored_tars(output: Location, versions: list[str]) -> dict[tuple[str, int], str]:
    """(sha256, bytes) -> name of every tar the given committed versions hold."""
    out: dict[tuple[str, int], str] = {}
    for vid in versions:
        for row in manifest.read_rows(storage.join(output, version.VERSIONS_DIR, vid, manifest.SHARDS)):
            out.setdefault((row["sha256"], row["bytes"]), row["name"])
    return out


def share_identical(output: Location, record: UnitRecord, known: Mapping[tuple[str, int], str]) -> UnitRecord:
    """The unit record with each new tar that is byte for byte a stored one replaced by it.

    A new tool (another ffmpeg, say) gives a new version id and new tar names, though its
    bytes are often the same: then the version points at the tar already stored and the copy
    is removed, so versions share what is identical. Stored tars are never rewritten.
    """
    renamed = {}
    for s in record.shards:
        twin = known.get((s.sha256, s.bytes))
        if twin and twin != s.name and storage.size(storage.join(output, SHARD_DIR, twin)) == s.bytes:
            storage.remove(storage.join(output, SHARD_DIR, s.name))
            renamed[s.name] = twin
    if not renamed:
        return record
    log.info("unit %s: %d tar(s) identical to stored ones, shared", record.stem, len(renamed))
    shards = tuple(replace(s, name=renamed.get(s.name, s.name)) for s in record.shards)
    videos = tuple(
        replace(v, shard=",".join(renamed.get(n, n) for n in v.shard.split(",")) if v.shard else "")
        for v in record.videos
    )
    return replace(record, shards=shards, videos=videos)


def save_record(output: Location, unit: Unit, record: UnitRecord) -> None:
    """Write the unit's record (after its tars, so a record always names finished tars)."""
    path = unit_record_path(output, unit)
    storage.makedirs(storage.parent(path))
    manifest.atomic_write_bytes(path, manifest.dump_json(with_tags(output, record).to_json()))
