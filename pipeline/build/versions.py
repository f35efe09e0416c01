"""Dataset versions: content hashes of the inputs, version ids, the catalog and diffs.

A version id is a hash of what the dataset is made of, never random: every video's key,
source path, label, split and content identity (sha256 of a local file's bytes; a remote
object's ETag, size and version id, so the driver never downloads it), the label map,
every output setting (`BuildConfig.output_dict()`) and the schema version. The same inputs
and settings always give the same id, on any machine.

One OUTPUT holds several versions:

    OUTPUT/versions.parquet                 the catalog, one row per version
    OUTPUT/versions/<id>/dataset.json       each version's commit record (written last)
    OUTPUT/versions/<id>/manifest.parquet   its videos
    OUTPUT/versions/<id>/shards.parquet     its shards, which live once in OUTPUT/shards/
    OUTPUT/versions/<id>/units.parquet      its shard plan (which videos each unit holds)
    OUTPUT/dataset.json, manifest.parquet, shards.parquet   copies of the latest version's

OUTPUT/dataset.json is the pointer to the latest version; readers take that version's own
folder, so a crash while the copies are refreshed never mixes two versions. OUTPUT may be
a local folder or a bucket prefix: every file goes through `pipeline.storage`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pyarrow as pa

from pipeline import boxes, encode, storage
from pipeline.build import manifest, tags
from pipeline.build.config import BuildConfig
from pipeline.records import VideoRef
from pipeline.shard import sha256_file
from pipeline.stages.config import WorkerConfig
from pipeline.storage import Location

log = logging.getLogger(__name__)

CATALOG = "versions.parquet"
VERSIONS_DIR = "versions"
UNITS = "units.parquet"
HASH_CACHE = "content_hashes.json"
MIN_PREFIX = 6
ID_CHARS = 16

CATALOG_SCHEMA = pa.schema(
    [
        ("version", pa.string()),
        ("seq", pa.int32()),
        ("parent", pa.string()),
        ("videos", pa.int64()),
        ("ok", pa.int64()),
        ("errors", pa.int64()),
        ("shards", pa.int64()),
        ("bytes", pa.int64()),
        ("new_bytes", pa.int64()),
        ("frames", pa.int64()),
        ("flow_fields", pa.int64()),
        ("config_hash", pa.string()),
        ("schema_version", pa.int32()),
    ]
)
UNIT_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("stem", pa.string()),
        ("split", pa.string()),
        ("keys", pa.list_(pa.string())),
    ]
)


# --- content hashes ---------------------------------------------------------------------------


def _stat_key(uri: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a regular local file; None for anything else (missing, remote, FIFO)."""
    if "://" in uri:
        return None
    try:
        st = os.stat(uri)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def object_identity(st: storage.FileStat) -> str:
    """What names a remote object's bytes without reading them: its ETag (which changes
    whenever its bytes do), size and version id where the store keeps versions."""
    ident = f"etag:{st.tag};size:{st.size}"
    return f"{ident};version:{st.version_id}" if st.version_id else ident


def is_sha256(ident: str) -> bool:
    """True for a sha256 hex digest (a local file's identity), False for an object identity."""
    return len(ident) == 64 and all(c in "0123456789abcdef" for c in ident)


def content_hashes(refs: list[VideoRef], state_dir: Location, *, threads: int = 4) -> dict[str, str]:
    """The identity of each video's bytes by key; "" where there is no regular file to read.

    A local file: the sha256 of its bytes, cached in STATE_DIR/content_hashes.json by (path,
    size, mtime), so a rerun only reads new or modified files. A remote object: its identity
    from one listing per folder (`object_identity`), so the driver never reads its bytes: the
    worker that fetches it to decode it hashes it there, for the manifest's content_sha256.
    Special files (FIFOs, devices) are never opened.
    """
    cache_path = storage.join(state_dir, HASH_CACHE)
    cache = _read_hash_cache(cache_path)
    remote = [r.uri for r in refs if storage.is_remote(r.uri)]
    objects = storage.stat_many(remote) if remote else {}
    stats = {r.key: _stat_key(r.uri) for r in refs if r.uri not in objects}
    out: dict[str, str] = {}
    todo = []
    for r in refs:
        hit = cache.get(r.uri)
        if r.uri in objects:
            st = objects[r.uri]
            out[r.key] = object_identity(st) if st is not None and st.is_file else ""
        elif stats[r.key] is None:
            out[r.key] = ""
        elif hit and tuple(hit[:2]) == stats[r.key]:
            out[r.key] = hit[2]
        else:
            todo.append(r)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for r, digest in zip(todo, pool.map(_safe_sha256, [r.uri for r in todo]), strict=True):
            out[r.key] = digest
    if todo:
        log.info("hashed %d new or modified input file(s); %d from the cache", len(todo), len(refs) - len(todo))
    fresh = {r.uri: [*key, out[r.key]] for r in refs if (key := stats.get(r.key)) is not None and out[r.key]}
    if fresh != cache:
        storage.makedirs(storage.parent(cache_path))
        manifest.atomic_write_bytes(cache_path, manifest.dump_json({"files": fresh}))
    return out


