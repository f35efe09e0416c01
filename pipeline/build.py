"""Build a dataset: discover inputs, plan shards, run the work, write the manifest.

This is the composition of the pipeline's stages; where the work runs is the executor's
business (`LocalExecutor` here, in this process; `pipeline.ray_runner.RayExecutor` on Ray).
The unit of commit and resume is one planned shard: each finished unit leaves a record in
OUTPUT/.flowshard/units/, and a rerun skips the units whose record and tars are intact.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

from pipeline import encode, inputs, manifest, shard
from pipeline.manifest import SHARD_DIR
from pipeline.records import VideoRef, VideoResult
from pipeline.flow import make_estimator
from pipeline.worker import WorkerConfig, process_video

log = logging.getLogger(__name__)

STATE_DIR = ".flowshard"
DEFAULT_SHARD_BYTES = 1 << 30  # 1 GiB
DEFAULT_SHARD_SAMPLES = 1000


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    """How samples are grouped into tar shards."""

    max_bytes: int = DEFAULT_SHARD_BYTES
    max_samples: int = DEFAULT_SHARD_SAMPLES
    seed: int = 0  # seeds the shuffle that assigns videos to shards

    def __post_init__(self) -> None:
        if self.max_bytes < 1 << 16:
            raise ValueError(f"shard size must be at least 64 KiB, got {self.max_bytes}")
        if self.max_samples < 1:
            raise ValueError(f"shard sample count must be >= 1, got {self.max_samples}")


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """A whole build: per-video work plus shard layout."""

    worker: WorkerConfig = field(default_factory=WorkerConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    split: int | None = None  # official split number for UCF101/HMDB51 roots

    def output_dict(self) -> dict:
        """Settings that change the output bytes."""
        return {**self.worker.output_dict(), "shard": {"max_bytes": self.shard.max_bytes,
                "max_samples": self.shard.max_samples, "seed": self.shard.seed}}

    def config_hash(self) -> str:
        return hashlib.sha256(manifest.dump_json(self.output_dict())).hexdigest()[:16]


@dataclass(frozen=True)
class Unit:
    """One planned shard: its name stem, split and videos in write order."""

    name: str
    split: str
    refs: tuple[VideoRef, ...]

    def refs_hash(self) -> str:
        text = json.dumps([[r.key, r.source, r.label, r.label_id, r.split] for r in self.refs])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    seconds: float = 0.0
    failures: dict = field(default_factory=dict)  # reason -> count


def plan_units(refs: list[VideoRef], cfg: ShardConfig) -> list[Unit]:
    """Assign videos to shards: per split, a seeded shuffle of the sorted keys, cut every max_samples.

    The shuffle mixes classes within a shard; sorting first makes the plan independent of
    the order inputs were listed in.
    """
    units: list[Unit] = []
    for split in sorted({r.split for r in refs}):
        group = sorted((r for r in refs if r.split == split), key=lambda r: r.key)
        random.Random(f"{cfg.seed}:{split}").shuffle(group)
        for n, lo in enumerate(range(0, len(group), cfg.max_samples)):
            units.append(Unit(name=f"{split}-{n:05d}", split=split, refs=tuple(group[lo:lo + cfg.max_samples])))
    return units


def write_unit(unit: Unit, results: Iterable[VideoResult], output: str | Path, cfg: BuildConfig) -> dict:
    """Write a unit's samples (in plan order) to its tar(s) and return the unit record.

    `results` is consumed lazily, so only one video's samples are held at a time.
    """
    rows: list[VideoResult] = []

    def samples():
        for res in results:
            rows.append(_slim(res))
            yield from res.samples

    out = Path(output)
    records = shard.write_rolling(samples(), out / SHARD_DIR, unit.name,
                                  max_bytes=cfg.shard.max_bytes, max_samples=cfg.shard.max_samples)
    shard_of = {k: r.name for r in records for k in r.keys}
    return {"unit": unit.name, "split": unit.split, "config": cfg.config_hash(), "refs": unit.refs_hash(),
            "shards": [{"name": r.name, "split": unit.split, "samples": r.samples, "bytes": r.bytes,
                        "sha256": r.sha256} for r in records if r.samples],
            "videos": [_row_of(r, shard_of) for r in rows]}


def _slim(res: VideoResult) -> VideoResult:
    """Keep what the manifest row needs, not the sample bytes (already streamed to the tar)."""
    digest_samples = tuple({"__key__": s["__key__"], "__sha__": shard.sample_sha256(s),
                            "__bytes__": shard.sample_bytes(s)} for s in res.samples)
    return VideoResult(ref=res.ref, status=res.status, error=res.error, samples=digest_samples,
                       frames=res.frames, flow_fields=res.flow_fields, info=res.info, stats=res.stats)


def _row_of(res: VideoResult, shard_of: dict[str, str]) -> dict:
    s = res.samples
    digest = hashlib.sha256("".join(x["__sha__"] for x in s).encode()).hexdigest() if s else ""
    return {"id": res.ref.key, "path": res.ref.source, "label": res.ref.label, "label_id": res.ref.label_id,
            "split": res.ref.split, "status": res.status, "error": res.error, "frames": res.frames,
            "flow_fields": res.flow_fields, "parts": len(s),
            "shard": ",".join(dict.fromkeys(shard_of[x["__key__"]] for x in s)),
            "bytes": sum(x["__bytes__"] for x in s), "sha256": digest}


# --- resume ----------------------------------------------------------------------------------

def unit_record_path(output: str | Path, unit: Unit) -> Path:
    return Path(output) / STATE_DIR / "units" / f"{unit.name}.json"


def load_finished(output: str | Path, unit: Unit, cfg: BuildConfig) -> dict | None:
    """The unit's record if it finished with this config and these videos and its tars are intact."""
    path = unit_record_path(output, unit)
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
    except ValueError:
        return None
    if rec.get("config") != cfg.config_hash() or rec.get("refs") != unit.refs_hash():
        return None
    for s in rec["shards"]:
        tar = Path(output) / SHARD_DIR / s["name"]
        if not tar.exists() or tar.stat().st_size != s["bytes"]:
            return None
    return rec


