"""Build a dataset version: discover inputs, hash them, plan shards, run the work, commit.

This is the composition of the pipeline's stages; where the work runs is the executor's
business (`pipeline.build.executors.LocalExecutor`, in this process; `pipeline.cluster.executor.RayExecutor`
on Ray). Planning is `pipeline.build.plan`, resuming `pipeline.build.resume`, committing
`pipeline.build.commit`.

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

import logging
import time
from dataclasses import replace
from pathlib import Path

from pipeline import boxes, inputs, storage, tools
from pipeline.build import manifest, prune, resume, reuse
from pipeline.build import versions as version
from pipeline.build.commit import BuildSummary, finish_build, republish, shards_intact
from pipeline.build.config import STATE_DIR, BuildConfig
from pipeline.build.executors import Executor, LocalExecutor, Progress
from pipeline.build.lock import writer_lock
from pipeline.build.manifest import SHARD_DIR
from pipeline.build.plan import (
    RETRY_MODES,
    BuildContext,
    Retry,
    attach_stored,
    base_plan,
    identify,
    plan_units,
    split_retried,
)
from pipeline.build.records import UnitRecord
from pipeline.build.units import Unit
from pipeline.cluster import shared_paths
from pipeline.records import VideoRef
from pipeline.storage import Location

log = logging.getLogger(__name__)


# --- the build ------------------------------------------------------------------------------


def build_dataset(
    input_path: str,
    output: str,
    cfg: BuildConfig,
    *,
    executor: Executor | None = None,
    progress: bool = True,
    retry_errors: bool | str = False,
    lock_wait_s: float = 0.0,
) -> BuildSummary:
    """Build (or resume) the version of INPUT under `cfg` in OUTPUT and make it the latest.

    retry_errors: compute the error rows of the version these inputs and settings already
    have again, into a new version that shares everything else (see `target_version`):
    "transient" (or True) those whose failure was transient, "all" every one; False: none.
    lock_wait_s: how long to wait for another build or a prune of OUTPUT to finish (0: refuse at once).
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
    with writer_lock(out, wait_s=lock_wait_s) as held:
        _remove_temporaries(out)
        prune.finish_interrupted(out)  # a killed prune is finished before anything is reused
        executor.prepare(input_path, refs, out, cfg)  # e.g. every node of a cluster sees INPUT and OUTPUT
        hashes = version.content_hashes(refs, storage.join(out, STATE_DIR))
        parent = version.latest_version(out)
        vid, retry = target_version(out, version.version_id(refs, hashes, label_map, cfg), parent, refs, retry_errors)
        if version.is_committed(out, vid) and shards_intact(out, vid):
            held.check()
            summary = republish(out, vid, parent)
        else:
            ctx = BuildContext(
                out=out,
                input_path=input_path,
                refs=tuple(refs),
                label_map=label_map,
                hashes=hashes,
                cfg=cfg,
                vid=vid,
                parent=parent,
                retry=retry,
            )
            summary = _build(ctx, executor, progress, held)
    summary.parent = parent or ""
    summary.seconds = time.perf_counter() - t0
    return summary


def target_version(
    out: Location, base: str, latest: str | None, refs: list[VideoRef], retry_errors: bool | str
) -> tuple[str, Retry | None]:
    """The version to build or republish, and what to retry.

    `base` is the id the inputs, settings and tools give. The latest version stands for it
    when it is a retry of it (its error rows computed again): rebuilding the same inputs
    keeps that better version. With retry_errors, the error rows of that version are
    computed again into a new version, whose id is derived from `base`, the version it
    retries and the mode (deterministic: the same retry of the same version gives the same id).
    Mode "transient" retries the rows whose failure was transient (a lost worker, storage, ...),
    "all" every error row, the broken files' too (rows of manifests older than the kinds count
    as permanent).
    """
    mode = "transient" if retry_errors is True else retry_errors or ""
    if mode and mode not in RETRY_MODES:
        raise ValueError(f"retry_errors={retry_errors!r} must be one of {RETRY_MODES} (or True/False)")
    current = base
    if (
        latest
        and latest != base
        and version.is_committed(out, latest)
        and shards_intact(out, latest)
        and manifest.read_info(storage.join(out, version.VERSIONS_DIR, latest)).get("base_version") == base
    ):
        current = latest
    if not mode:
        return current, None
    if not version.is_committed(out, current):
        log.info("no version of these inputs and settings is built yet: building it (nothing to retry)")
        return base, None
    keys = {r.key for r in refs}
    rows = manifest.read_rows(storage.join(out, version.VERSIONS_DIR, current, manifest.MANIFEST))
    errors = frozenset(
        r["id"]
        for r in rows
        if r["status"] != "ok" and r["id"] in keys and (mode == "all" or r.get("error_kind") == "transient")
    )
    if not errors:
        log.info("version %s has no %serror rows to retry", current, "" if mode == "all" else "transient ")
        return current, None
    log.info("retrying %d %serror row(s) of version %s", len(errors), "" if mode == "all" else "transient ", current)
    return version.retry_id(base, current, everything=mode == "all"), Retry(of=current, keys=errors)


