"""Bytes a resume reads per output byte: `load_finished` over a finished 1,000-video build.

A synthetic finished build (no decoding): `--units` unit records of `--videos / --units`
videos each, every unit with one tar of `--tar-mib` MiB of random bytes, written the way the
build writes them (`resume.save_record`, which records each tar's store tag). The resume
check of every unit then runs twice, side by side in one process:

- tags: as the build runs it now (a stat per tar, a full hash only when the tag differs);
- hashes: the same records without their tags, as records from before tags read (a full
  sha256 of every tar).

Bytes read are this process's `rchar` (/proc/self/io: every byte through read(), page cache
included), so the figure does not depend on what the cache holds.

    PYTHONPATH=. python bench/resume_bytes.py [--videos 1000] [--units 100] [--tar-mib 4]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from pipeline.build import resume
from pipeline.build.manifest import SHARD_DIR
from pipeline.build.records import ShardRow, UnitRecord, VideoRow
from pipeline.build.units import Unit
from pipeline.shard import sha256_file


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no rchar line")


def _row(key: str, tar: str) -> VideoRow:
    return VideoRow(id=key, path=f"{key}.mp4", label="a", label_id=0, split="train", status="ok", frames=100,
                    flow_fields=99, parts=1, shard=tar, bytes=0, sha256="0" * 64)


def make_build(out: Path, videos: int, units: int, tar_mib: int) -> list[Unit]:
    """Finished units with their tars and records, as a build leaves them."""
    (out / SHARD_DIR).mkdir(parents=True)
    per = videos // units
    planned = []
    for u in range(units):
        unit = Unit(name=f"train-{u:05d}", split="train", refs=(), stem=f"train-{u:05d}-bench")
        tar = out / SHARD_DIR / f"{unit.stem}.tar"
        tar.write_bytes(os.urandom(tar_mib << 20))
        row = ShardRow(name=tar.name, split="train", samples=per, bytes=tar.stat().st_size, sha256=sha256_file(tar))
        rec = UnitRecord(unit=unit.name, stem=unit.stem, split="train", shards=(row,),
                         videos=tuple(_row(f"v{u:05d}_{i:04d}", tar.name) for i in range(per)))
        resume.save_record(out, unit, rec)
        planned.append(unit)
    return planned


def measure(out: Path, units: list[Unit]) -> dict:
    """Seconds and bytes read by `load_finished` over every unit; all must be found intact."""
    before, t0 = _rchar(), time.perf_counter()
    found = sum(resume.load_finished(out, u) is not None for u in units)
    seconds, read = time.perf_counter() - t0, _rchar() - before
    if found != len(units):
        raise RuntimeError(f"only {found} of {len(units)} units found intact")
    return {"seconds": round(seconds, 3), "bytes_read": read}


def drop_tags(out: Path, units: list[Unit]) -> None:
    """Rewrite the records without their tags (as records from before tags)."""
    for u in units:
        path = resume.unit_record_path(out, u)
        rec = UnitRecord.from_json(json.loads(path.read_bytes()))
        rec = replace(rec, shards=tuple(replace(s, tag="") for s in rec.shards))
        path.write_bytes(json.dumps(rec.to_json()).encode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=1000)
    ap.add_argument("--units", type=int, default=100)
    ap.add_argument("--tar-mib", type=int, default=4)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ds"
        units = make_build(out, a.videos, a.units, a.tar_mib)
        output = sum(p.stat().st_size for p in (out / SHARD_DIR).iterdir())
        tags = measure(out, units)
        drop_tags(out, units)
        hashes = measure(out, units)
    result = {"videos": a.videos, "units": a.units, "output_bytes": output,
              "tags": {**tags, "read_per_output_byte": round(tags["bytes_read"] / output, 6)},
              "hashes": {**hashes, "read_per_output_byte": round(hashes["bytes_read"] / output, 6)}}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
