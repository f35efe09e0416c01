"""Committing a version: its folder (manifests, plan, dataset.json last), the catalog row,
then the top-level copies; and making an already committed version the latest again."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from pipeline import boxes, encode, storage
from pipeline.build import manifest
from pipeline.build import versions as version
from pipeline.build.manifest import SHARD_DIR
from pipeline.build.plan import BuildContext
from pipeline.build.records import UnitRecord
from pipeline.build.units import Unit
from pipeline.storage import Location

log = logging.getLogger(__name__)


@dataclass
class BuildSummary:
    """What a build did; returned to the CLI and job entrypoints."""

    output: str
    version: str
    videos: int = 0
    ok: int = 0
    errors: int = 0
    frames: int = 0
    flow_fields: int = 0
    shards: int = 0
    bytes: int = 0
    units_skipped: int = 0
    computed: int = 0  # videos decoded with flow computed in this run
    reused: int = 0  # videos copied from stored samples in this run
    parent: str = ""  # the latest version before this build
    seconds: float = 0.0
    failures: dict = field(default_factory=dict)  # reason -> count


def shards_intact(out: Location, vid: str) -> bool:
    """True when every tar committed version `vid` names is present with its recorded size."""
    rows = manifest.read_rows(storage.join(out, version.VERSIONS_DIR, vid, manifest.SHARDS))
    return all(storage.size(storage.join(out, SHARD_DIR, r["name"])) == r["bytes"] for r in rows)


def republish(out: Location, vid: str, parent: str | None) -> BuildSummary:
    """The version is already committed and whole: make it the latest again, compute nothing."""
    folder = storage.join(out, version.VERSIONS_DIR, vid)
    info = manifest.read_info(folder)
    shards = manifest.read_rows(storage.join(folder, manifest.SHARDS))
    version.update_catalog(out, info, shards, parent)
    manifest.publish_latest(out, folder)
    log.info("version %s is already built in %s; it is the latest again", vid, out)
    failures: dict[str, int] = {}
    for v in manifest.read_rows(storage.join(folder, manifest.MANIFEST)):
        if v["status"] != "ok":
            failures[v["error"]] = failures.get(v["error"], 0) + 1
    c = info["counts"]
    return BuildSummary(
        output=str(out),
        version=vid,
        videos=c["videos"],
        ok=c["ok"],
        errors=c["errors"],
        frames=c["frames"],
        flow_fields=c["flow_fields"],
        shards=c["shards"],
        bytes=c["bytes"],
        units_skipped=len(manifest.read_rows(storage.join(folder, version.UNITS))),
        failures=failures,
    )


def finish_build(ctx: BuildContext, units: list[Unit], records: dict[str, UnitRecord]) -> BuildSummary:
    """Commit the version: its folder (manifests, plan, dataset.json last), the catalog row,
    then the top-level copies (dataset.json, the latest-version pointer, last)."""
    out, cfg, vid = ctx.out, ctx.cfg, ctx.vid
    missing = [u.stem for u in units if u.stem not in records]
    if missing:
        raise RuntimeError(f"{out}: {len(missing)} shard unit(s) did not finish ({missing[:5]}); rerun to resume")
    videos = [v for u in units for v in records[u.stem].videos]
    # The store tag is resume's business (unit records), not the version's: left out of its manifests.
    shards = [replace(s, tag="").to_json() for u in units for s in records[u.stem].shards]
    failures: dict[str, int] = {}
    for v in videos:
        if v.status != "ok":
            failures[v.error] = failures.get(v.error, 0) + 1
    counts = {
        "videos": len(videos),
        "ok": sum(v.status == "ok" for v in videos),
        "errors": sum(failures.values()),
        "frames": sum(v.frames for v in videos),
        "flow_fields": sum(v.flow_fields for v in videos),
        "shards": len(shards),
        "bytes": sum(s["bytes"] for s in shards),
        "splits": {
            sp: sum(v.split == sp and v.status == "ok" for v in videos) for sp in sorted({v.split for v in videos})
        },
    }
    label_map = dict(ctx.label_map)
    info = {
        "format": "flowshard",
        "kind": "videos",
        "schema_version": encode.schema_version(cfg.worker.warp is not None),
        "version": vid,
        "code_version": _code_version(),
        "config": cfg.output_dict(),
        "label_map": label_map,
        "num_classes": len(label_map),
        "counts": counts,
        "input": str(ctx.input_path),
        "split": cfg.split,
        **boxes.dataset_info((r for u in units for r in u.refs), cfg.boxes),
    }
    if ctx.retry is not None:  # what it retried, and the id the same inputs give without retries
        info.update(
            retry_of=ctx.retry.of,
            base_version=manifest.read_info(storage.join(out, version.VERSIONS_DIR, ctx.retry.of)).get(
                "base_version", ctx.retry.of
            ),
        )
    folder = storage.join(out, version.VERSIONS_DIR, vid)
    try:
        storage.makedirs(folder)
    except OSError as exc:
        raise manifest.os_error(exc, f"{folder}: cannot create the version folder ({exc.strerror or exc})") from exc
    unit_rows = [{"name": u.name, "stem": u.stem, "split": u.split, "keys": [r.key for r in u.refs]} for u in units]
    manifest.write_parquet(storage.join(folder, version.UNITS), unit_rows, version.UNIT_SCHEMA)
    manifest.write_manifest(folder, [v.to_json() for v in videos], shards, info)
    version.update_catalog(out, info, shards, ctx.parent)
    manifest.publish_latest(out, folder)
    return BuildSummary(
        output=str(out),
        version=vid,
        videos=len(videos),
        ok=counts["ok"],
        errors=counts["errors"],
        frames=counts["frames"],
        flow_fields=counts["flow_fields"],
        shards=len(shards),
        bytes=counts["bytes"],
        failures=failures,
    )


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("flowshard")
    except PackageNotFoundError:
        return "unknown"