def _safe_sha256(path: str) -> str:
    try:
        return sha256_file(path)
    except OSError as exc:  # unreadable now: the worker reports the file as an error row
        log.warning("%s: cannot read it for its content hash (%s)", path, exc.strerror or exc)
        return ""


def _read_hash_cache(path: Location) -> dict[str, list]:
    try:
        return dict(json.loads(storage.read_text(path)).get("files", {}))
    except FileNotFoundError:
        return {}
    except (ValueError, AttributeError, OSError) as exc:  # a damaged cache costs a rehash, nothing more
        log.warning("%s: ignoring an unreadable hash cache (%s)", path, exc)
        return {}


# --- ids --------------------------------------------------------------------------------------


def _digest(obj) -> str:
    return hashlib.sha256(manifest.dump_json(obj)).hexdigest()


def media_settings(cfg: WorkerConfig) -> dict:
    """The settings that change a video's stored frame and flow members.

    Left out: max_frames (parts are re-cut from stored members without recomputing them) and
    the limits (they decide whether a video is refused, not the bytes of one that is stored).
    """
    d = cfg.output_dict()
    d["sample"] = {k: v for k, v in d["sample"].items() if k != "max_frames"}
    d.pop("limits", None)
    return d


def media_key(content_sha256: str, cfg: WorkerConfig, tools: Mapping[str, str] | None = None) -> str:
    """Identity of a video's frame and flow members: its bytes' hash plus the media settings
    and the tools that made them (`pipeline.tools`).

    Two videos with the same media key have byte-identical frame and flow members, so a
    stored sample can be copied instead of recomputed. "" for a video with no content hash.
    """
    if not content_sha256:
        return ""
    ident = {"content": content_sha256, "schema": encode.SCHEMA_VERSION, "media": media_settings(cfg)}
    return _digest({**ident, "tools": dict(sorted(tools.items()))} if tools else ident)[:32]


def version_id(refs: list[VideoRef], hashes: dict[str, str], label_map: dict[str, int], cfg: BuildConfig) -> str:
    """The dataset version id: a hash of inputs, labels, output settings and schema version."""
    videos = sorted([r.key, r.source, r.label, r.split, hashes.get(r.key, ""), *boxes_id(r)] for r in refs)
    return _digest(
        {
            "schema": encode.SCHEMA_VERSION,
            "config": cfg.output_dict(),
            "label_map": dict(sorted(label_map.items())),
            "videos": videos,
        }
    )[:ID_CHARS]


def retry_id(base: str, retried: str, *, everything: bool = False) -> str:
    """The id of the version that computes the transient error rows (`everything`: all error
    rows) of version `retried` again (`flowshard build --retry-errors [all]`); `base` is the id
    its inputs and settings give."""
    what = {"base": base, "retry_of": retried}
    return _digest({**what, "errors": "all"} if everything else what)[:ID_CHARS]


def boxes_id(ref: VideoRef) -> list[str]:
    """A video's box digest, for ids (nothing for an unannotated video: ids stay as they were)."""
    return [boxes.digest(ref.boxes)] if ref.boxes is not None else []


# --- where versions live ----------------------------------------------------------------------


def version_dir(root: Location, version: str) -> Location:
    """The folder holding a version's dataset.json and manifests.

    Datasets written before versions existed keep their manifests at the top level.
    """
    root = storage.location(root)
    folder = storage.join(root, VERSIONS_DIR, version)
    return folder if storage.exists(storage.join(folder, manifest.DATASET_JSON)) else root


def is_committed(root: Location, version: str) -> bool:
    """True when the version's own dataset.json (its commit record) exists."""
    return storage.exists(storage.join(root, VERSIONS_DIR, version, manifest.DATASET_JSON))


