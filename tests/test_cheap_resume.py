"""Cheap resume: a finished unit's tars are checked by size and store tag (a stat), not read;
a record without tags (an older release's) or a tar whose tag changed is hashed in full."""
import json
import os

import pytest

from pipeline.build import resume
from pipeline.build.manifest import SHARD_DIR
from pipeline.build.records import ShardRow, UnitRecord
from pipeline.build.units import Unit
from pipeline.shard import sha256_file


@pytest.fixture
def finished(tmp_path):
    """A finished unit of two tars, its record written as a build writes it."""
    (tmp_path / SHARD_DIR).mkdir()
    unit = Unit(name="train-00000", split="train", refs=(), stem="train-00000-abc")
    rows = []
    for n in range(2):
        tar = tmp_path / SHARD_DIR / f"{unit.stem}-{n}.tar"
        tar.write_bytes(os.urandom(4096))
        rows.append(ShardRow(name=tar.name, split="train", samples=1, bytes=4096, sha256=sha256_file(tar)))
    resume.save_record(tmp_path, unit, UnitRecord(unit=unit.name, stem=unit.stem, split="train",
                                                  shards=tuple(rows), videos=()))
    return tmp_path, unit


@pytest.fixture
def hashed(monkeypatch):
    """Names of the tars `load_finished` read in full."""
    calls = []
    real = resume._sha256

    def counting(path):
        calls.append(os.path.basename(str(path)))
        return real(path)

    monkeypatch.setattr(resume, "_sha256", counting)
    return calls


def test_a_finished_unit_is_checked_without_reading_its_tars(finished, hashed):
    out, unit = finished
    record = json.loads(resume.unit_record_path(out, unit).read_bytes())
    assert all(s["tag"] for s in record["shards"])
    rec = resume.load_finished(out, unit)
    assert rec is not None and hashed == []
    assert [s.tag for s in rec.shards] == [str((out / SHARD_DIR / s.name).stat().st_mtime_ns) for s in rec.shards]


def test_a_tar_rewritten_in_place_with_its_size_is_hashed_and_refused(finished, hashed):
    out, unit = finished
    tar = out / SHARD_DIR / f"{unit.stem}-1.tar"
    data = bytearray(tar.read_bytes())
    data[100] ^= 0xFF
    tar.write_bytes(bytes(data))
    os.utime(tar, ns=(tar.stat().st_atime_ns, tar.stat().st_mtime_ns + 1_000_000))  # a new tag, as any write gives
    assert resume.load_finished(out, unit) is None and hashed == [tar.name]


def test_a_touched_but_identical_tar_and_a_record_without_tags_are_hashed_and_kept(finished, hashed):
    out, unit = finished
    first = out / SHARD_DIR / f"{unit.stem}-0.tar"
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 1_000_000))
    assert resume.load_finished(out, unit) is not None and hashed == [first.name]
    path = resume.unit_record_path(out, unit)
    old = json.loads(path.read_bytes())
    for s in old["shards"]:
        del s["tag"]  # as release 0.1 wrote it
    path.write_bytes(json.dumps(old).encode())
    hashed.clear()
    assert resume.load_finished(out, unit) is not None and len(hashed) == 2


def test_a_smaller_tar_is_refused_without_a_read(finished, hashed):
    out, unit = finished
    tar = out / SHARD_DIR / f"{unit.stem}-0.tar"
    tar.write_bytes(tar.read_bytes()[:-512])
    assert resume.load_finished(out, unit) is None and hashed == []


def test_the_version_manifests_do_not_carry_the_tag():
    row = ShardRow(name="a.tar", split="train", samples=1, bytes=1, sha256="0" * 64, tag="123")
    assert "tag" in row.to_json()
    assert "tag" not in ShardRow(name="a.tar", split="train", samples=1, bytes=1, sha256="0" * 64).to_json()
