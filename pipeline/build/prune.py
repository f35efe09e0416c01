"""Removing versions and giving their space back, without ever breaking a kept version or a reader.

What a version holds is known exactly: its shards (versions/<id>/shards.parquet), its unit
records (the stems in versions/<id>/units.parquet, files in .flowshard/units/) and its
folder of manifests. A file is deleted only when no remaining version references it (reference
counts from the catalog, never guesses from names), and the tars and unit records of an
unfinished build (records no committed version lists) are kept, so its rerun still resumes.

Safety:
- a prune holds OUTPUT's writer lock (`pipeline.build.lock`), the one a build holds;
- versions younger than `min_age_s` (default one day) are never removed, so a training run
  that opened one recently is not cut off; the latest version and tagged ones need `force`;
- the plan is written to a journal (.flowshard/prune.json) before anything is deleted, and
  every step after it can be done twice: a prune killed half way is finished by the next
  prune or build (`finish_interrupted`), which recounts references first;
- the order keeps every reader's view whole: the versions are recorded as pruned (so readers
  get "version V was pruned at T", `tags.VersionPruned`), dropped from the catalog, the latest
  pointer moved if it named one, each version's dataset.json (its commit record) removed before
  its manifests, unit records before tars.

Deletions on object storage go through `pipeline.storage` (retried on transient errors). With
bucket versioning, deleted objects keep costing space until the bucket's lifecycle rules expire
them: `versioning_note` says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field

from pipeline import storage
from pipeline.build import manifest, tags
from pipeline.build import versions as version
from pipeline.build.config import STATE_DIR
from pipeline.build.lock import writer_lock
from pipeline.storage import Location

log = logging.getLogger(__name__)

JOURNAL = "prune.json"
UNITS_DIR = "units"
DAY_S = 86400.0
DEFAULT_MIN_AGE_S = DAY_S


@dataclass(frozen=True, kw_only=True)
class PruneOptions:
    """Which versions to remove (`versions`, or the retention rules) and what protects the rest.

    keep_last: remove all but the newest N versions; older_than_days: remove versions older
    than that (both given: a version must match both). The rules never select the latest
    version. keep_tagged: tagged versions are kept instead of refused. force: remove the latest
    or tagged versions all the same. min_age_s: versions younger than this are never removed.
    """

    versions: tuple[str, ...] = ()
    keep_last: int | None = None
    older_than_days: float | None = None
    keep_tagged: bool = False
    force: bool = False
    min_age_s: float = DEFAULT_MIN_AGE_S
    dry_run: bool = False
    lock_wait_s: float = 0.0

    def __post_init__(self) -> None:
        if self.keep_last is not None and self.keep_last < 0:
            raise ValueError(f"--keep-last must be >= 0, got {self.keep_last}")
        if self.older_than_days is not None and self.older_than_days < 0:
            raise ValueError(f"--older-than must be >= 0 days, got {self.older_than_days}")
        if self.min_age_s < 0:
            raise ValueError(f"--min-age must be >= 0, got {self.min_age_s}")
        if not self.versions and self.keep_last is None and self.older_than_days is None:
            raise ValueError("nothing to prune: give --version, --keep-last or --older-than")


@dataclass
class PrunePlan:
    """What a prune removes: versions, the files only they reference, and what it keeps and why."""

    versions: list[str] = field(default_factory=list)
    names: dict[str, list[str]] = field(default_factory=dict)  # tags of the removed versions
    kept: list[tuple[str, str]] = field(default_factory=list)  # (version, why) selected but kept
    shards: dict[str, int] = field(default_factory=dict)  # tar name -> bytes, referenced only by removed versions
    strays: dict[str, int] = field(default_factory=dict)  # tars no version or unit record references
    units: list[str] = field(default_factory=list)  # unit record stems only removed versions list
    metadata_bytes: int = 0  # the removed versions' manifests and unit records
    latest: str = ""  # the latest version after the prune ("" when none is left)

    @property
    def shard_bytes(self) -> int:
        return sum(self.shards.values())

    @property
    def bytes(self) -> int:
        """Every byte the prune gives back: tars, strays, manifests and unit records."""
        return self.shard_bytes + sum(self.strays.values()) + self.metadata_bytes


@dataclass
class PruneResult:
    """A prune's plan and what it did (nothing with `dry_run`)."""

    plan: PrunePlan
    dry_run: bool
    freed: int = 0  # bytes actually removed (measured before each delete)
    resumed: bool = False  # an interrupted prune was finished first
    note: str = ""  # a word about bucket versioning on object storage