def latest_version(root: Location) -> str | None:
    """The id in OUTPUT/dataset.json (the latest version), or None when there is none."""
    try:
        data = storage.read_bytes(storage.join(root, manifest.DATASET_JSON))
    except FileNotFoundError:
        return None
    return json.loads(data).get("version") or None


def committed_versions(root: Location) -> list[str]:
    """Ids of every committed version in OUTPUT/versions/, sorted."""
    folder = storage.join(root, VERSIONS_DIR)
    return sorted(
        v for v in storage.list_dirs(folder) if storage.exists(storage.join(folder, v, manifest.DATASET_JSON))
    )


def resolve_version(root: Location, spec: str | None) -> str:
    """A full version id from None (the latest), a full id, a unique prefix of >= 6 characters or
    a tag (`pipeline.build.tags`); `tags.VersionPruned` for a version that was pruned.

    "" for a dataset whose dataset.json names no version (one derived by other tools)."""
    root = storage.location(root)
    if spec is None or spec in ("", "latest"):
        return manifest.read_info(root).get("version") or ""  # raises FileNotFoundError naming root
    latest = latest_version(root)
    known = set(committed_versions(root)) | ({latest} if latest else set())
    if not known:
        manifest.read_info(root)  # no dataset here at all: FileNotFoundError naming the folder
    if spec in known:
        return spec
    named = tags.lookup(root, spec)  # a tag ("OUTPUT@paper"); names are never hex, ids always are
    if named in known:
        return named
    gone = tags.pruned_error(root, spec, min_prefix=MIN_PREFIX)
    if gone is not None and not any(v.startswith(spec) for v in known):
        raise gone
    if not set(spec) <= set("0123456789abcdef"):
        raise ValueError(
            f"{root}: no version {spec!r}, nor a tag of that name; tags: {sorted(tags.read_tags(root)) or 'none'}"
        )
    if len(spec) < MIN_PREFIX:
        raise ValueError(f"version {spec!r} is too short: give at least {MIN_PREFIX} characters of the id")
    matches = sorted(v for v in known if v.startswith(spec))
    if len(matches) > 1:
        raise ValueError(f"version prefix {spec!r} is ambiguous in {root}: {matches}")
    if not matches:
        raise ValueError(f"{root}: no version {spec!r}; versions: {sorted(known) or 'none'}")
    return matches[0]


# --- the catalog ------------------------------------------------------------------------------


def read_catalog(root: Location) -> list[dict]:
    """Catalog rows (one per committed version), in creation order."""
    path = storage.join(root, CATALOG)
    rows = manifest.read_rows(path) if storage.exists(path) else []
    return sorted(rows, key=lambda r: (r["seq"], r["version"]))


def update_catalog(root: Location, info: dict, shards: list[dict], parent: str | None) -> dict:
    """Add (or keep) the row of the version described by `info`; return its row.

    new_bytes counts the bytes of shards no earlier version referenced: what this version
    added to OUTPUT, since unchanged shards are shared, not copied.
    """
    root = storage.location(root)
    # Rows of versions whose folder was deleted by hand are dropped: the catalog follows the disk.
    rows = {r["version"]: r for r in read_catalog(root) if is_committed(root, r["version"])}
    vid = info["version"]
    if vid not in rows:
        seen = {s["name"] for v in rows for s in _shard_rows(root, v)}
        counts = info["counts"]
        rows[vid] = {
            "version": vid,
            "seq": max((r["seq"] for r in rows.values()), default=0) + 1,
            "parent": parent or "",
            "videos": counts["videos"],
            "ok": counts["ok"],
            "errors": counts["errors"],
            "shards": counts["shards"],
            "bytes": counts["bytes"],
            "new_bytes": sum(s["bytes"] for s in shards if s["name"] not in seen),
            "frames": counts["frames"],
            "flow_fields": counts["flow_fields"],
            "config_hash": _digest(info["config"])[:16],
            "schema_version": info["schema_version"],
        }
    ordered = sorted(rows.values(), key=lambda r: (r["seq"], r["version"]))
    manifest.write_parquet(storage.join(root, CATALOG), ordered, CATALOG_SCHEMA)
    return rows[vid]


def _shard_rows(root: Location, vid: str) -> list[dict]:
    path = storage.join(root, VERSIONS_DIR, vid, manifest.SHARDS)
    return manifest.read_rows(path) if storage.exists(path) else []


