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


def test_rolling_streams_each_sample_into_the_open_tar(tmp_path):
    """The writer holds one sample: by the time the next is asked for, the previous one is on disk."""
    seen = []

    def samples():
        for i, sample in enumerate(_samples(7, size=2000)):
            temporaries = sorted(tmp_path.glob(".*.tmp-*"))
            seen.append(sum(p.stat().st_size for p in temporaries))
            if i % 3:  # the open shard (3 samples each) already holds the samples before this one
                assert seen[-1] >= (i % 3) * shard.sample_bytes(sample), (i, seen)
            yield sample

    recs = shard.write_rolling(samples(), tmp_path, "s", max_bytes=1 << 30, max_samples=3)
    assert [r.samples for r in recs] == [3, 3, 1] and not list(tmp_path.glob(".*.tmp-*"))
    whole = shard.write_shard(_samples(3, size=2000), tmp_path / "whole.tar")
    assert (tmp_path / "s.tar").read_bytes() == (tmp_path / "whole.tar").read_bytes() and whole.sha256 == recs[0].sha256


def test_a_failure_mid_shard_removes_its_temporary_tar(tmp_path):
    def broken():
        yield from _samples(4)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        shard.write_rolling(broken(), tmp_path, "s", max_bytes=1 << 30, max_samples=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tar"]  # the full first shard, no temporary