# --- references -------------------------------------------------------------------------------


def _shard_rows(root: Location, vid: str) -> dict[str, int]:
    path = storage.join(root, version.VERSIONS_DIR, vid, manifest.SHARDS)
    return {r["name"]: r["bytes"] for r in manifest.read_rows(path)} if storage.exists(path) else {}


def _unit_stems(root: Location, vid: str) -> set[str]:
    path = storage.join(root, version.VERSIONS_DIR, vid, version.UNITS)
    return {r["stem"] for r in manifest.read_rows(path)} if storage.exists(path) else set()


def _records(root: Location) -> dict[str, list[str]]:
    """stem -> tar names of every unit record in .flowshard/units/."""
    folder = storage.join(root, STATE_DIR, UNITS_DIR)
    out = {}
    for name in storage.list_files(folder, suffix=".json"):
        try:
            rec = json.loads(storage.read_bytes(storage.join(folder, name)))
        except (FileNotFoundError, ValueError):
            continue
        out[name[: -len(".json")]] = [s["name"] for s in rec.get("shards", [])]
    return out


def unshared_bytes(root: Location) -> dict[str, int]:
    """version id -> bytes of the tars that version alone references: what pruning it alone gives back."""
    owners: dict[str, set[str]] = {}
    sizes: dict[str, int] = {}
    for vid in version.committed_versions(root):
        for name, size in _shard_rows(root, vid).items():
            owners.setdefault(name, set()).add(vid)
            sizes[name] = size
    out = dict.fromkeys(version.committed_versions(root), 0)
    for name, who in owners.items():
        if len(who) == 1:
            out[next(iter(who))] += sizes[name]
    return out


# --- planning ---------------------------------------------------------------------------------


def _created_s(root: Location, vid: str) -> float:
    st = storage.stat(storage.join(root, version.VERSIONS_DIR, vid, manifest.DATASET_JSON))
    return st.mtime if st is not None else 0.0


def select(root: Location, opts: PruneOptions, now: float) -> tuple[list[str], list[tuple[str, str]]]:
    """The versions to remove (catalog order) and those selected but kept, with the reason.

    ValueError naming every version that needs `force` (the latest, a tagged one) or is unknown.
    """
    order = [r["version"] for r in version.read_catalog(root) if version.is_committed(root, r["version"])]
    latest = version.latest_version(root) or ""
    named = {version.resolve_version(root, spec) for spec in opts.versions}
    chosen = set(named)
    if opts.keep_last is not None or opts.older_than_days is not None:
        newest = set(order[len(order) - opts.keep_last :]) if opts.keep_last else set()
        for vid in order:
            old = opts.older_than_days is None or now - _created_s(root, vid) > opts.older_than_days * DAY_S
            if vid != latest and vid not in newest and old:
                chosen.add(vid)
    names = tags.names_by_version(root)
    remove, kept, refused = [], [], []
    for vid in (v for v in order if v in chosen):
        age = now - _created_s(root, vid)
        if age < opts.min_age_s:
            kept.append((vid, f"younger than --min-age ({age / 3600:.1f} h old)"))
        elif names.get(vid) and opts.keep_tagged:
            kept.append((vid, f"tagged {', '.join(names[vid])}"))
        elif names.get(vid) and not opts.force:
            refused.append(f"{vid} is tagged {', '.join(names[vid])} (--keep-tagged keeps it, --force removes it)")
        elif vid == latest and not opts.force:
            refused.append(
                f"{vid} is the latest version (--force removes it; the newest other version becomes the latest)"
            )
        else:
            remove.append(vid)
    if refused:
        raise ValueError(f"{root}: refusing to prune: " + "; ".join(refused))
    return remove, kept