def created_at(root: Location, vid: str) -> str:
    """When a version was committed (UTC): its dataset.json's time, kept out of any hashed file
    so that two builds of the same inputs stay byte-identical."""
    st = storage.stat(storage.join(root, VERSIONS_DIR, vid, manifest.DATASET_JSON))
    if st is None:
        return ""
    return datetime.fromtimestamp(st.mtime, UTC).strftime("%Y-%m-%d %H:%M:%S")


def list_versions(root: Location) -> list[dict]:
    """Catalog rows with `created`, `latest` and `names` (its tags) added (what `flowshard versions` prints)."""
    latest = latest_version(root)
    names = tags.names_by_version(root)
    return [
        {
            **r,
            "created": created_at(root, r["version"]),
            "latest": r["version"] == latest,
            "names": names.get(r["version"], []),
        }
        for r in read_catalog(root)
    ]


# --- diffs ------------------------------------------------------------------------------------


def diff_versions(root: Location, a: str, b: str | None) -> dict:
    """What changed from version `a` to version `b`: videos added, removed, changed in content,
    relabelled, moved to another split or changed in status, and the settings that differ."""
    root = storage.location(root)
    a, b = resolve_version(root, a), resolve_version(root, b)
    va, vb = (_video_rows(root, v) for v in (a, b))
    common = sorted(set(va) & set(vb))

    def changed(field: str) -> list[dict]:
        return [
            {"id": k, "from": va[k][field], "to": vb[k][field], "path": vb[k]["path"]}
            for k in common
            if va[k].get(field) != vb[k].get(field)
        ]

    content = [
        {"id": k, "path": vb[k]["path"]} for k in common if va[k].get("content_sha256") != vb[k].get("content_sha256")
    ]
    added, removed, moved = _added_removed_moved(va, vb)
    ia, ib = (manifest.read_info(version_dir(root, v)) for v in (a, b))
    return {
        "from": a,
        "to": b,
        "added": added,
        "removed": removed,
        "moved": moved,
        "changed": content,
        "relabelled": changed("label"),
        "split_changed": changed("split"),
        "status_changed": changed("status"),
        "classes": _class_diff(ia["label_map"], ib["label_map"]),
        "settings": _dict_diff(ia.get("config", {}), ib.get("config", {})),
    }


def _added_removed_moved(va: dict[str, dict], vb: dict[str, dict]) -> tuple[list, list, list]:
    """Videos only in b, only in a, and the pairs that are one file moved or renamed (same bytes)."""
    gone = {va[k]["content_sha256"]: k for k in sorted(set(va) - set(vb)) if va[k].get("content_sha256")}
    moved, added = [], []
    for k in sorted(set(vb) - set(va)):
        old = gone.pop(vb[k].get("content_sha256") or "", None)
        if old is not None:
            moved.append({"from": old, "to": k, "from_path": va[old]["path"], "path": vb[k]["path"]})
        else:
            added.append({"id": k, "path": vb[k]["path"], "label": vb[k]["label"]})
    moved_from = {m["from"] for m in moved}
    removed = [
        {"id": k, "path": va[k]["path"], "label": va[k]["label"]}
        for k in sorted(set(va) - set(vb))
        if k not in moved_from
    ]
    return added, removed, moved


def _class_diff(a: dict[str, int], b: dict[str, int]) -> dict:
    """Classes added and removed, and those whose label id changed (labels are numbered in order)."""
    return {
        "added": sorted(set(b) - set(a)),
        "removed": sorted(set(a) - set(b)),
        "renumbered": [{"label": k, "from": a[k], "to": b[k]} for k in sorted(set(a) & set(b)) if a[k] != b[k]],
    }


def _video_rows(root: Location, vid: str) -> dict[str, dict]:
    return {r["id"]: r for r in manifest.read_rows(storage.join(version_dir(root, vid), manifest.MANIFEST))}


def _dict_diff(a: dict, b: dict, prefix: str = "") -> list[dict]:
    """Leaf settings that differ, as {"setting": "flow.bound", "from": 20.0, "to": 15.0}."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y, name = a.get(k), b.get(k), f"{prefix}{k}"
        if isinstance(x, dict) and isinstance(y, dict):
            out.extend(_dict_diff(x, y, f"{name}."))
        elif x != y:
            out.append({"setting": name, "from": x, "to": y})
    return out


def fetched_sha256(uri: str) -> str:
    """sha256 of a remote input's bytes, read from the local copy its decoder uses; "" for a
    local file (the driver hashes those) or when no copy could be made (the video fails anyway)."""
    if not storage.is_remote(uri):
        return ""
    try:
        return sha256_file(storage.local_copy(uri))
    except (OSError, ValueError):
        return ""
