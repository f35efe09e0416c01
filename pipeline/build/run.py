"""Build a dataset version: discover inputs, hash them, plan shards, run the work, commit.

This is the composition of the pipeline's stages; where the work runs is the executor's
business (`LocalExecutor` here, in this process; `pipeline.cluster.ray_runner.RayExecutor` on Ray).

Versions and incremental builds (see `pipeline.build.versions`): the version id is known before
any work, from the inputs' content hashes and the settings. The shard plan is kept stable
against the latest version: its units keep their videos (minus removed ones), new videos
go into new units. A unit's tar name carries a hash of everything its bytes depend on, so
an unchanged unit keeps its tar (shared by both versions, not rewritten) and a changed one
gets a new tar beside the old. Videos whose frame and flow members are already stored are
copied from the old shards (`pipeline.build.reuse`), not recomputed.

Resume: the unit of commit is one planned shard. Each finished unit leaves a record in
OUTPUT/.flowshard/units/<stem>.json; a rerun of the same command plans the same units
(same inputs, same base version) and skips those whose record and tars are intact, so a
killed build finishes with the same bytes an uninterrupted one would have written.

OUTPUT may be a local folder or a bucket prefix (s3://...): every file goes through
`pipeline.storage`. On object storage a shard's key appears only once its upload completes,
the unit record is written after its shards and dataset.json last, exactly as on disk; the
build lock is an object refreshed while the build runs (see `storage.lock`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Mapping, Protocol

from pipeline import boxes, encode, failures, inputs, shard, storage, tools
from pipeline.build import manifest
from pipeline.build import reuse
from pipeline.cluster import shared_paths
from pipeline.build import versions as version
from pipeline.build.manifest import SHARD_DIR
from pipeline.records import VideoRef, VideoResult
from pipeline.storage import Location
from pipeline.flow.core import make_estimator
# BuildConfig and ShardConfig are the build's public settings: importable from here too.
from pipeline.build.units import STATE_DIR, BuildConfig, ShardConfig, Unit, write_unit  # noqa: F401
from pipeline.worker import process_video

log = logging.getLogger(__name__)

LOCK_FILE = "lock"


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


# --- planning ---------------------------------------------------------------------------------

BasePlan = list[tuple[str, str, list[str]]]  # (unit name, split, video keys in order)


def plan_units(refs: list[VideoRef], cfg: ShardConfig, base: BasePlan | None = None) -> list[Unit]:
    """Assign videos to shards, stable against a base plan (the latest version's).

    Base units keep their videos in their order, less the removed ones and those that moved
    to another split; the other videos are new: per split, a seeded shuffle of their sorted
    keys (mixing classes in a shard), cut every max_samples into units numbered after the
    base's. Without a base this is a fresh plan, independent of the order inputs were listed in.
    """
    by_key = {r.key: r for r in refs}
    units: list[Unit] = []
    placed: set[str] = set()
    for name, split, keys in sorted(base or []):
        kept = tuple(by_key[k] for k in keys if k in by_key and by_key[k].split == split and k not in placed)
        placed.update(r.key for r in kept)
        if kept:
            units.append(Unit(name=name, split=split, refs=kept))
    fresh = [r for r in refs if r.key not in placed]
    for split in sorted({r.split for r in fresh}):
        group = sorted((r for r in fresh if r.split == split), key=lambda r: r.key)
        random.Random(f"{cfg.seed}:{split}").shuffle(group)
        first = 1 + max((_unit_number(n) for n, s, _ in base or [] if s == split), default=-1)
        for n, lo in enumerate(range(0, len(group), cfg.max_samples)):
            units.append(Unit(name=f"{split}-{first + n:05d}", split=split,
                              refs=tuple(group[lo:lo + cfg.max_samples])))
    return sorted(units, key=lambda u: u.name)


def _unit_number(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


@dataclass(frozen=True)
class Retry:
    """`--retry-errors`: recompute the error rows `keys` of version `of`, sharing the rest."""

    of: str
    keys: frozenset[str]


def identify(units: list[Unit], hashes: Mapping[str, str], cfg: BuildConfig, retry: Retry | None = None) -> list[Unit]:
    """Units with their media keys and stems (name + a hash of what their tars depend on).

    A unit holding videos to retry gets a stem of its own, so it is written anew (its other
    videos copied from the stored shards); every other unit keeps its stem and its tars.
    """
    out = []
    for u in units:
        # A remote object's content sha256 is only known once a worker has read it: "" here.
        media = {r.key: (ident if version.is_sha256(ident) else "", version.media_key(ident, cfg.worker, cfg.tools))
                 for r in u.refs for ident in [hashes.get(r.key, "")]}
        refs = [[r.key, r.source, r.label, r.label_id, r.split, media[r.key][1]] + version.boxes_id(r)
                for r in u.refs]
        what = {"unit": u.name, "schema": encode.SCHEMA_VERSION, "config": cfg.output_dict(), "refs": refs}
        if retry is not None and any(r.key in retry.keys for r in u.refs):
            what["retry_of"] = retry.of
        ident = hashlib.sha256(manifest.dump_json(what)).hexdigest()
        out.append(replace(u, media=media, stem=f"{u.name}-{ident[:10]}"))
    return out


def attach_stored(unit: Unit, index: Mapping[str, reuse.StoredVideo]) -> Unit:
    """The unit with every video whose media key is stored marked for copying."""
    stored = {r.key: index[unit.media[r.key][1]] for r in unit.refs if unit.media[r.key][1] in index}
    return replace(unit, stored=stored)


def base_plan(output: Location, vid: str | None, cfg: BuildConfig) -> BasePlan | None:
    """The shard plan of committed version `vid`, if its shard settings match `cfg`'s."""
    if not vid or not version.is_committed(output, vid):
        return None
    folder = storage.join(output, version.VERSIONS_DIR, vid)
    if manifest.read_info(folder).get("config", {}).get("shard") != cfg.output_dict()["shard"]:
        return None  # another shard layout: a fresh plan (stored samples are still copied)
    return [(r["name"], r["split"], list(r["keys"])) for r in manifest.read_rows(storage.join(folder, version.UNITS))]


# --- resume ----------------------------------------------------------------------------------

def unit_record_path(output: Location, unit: Unit) -> Location:
    return storage.join(output, STATE_DIR, "units", f"{unit.stem}.json")


def load_finished(output: Location, unit: Unit) -> dict | None:
    """The unit's record if a unit with this stem finished and its tars are intact: of their
    recorded size and sha256 (a tar altered in place, same size, is written again)."""
    try:
        rec = json.loads(storage.read_bytes(unit_record_path(output, unit)))
    except (FileNotFoundError, ValueError):  # never finished, or a record from another layout
        return None
    if rec.get("stem") != unit.stem:
        return None
    for s in rec["shards"]:
        path = storage.join(output, SHARD_DIR, s["name"])
        if storage.size(path) != s["bytes"] or _sha256(path) != s["sha256"]:
            log.warning("%s: not the tar unit %s recorded; writing the unit again", path, unit.stem)
            return None
    return rec


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


def share_identical(output: Location, record: dict, known: Mapping[tuple[str, int], str]) -> dict:
    """The unit record with each new tar that is byte for byte a stored one replaced by it.

    A new tool (another ffmpeg, say) gives a new version id and new tar names, though its
    bytes are often the same: then the version points at the tar already stored and the copy
    is removed, so versions share what is identical. Stored tars are never rewritten.
    """
    renamed = {}
    for s in record["shards"]:
        twin = known.get((s["sha256"], s["bytes"]))
        if twin and twin != s["name"] and storage.size(storage.join(output, SHARD_DIR, twin)) == s["bytes"]:
            storage.remove(storage.join(output, SHARD_DIR, s["name"]))
            renamed[s["name"]] = twin
    if not renamed:
        return record
    log.info("unit %s: %d tar(s) identical to stored ones, shared", record["stem"], len(renamed))
    shards = [{**s, "name": renamed.get(s["name"], s["name"])} for s in record["shards"]]
    videos = [{**v, "shard": ",".join(renamed.get(n, n) for n in v["shard"].split(",")) if v["shard"] else ""}
              for v in record["videos"]]
    return {**record, "shards": shards, "videos": videos}


def save_record(output: Location, unit: Unit, record: dict) -> None:
    path = unit_record_path(output, unit)
    storage.makedirs(storage.parent(path))
    manifest.atomic_write_bytes(path, manifest.dump_json(record))


# --- executors ------------------------------------------------------------------------------

class Executor(Protocol):
    """Runs units and calls `done(unit, record)` as each finishes (in any order)."""

    def prepare(self, input_path: str, refs: list[VideoRef], output: Location, cfg: BuildConfig) -> None:
        """Before any work: refuse (RuntimeError) a build the machines it runs on cannot do right."""

    def run(self, units: list[Unit], cfg: BuildConfig, output: str, done: Callable[[Unit, dict], None],
            progress: "Progress") -> None: ...


class LocalExecutor:
    """Runs every unit in this process, one video at a time (debugging, tests, tiny inputs)."""

    def prepare(self, input_path, refs, output, cfg) -> None:
        """Nothing to check: this process reads the inputs and writes the output itself."""

    def run(self, units, cfg, output, done, progress) -> None:
        estimators = []  # built on first use: a build that only copies stored samples needs none

        def results(unit: Unit):
            for ref in unit.compute_refs:
                estimators[:] = estimators or [make_estimator(cfg.worker.flow)]
                res = _process_with_retries(ref, cfg, estimators[0])
                progress.video_done(res)
                yield res

        for unit in units:
            done(unit, write_unit(unit, results(unit), output, cfg))


def _process_with_retries(ref: VideoRef, cfg: BuildConfig, estimator) -> VideoResult:
    """`process_video`, tried again (up to failures.MAX_ATTEMPTS) while it fails transiently."""
    for attempt in range(1, failures.MAX_ATTEMPTS + 1):
        res = process_video(ref, cfg.worker, estimator)
        if res.status == "ok" or res.error_kind != failures.TRANSIENT or attempt == failures.MAX_ATTEMPTS:
            break
        log.warning("%s; transient, trying again (%d of %d)", res.error, attempt + 1, failures.MAX_ATTEMPTS)
    content = version.fetched_sha256(ref.uri) if res.status == "ok" else ""
    return replace(res, stats={**res.stats, "content_sha256": content}) if content else res


class Progress:
    """Progress bar with videos/s, frame pairs/s and ETA (tqdm), also logged at the end."""

    def __init__(self, total_videos: int, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total_videos, unit="video", disable=not enabled, dynamic_ncols=True)
        self.t0 = time.perf_counter()
        self.pairs = 0
        self.errors = 0

    def video_done(self, res: VideoResult) -> None:
        self.pairs += res.flow_fields
        self.errors += res.status != "ok"
        elapsed = max(1e-9, time.perf_counter() - self.t0)
        self.bar.set_postfix(pairs_s=f"{self.pairs / elapsed:.1f}", errors=self.errors, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


EXECUTORS = ("ray", "local")  # make_executor's kinds


def make_executor(kind: str, *, address: str | None = None, num_cpus: int | None = None, **ray_kwargs) -> Executor:
    """Explicit factory: "local" runs in this process, "ray" on local or remote Ray."""
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        from pipeline.cluster.ray_runner import RayExecutor

        return RayExecutor(address=address, num_cpus=num_cpus, **ray_kwargs)
    raise ValueError(f"unknown executor {kind!r}; choose one of {EXECUTORS}")


# --- the build ------------------------------------------------------------------------------

def build_dataset(input_path: str, output: str, cfg: BuildConfig, *, executor: Executor | None = None,
                  progress: bool = True, retry_errors: bool = False) -> BuildSummary:
    """Build (or resume) the version of INPUT under `cfg` in OUTPUT and make it the latest.

    retry_errors: compute the error rows of the version these inputs and settings already
    have again, into a new version that shares everything else (see `target_version`).
    """
    t0 = time.perf_counter()
    refs, label_map = inputs.discover(input_path, split=cfg.split)
    if not refs:
        raise ValueError(f"{input_path}: no videos found")
    refs = boxes.attach(refs, cfg.boxes)
    out = storage.location(output)
    _prepare_output(out)
    cfg = cfg if cfg.tools else replace(cfg, tools=tools.fingerprint(cfg.worker))
    executor = executor or LocalExecutor()
    with _build_lock(out) as held:
        _remove_temporaries(out)
        executor.prepare(input_path, refs, out, cfg)  # e.g. every node of a cluster sees INPUT and OUTPUT
        hashes = version.content_hashes(refs, storage.join(out, STATE_DIR))
        parent = version.latest_version(out)
        vid, retry = target_version(out, version.version_id(refs, hashes, label_map, cfg), parent, refs,
                                    retry_errors)
        if version.is_committed(out, vid) and _shards_intact(out, vid):
            held.check()
            summary = _republish(out, vid, parent)
        else:
            summary = _build(out, refs, hashes, vid, parent, cfg, label_map, input_path,
                             executor, progress, held, retry)
    summary.parent = parent or ""
    summary.seconds = time.perf_counter() - t0
    return summary


def target_version(out: Location, base: str, latest: str | None, refs: list[VideoRef],
                   retry_errors: bool) -> tuple[str, Retry | None]:
    """The version to build or republish, and what to retry.

    `base` is the id the inputs, settings and tools give. The latest version stands for it
    when it is a retry of it (its error rows computed again): rebuilding the same inputs
    keeps that better version. With retry_errors, the error rows of that version are
    computed again into a new version, whose id is derived from `base` and the version it
    retries (deterministic: the same retry of the same version gives the same id).
    """
    current = base
    if latest and latest != base and version.is_committed(out, latest) and _shards_intact(out, latest):
        if manifest.read_info(storage.join(out, version.VERSIONS_DIR, latest)).get("base_version") == base:
            current = latest
    if not retry_errors:
        return current, None
    if not version.is_committed(out, current):
        log.info("no version of these inputs and settings is built yet: building it (nothing to retry)")
        return base, None
    keys = {r.key for r in refs}
    rows = manifest.read_rows(storage.join(out, version.VERSIONS_DIR, current, manifest.MANIFEST))
    errors = frozenset(r["id"] for r in rows if r["status"] != "ok" and r["id"] in keys)
    if not errors:
        log.info("version %s has no error rows to retry", current)
        return current, None
    log.info("retrying %d error row(s) of version %s", len(errors), current)
    return version.retry_id(base, current), Retry(of=current, keys=errors)


def _build(out: Location, refs: list[VideoRef], hashes: dict[str, str], vid: str, parent: str | None,
           cfg: BuildConfig, label_map: dict[str, int], input_path: str, executor: Executor,
           progress: bool, held: storage.Lock, retry: Retry | None = None) -> BuildSummary:
    # A damaged committed version is rebuilt on its own plan (same tar names), a retry on the
    # plan of the version it retries, anything else on the latest version's plan.
    planned_on = retry.of if retry else vid if version.is_committed(out, vid) else parent
    units = identify(plan_units(refs, cfg.shard, base_plan(out, planned_on, cfg)), hashes, cfg, retry)
    records: dict[str, dict] = {}
    todo = []
    for unit in units:
        rec = load_finished(out, unit)
        if rec is None:
            todo.append(unit)
        else:
            records[unit.stem] = rec
    if todo:
        index = reuse.stored_videos(out, version.committed_versions(out))
        todo = [attach_stored(u, index) for u in todo]
    computing = sum(len(u.compute_refs) for u in todo)
    log.info("version %s: %d videos in %d shard unit(s); %d unit(s) already written; %d video(s) to "
             "compute, %d to copy from stored shards", vid, len(refs), len(units), len(records), computing,
             sum(len(u.stored) for u in todo))
    bar = Progress(computing, enabled=progress)
    known = stored_tars(out, version.committed_versions(out)) if todo else {}

    def done(unit: Unit, record: dict) -> None:
        record = share_identical(out, record, known)
        save_record(out, unit, record)
        records[unit.stem] = record

    # Copying stored samples needs no decoder or flow workers: no cluster is started for it.
    runner = executor if computing else LocalExecutor()
    try:
        runner.run(todo, cfg, str(out), done, bar)
    finally:
        bar.close()
    held.check()  # object storage: refuse to commit if another build took the lock over meanwhile
    summary = finish_build(out, units, records, cfg, label_map, input_path, vid, parent, retry)
    summary.units_skipped = len(units) - len(todo)
    summary.computed = sum(records[u.stem].get("computed", 0) for u in todo if u.stem in records)
    summary.reused = sum(records[u.stem].get("reused", 0) for u in todo if u.stem in records)
    return summary


def _prepare_output(out: Location) -> None:
    try:
        storage.makedirs(storage.join(out, SHARD_DIR))
        storage.makedirs(storage.join(out, STATE_DIR))
    except OSError as exc:
        raise manifest.os_error(exc, f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc


@contextlib.contextmanager
def _build_lock(out: Location) -> Iterator[storage.Lock]:
    """Hold OUTPUT's build lock: one build per folder at a time.

    Locally the kernel releases it when the holder dies, so a killed build never leaves a
    stale lock behind. On object storage it is an object that a killed build leaves behind:
    the next build takes it over once its holder is a dead process on this machine or has not
    refreshed it for `storage.LOCK_TTL_S` seconds (see `storage.lock`).
    """
    path = storage.join(out, STATE_DIR, LOCK_FILE)
    try:
        with storage.lock(path) as held:
            yield held
    except storage.LockHeld as exc:
        raise RuntimeError(f"{out}: another build is writing to this folder ({exc})") from exc
    except OSError as exc:
        raise manifest.os_error(exc, f"{path}: cannot open the build lock ({exc.strerror or exc})") from exc


def _remove_temporaries(out: Location) -> None:
    """Temporary files of a killed writer: never visible as shards or manifests, safe to remove
    (under the build lock, no other writer of this folder is alive). On object storage there
    are none: objects are written whole, shards assembled in local temporary files."""
    if storage.is_remote(out):
        return
    folders = [out, out / SHARD_DIR, out / STATE_DIR, out / STATE_DIR / "units"]
    folders += [p for p in (out / version.VERSIONS_DIR).glob("*") if p.is_dir()]
    for folder in folders:
        for stale in folder.glob(".*.tmp-*"):
            stale.unlink(missing_ok=True)
    for probe in (out / STATE_DIR).glob(f"{shared_paths.PROBE_PREFIX}*"):  # a killed build's cluster check
        probe.unlink(missing_ok=True)


def _shards_intact(out: Location, vid: str) -> bool:
    rows = manifest.read_rows(storage.join(out, version.VERSIONS_DIR, vid, manifest.SHARDS))
    return all(storage.size(storage.join(out, SHARD_DIR, r["name"])) == r["bytes"] for r in rows)


def _republish(out: Location, vid: str, parent: str | None) -> BuildSummary:
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
    return BuildSummary(output=str(out), version=vid, videos=c["videos"], ok=c["ok"], errors=c["errors"],
                        frames=c["frames"], flow_fields=c["flow_fields"], shards=c["shards"], bytes=c["bytes"],
                        units_skipped=len(manifest.read_rows(storage.join(folder, version.UNITS))),
                        failures=failures)


def finish_build(out: Location, units: list[Unit], records: dict[str, dict], cfg: BuildConfig,
                 label_map: dict[str, int], input_path: str, vid: str, parent: str | None,
                 retry: Retry | None = None) -> BuildSummary:
    """Commit the version: its folder (manifests, plan, dataset.json last), the catalog row,
    then the top-level copies (dataset.json, the latest-version pointer, last)."""
    missing = [u.stem for u in units if u.stem not in records]
    if missing:
        raise RuntimeError(f"{out}: {len(missing)} shard unit(s) did not finish ({missing[:5]}); rerun to resume")
    videos = [v for u in units for v in records[u.stem]["videos"]]
    shards = [s for u in units for s in records[u.stem]["shards"]]
    failures: dict[str, int] = {}
    for v in videos:
        if v["status"] != "ok":
            failures[v["error"]] = failures.get(v["error"], 0) + 1
    counts = {"videos": len(videos), "ok": sum(v["status"] == "ok" for v in videos), "errors": sum(failures.values()),
              "frames": sum(v["frames"] for v in videos), "flow_fields": sum(v["flow_fields"] for v in videos),
              "shards": len(shards), "bytes": sum(s["bytes"] for s in shards),
              "splits": {sp: sum(v["split"] == sp and v["status"] == "ok" for v in videos)
                         for sp in sorted({v["split"] for v in videos})}}
    info = {"format": "flowshard", "kind": "videos", "schema_version": encode.schema_version(cfg.worker.warp is not None),
            "version": vid,
            "code_version": _code_version(), "config": cfg.output_dict(), "label_map": label_map,
            "num_classes": len(label_map), "counts": counts, "input": str(input_path), "split": cfg.split,
            **boxes.dataset_info((r for u in units for r in u.refs), cfg.boxes)}
    if retry is not None:  # what it retried, and the id the same inputs give without retries
        info.update(retry_of=retry.of, base_version=manifest.read_info(
            storage.join(out, version.VERSIONS_DIR, retry.of)).get("base_version", retry.of))
    folder = storage.join(out, version.VERSIONS_DIR, vid)
    try:
        storage.makedirs(folder)
    except OSError as exc:
        raise manifest.os_error(exc, f"{folder}: cannot create the version folder ({exc.strerror or exc})") from exc
    unit_rows = [{"name": u.name, "stem": u.stem, "split": u.split, "keys": [r.key for r in u.refs]} for u in units]
    manifest.write_parquet(storage.join(folder, version.UNITS), unit_rows, version.UNIT_SCHEMA)
    manifest.write_manifest(folder, videos, shards, info)
    version.update_catalog(out, info, shards, parent)
    manifest.publish_latest(out, folder)
    return BuildSummary(output=str(out), version=vid, videos=len(videos), ok=counts["ok"],
                        errors=counts["errors"], frames=counts["frames"], flow_fields=counts["flow_fields"],
                        shards=len(shards), bytes=counts["bytes"], failures=failures)


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version as package_version

    try:
        return package_version("flowshard")
    except PackageNotFoundError:
        return "unknown"