def plan_prune(root: Location, remove: list[str]) -> PrunePlan:
    """The files only `remove` references, counted from the catalog and the unit records."""
    committed = version.committed_versions(root)
    remaining = [v for v in committed if v not in remove]
    keep_shards = {n for v in remaining for n in _shard_rows(root, v)}
    keep_stems = {s for v in remaining for s in _unit_stems(root, v)}
    gone_stems = {s for v in remove for s in _unit_stems(root, v)}
    records = _records(root)
    listed = keep_stems | gone_stems | {s for v in committed for s in _unit_stems(root, v)}
    # An unfinished build's records are listed by no committed version: they and their tars stay.
    keep_shards |= {n for stem, names in records.items() if stem not in listed for n in names}
    shards = {n: b for v in remove for n, b in _shard_rows(root, v).items() if n not in keep_shards}
    known = keep_shards | set(shards) | {n for v in committed for n in _shard_rows(root, v)}
    known |= {n for names in records.values() for n in names}
    shard_dir = storage.join(root, manifest.SHARD_DIR)
    strays = {
        n: storage.size(storage.join(shard_dir, n)) or 0
        for n in storage.list_files(shard_dir, suffix=".tar")
        if n not in known
    }
    units = sorted(s for s in gone_stems - keep_stems if s in records)
    meta = sum(storage.size(storage.join(root, STATE_DIR, UNITS_DIR, f"{s}.json")) or 0 for s in units)
    for vid in remove:
        folder = storage.join(root, version.VERSIONS_DIR, vid)
        meta += sum(storage.size(storage.join(folder, f)) or 0 for f in storage.walk_files(folder))
    latest = version.latest_version(root) or ""
    if latest in remove:
        latest = _newest_remaining(root, set(remove))
    names = tags.names_by_version(root)
    return PrunePlan(
        versions=list(remove),
        names={v: names[v] for v in remove if v in names},
        shards=shards,
        strays=strays,
        units=units,
        metadata_bytes=meta,
        latest=latest,
    )


def _newest_remaining(root: Location, gone: set[str]) -> str:
    """The newest committed version (catalog order) not in `gone`; "" when none is left."""
    remaining = [
        r["version"]
        for r in version.read_catalog(root)
        if r["version"] not in gone and version.is_committed(root, r["version"])
    ]
    return remaining[-1] if remaining else ""


# --- doing it ---------------------------------------------------------------------------------


def prune(output: Location, opts: PruneOptions, *, now: float | None = None) -> PruneResult:
    """Remove the versions `opts` selects and every file only they reference; see the module doc."""
    root = storage.location(output)
    version.resolve_version(root, None)  # no dataset here: FileNotFoundError naming the folder
    now = time.time() if now is None else now
    if opts.dry_run:  # reads only: no lock, nothing written
        remove, kept = select(root, opts, now)
        plan = plan_prune(root, remove)
        plan.kept = kept
        return PruneResult(
            plan=plan, dry_run=True, resumed=storage.exists(_journal_path(root)), note=versioning_note(root)
        )
    with writer_lock(root, wait_s=opts.lock_wait_s) as held, tags.tag_lock(root):
        resumed = finish_interrupted(root, tag_lock_held=True)
        remove, kept = select(root, opts, now)
        plan = plan_prune(root, remove)
        plan.kept = kept
        freed = 0
        if remove or plan.strays:
            held.check()
            journal = {"started": tags.now_utc(), **asdict(plan)}
            storage.makedirs(storage.join(root, STATE_DIR))
            manifest.atomic_write_bytes(_journal_path(root), manifest.dump_json(journal))
            freed = _finish(root, journal)
    return PruneResult(plan=plan, dry_run=False, freed=freed, resumed=resumed, note=versioning_note(root))


def _journal_path(root: Location) -> Location:
    return storage.join(root, STATE_DIR, JOURNAL)


def finish_interrupted(output: Location, *, tag_lock_held: bool = False) -> bool:
    """Finish a prune that was killed half way (its journal is still there); True if there was one.

    The caller holds the writer lock."""
    root = storage.location(output)
    try:
        journal = json.loads(storage.read_bytes(_journal_path(root)))
    except FileNotFoundError:
        return False
    log.warning(
        "%s: finishing a prune that was interrupted (started %s UTC, versions %s)",
        root,
        journal.get("started"),
        ", ".join(journal.get("versions", [])) or "none",
    )
    if tag_lock_held:
        _finish(root, journal)
    else:
        with tags.tag_lock(root):
            _finish(root, journal)
    return True