def save_record(output: str | Path, unit: Unit, record: dict) -> None:
    path = unit_record_path(output, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest.atomic_write_bytes(path, manifest.dump_json(record))


# --- executors ------------------------------------------------------------------------------

class Executor(Protocol):
    """Runs units and calls `done(unit, record)` as each finishes (in any order)."""

    def run(self, units: list[Unit], cfg: BuildConfig, output: str, done: Callable[[Unit, dict], None],
            progress: "Progress") -> None: ...


class LocalExecutor:
    """Runs every unit in this process, one video at a time (debugging, tests, tiny inputs)."""

    def run(self, units, cfg, output, done, progress) -> None:
        estimator = make_estimator(cfg.worker.flow)

        def results(unit: Unit):
            for ref in unit.refs:
                res = process_video(ref, cfg.worker, estimator)
                progress.video_done(res)
                yield res

        for unit in units:
            done(unit, write_unit(unit, results(unit), output, cfg))


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

    def skip(self, n: int) -> None:
        self.bar.total -= n
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def make_executor(kind: str, *, address: str | None = None, num_cpus: int | None = None, **ray_kwargs) -> Executor:
    """Explicit factory: "local" runs in this process, "ray" on local or remote Ray."""
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        from pipeline.ray_runner import RayExecutor

        return RayExecutor(address=address, num_cpus=num_cpus, **ray_kwargs)
    raise ValueError(f"unknown executor {kind!r}; choose 'ray' or 'local'")


# --- the build ------------------------------------------------------------------------------

def build_dataset(input_path: str, output: str, cfg: BuildConfig, *, executor: Executor | None = None,
                  progress: bool = True) -> BuildSummary:
    """Build (or resume) a dataset from INPUT into OUTPUT and return what was done."""
    t0 = time.perf_counter()
    refs, label_map = inputs.discover(input_path, split=cfg.split)
    if not refs:
        raise ValueError(f"{input_path}: no videos found")
    out = Path(output)
    _prepare_output(out)
    units = plan_units(refs, cfg.shard)
    records: dict[str, dict] = {}
    todo = []
    for unit in units:
        rec = load_finished(out, unit, cfg)
        if rec is None:
            todo.append(unit)
        else:
            records[unit.name] = rec
    bar = Progress(sum(len(u.refs) for u in todo), enabled=progress)
    log.info("%d videos in %d shard unit(s); %d already finished", len(refs), len(units), len(records))

    def done(unit: Unit, record: dict) -> None:
        save_record(out, unit, record)
        records[unit.name] = record

    try:
        (executor or LocalExecutor()).run(todo, cfg, str(out), done, bar)
    finally:
        bar.close()
    summary = finish_build(out, units, records, cfg, label_map, input_path)
    summary.units_skipped = len(units) - len(todo)
    summary.seconds = time.perf_counter() - t0
    return summary


def _prepare_output(out: Path) -> None:
    try:
        (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc
    for stale in (out / SHARD_DIR).glob(".*.tmp-*"):
        # Temporary files of a killed writer: never visible as shards, safe to remove.
        stale.unlink(missing_ok=True)


def finish_build(out: Path, units: list[Unit], records: dict[str, dict], cfg: BuildConfig,
                 label_map: dict[str, int], input_path: str) -> BuildSummary:
    """Write the manifests and dataset.json (last) from the unit records."""
    missing = [u.name for u in units if u.name not in records]
    if missing:
        raise RuntimeError(f"{out}: {len(missing)} shard unit(s) did not finish ({missing[:5]}); rerun to resume")
    videos = [v for u in units for v in records[u.name]["videos"]]
    shards = [s for u in units for s in records[u.name]["shards"]]
    version = hashlib.sha256(manifest.dump_json({"config": cfg.output_dict(), "schema": encode.SCHEMA_VERSION,
                             "videos": sorted((v["id"], v["label"], v["split"], v["sha256"]) for v in videos)})
                             ).hexdigest()[:16]
    failures: dict[str, int] = {}
    for v in videos:
        if v["status"] != "ok":
            failures[v["error"]] = failures.get(v["error"], 0) + 1
    counts = {"videos": len(videos), "ok": sum(v["status"] == "ok" for v in videos), "errors": sum(failures.values()), "frames": sum(v["frames"] for v in videos),
              "flow_fields": sum(v["flow_fields"] for v in videos), "shards": len(shards),
              "bytes": sum(s["bytes"] for s in shards),
              "splits": {sp: sum(v["split"] == sp and v["status"] == "ok" for v in videos)
                         for sp in sorted({v["split"] for v in videos})}}
    info = {"format": "flowshard", "kind": "videos", "schema_version": encode.SCHEMA_VERSION, "version": version,
            "code_version": _code_version(), "config": cfg.output_dict(), "label_map": label_map,
            "num_classes": len(label_map), "counts": counts, "input": str(input_path), "split": cfg.split}
    manifest.write_manifest(out, videos, shards, info)
    return BuildSummary(output=str(out), version=version, videos=len(videos), ok=counts["ok"],
                        errors=counts["errors"], frames=counts["frames"], flow_fields=counts["flow_fields"],
                        shards=len(shards), bytes=counts["bytes"], failures=failures)


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flowshard")
    except PackageNotFoundError:
        return "unknown"