def _build(ctx: BuildContext, executor: Executor, progress: bool, held: storage.Lock) -> BuildSummary:
    """Plan the version's units, run those not already written, and commit the version."""
    out, cfg, vid = ctx.out, ctx.cfg, ctx.vid
    # A damaged committed version is rebuilt on its own plan (same tar names), a retry on the
    # plan of the version it retries, anything else on the latest version's plan.
    planned_on = ctx.retry.of if ctx.retry else vid if version.is_committed(out, vid) else ctx.parent
    planned = plan_units(list(ctx.refs), cfg.shard, base_plan(out, planned_on, cfg))
    whole = {u.name: u for u in identify(planned, ctx.hashes, cfg)}
    if ctx.retry is not None:  # the videos retried go to new units; the units they leave keep their tars
        kept, fresh = split_retried(planned, ctx.retry)
        planned = kept + fresh
    units = identify(planned, ctx.hashes, cfg, ctx.retry)
    records: dict[str, UnitRecord] = {}
    todo = []
    for unit in units:
        rec = resume.load_finished(out, unit)
        if rec is None and ctx.retry is not None and unit.name in whole and whole[unit.name].stem != unit.stem:
            rec = resume.load_without(out, unit, whole[unit.name], ctx.retry.keys)
        if rec is None:
            todo.append(unit)
        else:
            records[unit.stem] = rec
    if todo:
        index = reuse.stored_videos(out, version.committed_versions(out))
        todo = [attach_stored(u, index) for u in todo]
    computing = sum(len(u.compute_refs) for u in todo)
    log.info(
        "version %s: %d videos in %d shard unit(s); %d unit(s) already written; %d video(s) to "
        "compute, %d to copy from stored shards",
        vid,
        len(ctx.refs),
        len(units),
        len(records),
        computing,
        sum(len(u.stored) for u in todo),
    )
    bar = Progress(computing, enabled=progress)
    known = resume.stored_tars(out, version.committed_versions(out)) if todo else {}

    def done(unit: Unit, record: UnitRecord) -> None:
        record = resume.share_identical(out, record, known)
        resume.save_record(out, unit, record)
        records[unit.stem] = record

    # Copying stored samples needs no decoder or flow workers: no cluster is started for it.
    runner = executor if computing else LocalExecutor()
    try:
        runner.run(todo, cfg, str(out), done, bar)
    finally:
        bar.close()
    # A writer lost with its node mid-run (its unit written again by another) may have left its
    # temporary tar beside the shards; no writer of this build is left to finish one.
    _remove_temporaries(out)
    held.check()  # object storage: refuse to commit if another build took the lock over meanwhile
    summary = finish_build(ctx, units, records)
    summary.units_skipped = len(units) - len(todo)
    summary.computed = sum(records[u.stem].computed for u in todo if u.stem in records)
    summary.reused = sum(records[u.stem].reused for u in todo if u.stem in records)
    return summary


def _prepare_output(out: Location) -> None:
    try:
        storage.makedirs(storage.join(out, SHARD_DIR))
        storage.makedirs(storage.join(out, STATE_DIR))
    except OSError as exc:
        raise manifest.os_error(exc, f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc


def _remove_temporaries(out: Location) -> None:
    """Temporary files of a killed writer: never visible as shards or manifests, safe to remove
    (under the build lock, no other writer of this folder is alive). On object storage there
    are none: objects are written whole, shards assembled in local temporary files."""
    if storage.is_remote(out):
        return
    out = Path(out)  # a local folder from here on
    folders = [out, out / SHARD_DIR, out / STATE_DIR, out / STATE_DIR / "units"]
    folders += [p for p in (out / version.VERSIONS_DIR).glob("*") if p.is_dir()]
    for folder in folders:
        for stale in folder.glob(".*.tmp-*"):
            stale.unlink(missing_ok=True)
    for probe in (out / STATE_DIR).glob(f"{shared_paths.PROBE_PREFIX}*"):  # a killed build's cluster check
        probe.unlink(missing_ok=True)