def _finish(root: Location, journal: dict) -> int:
    """Carry out a journal's prune; every step may already be done. Returns the bytes removed."""
    gone = set(journal["versions"])
    names = journal.get("names", {})
    tags.record_pruned(root, {v: {"pruned": journal["started"], "names": names.get(v, [])} for v in gone})
    tags.drop_tags_of(root, gone)
    _drop_from_catalog(root, gone)
    _move_latest(root, gone)
    freed = sum(_remove_version_folder(root, v) for v in sorted(gone))
    # Recount: nothing a committed version or an unfinished build references is ever deleted.
    committed = version.committed_versions(root)
    listed = {s for v in committed for s in _unit_stems(root, v)}
    records = _records(root)
    keep = {n for v in committed for n in _shard_rows(root, v)}
    keep |= {n for stem, tars in records.items() if stem not in listed and stem not in journal["units"] for n in tars}
    for stem in journal["units"]:
        if stem not in listed:
            freed += _remove(storage.join(root, STATE_DIR, UNITS_DIR, f"{stem}.json"))
    for name in [*journal["shards"], *journal.get("strays", {})]:
        if name not in keep:
            freed += _remove(storage.join(root, manifest.SHARD_DIR, name))
    storage.remove(_journal_path(root))
    log.info("%s: pruned %d version(s), %d bytes given back", root, len(gone), freed)
    return freed


def _drop_from_catalog(root: Location, gone: set[str]) -> None:
    path = storage.join(root, version.CATALOG)
    rows = version.read_catalog(root)
    if any(r["version"] in gone for r in rows):
        manifest.write_parquet(path, [r for r in rows if r["version"] not in gone], version.CATALOG_SCHEMA)


def _move_latest(root: Location, gone: set[str]) -> None:
    """When the latest version is pruned: the newest remaining one becomes the latest, or, with
    none left, the top-level copies go (dataset.json, the pointer, first)."""
    if version.latest_version(root) not in gone:
        return
    newest = _newest_remaining(root, gone)
    if newest:
        manifest.publish_latest(root, storage.join(root, version.VERSIONS_DIR, newest))
        return
    for name in (manifest.DATASET_JSON, manifest.MANIFEST, manifest.SHARDS):
        storage.remove(storage.join(root, name))


def _remove_version_folder(root: Location, vid: str) -> int:
    """A version's folder, its dataset.json (the commit record) first; returns the bytes removed."""
    folder = storage.join(root, version.VERSIONS_DIR, vid)
    files = sorted(storage.walk_files(folder), key=lambda f: f != manifest.DATASET_JSON)
    freed = sum(_remove(storage.join(folder, f)) for f in files)
    if not storage.is_remote(folder):  # object stores have no folders to remove
        with contextlib.suppress(OSError):  # already gone, or holds something we did not write: left alone
            os.rmdir(folder)
    return freed


def _remove(loc: Location) -> int:
    size = storage.size(loc)
    if size is None:
        return 0
    storage.remove(loc)
    return size


def versioning_note(root: Location) -> str:
    """On an S3 bucket with versioning on (or unknown), a word that deleted objects still cost
    space until lifecycle rules expire them; "" elsewhere."""
    if storage.scheme(root) != "s3":
        return ""
    fs, path = storage.filesystem(str(root))
    bucket = path.split("/", 1)[0]
    try:
        versioned = storage.retry(lambda: fs.is_bucket_versioned(bucket), f"s3://{bucket}: versioning")
    except OSError as exc:
        log.debug("cannot read the versioning of s3://%s (%s)", bucket, exc)
        return (
            f"s3://{bucket}: if versioning is on for this bucket, deleted objects keep costing space "
            "until its lifecycle rules expire their noncurrent versions"
        )
    if not versioned:
        return ""
    return (
        f"s3://{bucket} keeps object versions: the deleted objects still cost space until the bucket's "
        "lifecycle rules expire their noncurrent versions"
    )
