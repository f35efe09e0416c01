"""`flowshard verify`: check a dataset against its manifests, shard by shard and sample by sample."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import encode, shard, storage
from pipeline.build import manifest
from pipeline.build import versions as version
from pipeline.dataset import Dataset, open_dataset
from pipeline.encode import SchemaError

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """What `verify` found: problems (each naming the shard or video) and what it checked."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shards: int = 0
    samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: str | Path, *, decode: bool = True) -> VerifyReport:
    """Check a version ("OUTPUT" for the latest, or "OUTPUT@VERSION"): every shard's size,
    sha256 and sample count, and every sample's schema and decodability (`decode=False`
    checks hashes and metadata only)."""
    report = VerifyReport()
    try:
        ds = open_dataset(path)
    except (FileNotFoundError, SchemaError, ValueError) as exc:
        report.problems.append(str(exc))
        return report
    expected = {v.video_id: v for v in ds.videos()}
    seen: dict[str, list[dict]] = {}
    for entry in ds.shards():
        report.shards += 1
        if _check_file(entry, report):
            _check_samples(entry, decode, report, seen)
    _check_videos(expected, seen, report)
    _check_strays(ds, report)
    return report


def _check_file(entry, report: VerifyReport) -> bool:
    size = storage.size(entry.path)
    if size is None:
        report.problems.append(f"{entry.name}: shard is missing")
        return False
    if size != entry.bytes:
        report.problems.append(f"{entry.name}: {size} bytes, the manifest says {entry.bytes} (truncated or altered)")
        return False
    if shard.sha256_file(entry.path) != entry.sha256:
        report.problems.append(f"{entry.name}: sha256 does not match the manifest (altered)")
        return False
    return True


def _check_samples(entry, decode: bool, report: VerifyReport, seen: dict) -> None:
    count = 0
    try:
        for smp in shard.iter_shard(entry.path):
            count += 1
            where = f"{entry.name}: sample {smp['__key__']}"
            try:
                meta = encode.load_meta(smp[encode.META], where) if encode.META in smp else None
                if meta is None:
                    raise SchemaError(f"{where}: no json member")
                if decode:
                    encode.from_sample(smp, where)
            except (SchemaError, KeyError, ValueError) as exc:
                report.problems.append(str(exc))
                continue
            seen.setdefault(meta["video_id"], []).append(
                {"part": meta["part"], "sha": shard.sample_sha256({k: v for k, v in smp.items() if k != "__shard__"})}
            )
    except shard.ShardError as exc:
        report.problems.append(str(exc))
        return
    report.samples += count
    if count != entry.samples:
        report.problems.append(f"{entry.name}: {count} samples, the manifest says {entry.samples}")


def _check_videos(expected: dict, seen: dict, report: VerifyReport) -> None:
    for vid, row in expected.items():
        parts = sorted(seen.get(vid, []), key=lambda p: p["part"])
        if len(parts) != row.parts:
            report.problems.append(f"video {vid}: {len(parts)} of {row.parts} sample(s) found in {row.shard}")
            continue
        digest = hashlib.sha256("".join(p["sha"] for p in parts).encode()).hexdigest()
        if digest != row.sha256:
            report.problems.append(f"video {vid}: content hash does not match the manifest (in {row.shard})")
    for vid in sorted(set(seen) - set(expected)):
        report.problems.append(f"video {vid}: in a shard but not in the manifest")


def _check_strays(ds: Dataset, report: VerifyReport) -> None:
    # Shards are shared between versions: a tar is a stray only if no committed version lists it.
    known = {s.name for s in ds.shards()}
    for vid in version.committed_versions(ds.root):
        known.update(
            r["name"] for r in manifest.read_rows(storage.join(version.version_dir(ds.root, vid), manifest.SHARDS))
        )
    for name in storage.list_files(storage.join(ds.root, manifest.SHARD_DIR), suffix=".tar"):
        if name not in known:
            report.warnings.append(f"{name}: a tar in shards/ that no version of this dataset lists")
