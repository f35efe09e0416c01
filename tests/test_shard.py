"""Atomic, reproducible tar shards and their boundaries."""
import tarfile

import pytest

from pipeline import shard


def _samples(n, size=100):
    return [{"__key__": f"v{i:02d}", "json": b"{}", "rgb.000000.jpg": bytes([i]) * size} for i in range(n)]


def test_same_samples_give_identical_bytes(tmp_path):
    a = shard.write_shard(_samples(3), tmp_path / "a.tar")
    b = shard.write_shard(_samples(3), tmp_path / "b.tar")
    assert a.sha256 == b.sha256 and (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_headers_are_fixed_and_members_contiguous_and_sorted(tmp_path):
    shard.write_shard(_samples(2), tmp_path / "a.tar")
    with tarfile.open(tmp_path / "a.tar") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == ["v00.json", "v00.rgb.000000.jpg", "v01.json", "v01.rgb.000000.jpg"]
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname) for i in infos} == {(shard.TAR_MTIME, 0, 0, "", "")}


def test_rolling_respects_sample_count_at_boundaries(tmp_path):
    recs = shard.write_rolling(_samples(7), tmp_path, "train-00000", max_bytes=1 << 30, max_samples=3)
    assert [r.samples for r in recs] == [3, 3, 1]
    assert [r.name for r in recs] == ["train-00000.tar", "train-00000_1.tar", "train-00000_2.tar"]
    keys = [s["__key__"] for r in recs for s in shard.iter_shard(tmp_path / r.name)]
    assert keys == [f"v{i:02d}" for i in range(7)]


def test_rolling_respects_byte_bound(tmp_path):
    recs = shard.write_rolling(_samples(5, size=3000), tmp_path, "s", max_bytes=10000, max_samples=100)
    assert all(r.samples == 2 for r in recs[:-1]) and sum(r.samples for r in recs) == 5


def test_failed_write_leaves_no_file(tmp_path):
    def broken():
        yield _samples(1)[0]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        shard.write_shard(broken(), tmp_path / "x.tar")
    assert list(tmp_path.iterdir()) == []


def test_truncated_shard_is_named(tmp_path):
    shard.write_shard(_samples(3, size=5000), tmp_path / "t.tar")
    data = (tmp_path / "t.tar").read_bytes()
    (tmp_path / "t.tar").write_bytes(data[:7000])
    with pytest.raises(shard.ShardError, match="t.tar"):
        list(shard.iter_shard(tmp_path / "t.tar"))
