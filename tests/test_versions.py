"""Dataset versions: content-hash ids, the catalog, incremental rebuilds that reuse stored samples."""
import json
import os
import re
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import encode, inputs, open_dataset, shard
from pipeline.build import versions as version
from pipeline.build.config import BuildConfig, ShardConfig
from pipeline.dataset import resolve_dataset
from pipeline.shard import sha256_file
from tests.helpers import build_summary, invoke, write_list

ARGS = ("--flow", "dis", "--resize", "none", "--shard-samples", "3", "--executor", "local")


def motion_rows(motion_videos, tmp_path):
    """List rows with paths relative to tmp_path (keys "videos_<class>_<name>")."""
    (tmp_path / "videos").symlink_to(motion_videos, target_is_directory=True)
    return [{"path": f"videos/{p.parent.name}/{p.name}", "label": p.parent.name, "split": "train"}
            for p in sorted(motion_videos.glob("*/*.mp4"))]


def build(listing, out, *extra):
    """A build with this file's settings; (version id, videos computed, videos copied, output)."""
    return build_summary(listing, out, *ARGS, *extra)


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in Path(root).rglob("*")
            if p.is_file() and ".flowshard" not in p.parts}


def shard_names(out, vid):
    return {s.name for s in open_dataset(f"{out}@{vid}").shards()}


def members(out, vid, video_id):
    """A video's members by suffix (json rewritten on relabel, the rest copied)."""
    (sample,) = open_dataset(f"{out}@{vid}").raw(video_id)
    return {k: v for k, v in sample.items() if not k.startswith("__")}


def test_version_id_hashes_content_labels_and_settings_not_paths_or_mtimes(motion_videos, tmp_path):
    refs, labels = inputs.discover(str(motion_videos))
    cfg = BuildConfig()
    hashes = version.content_hashes(refs, tmp_path / "state")
    vid = version.version_id(refs, hashes, labels, cfg)
    assert re.fullmatch(r"[0-9a-f]{16}", vid)
    assert all(hashes[r.key] == sha256_file(r.uri) for r in refs)
    cached = json.loads((tmp_path / "state" / version.HASH_CACHE).read_text())["files"]
    assert len(cached) == len(refs)
    # A new mtime with the same bytes: rehashed (the cache key changed) but the same id.
    os.utime(refs[0].uri, ns=(1, 1))
    assert version.version_id(refs, version.content_hashes(refs, tmp_path / "state"), labels, cfg) == vid
    assert version.version_id(refs, hashes, labels, BuildConfig(shard=ShardConfig(seed=1))) != vid
    relabelled = [refs[0].__class__(**{**refs[0].__dict__, "label": "other"})] + refs[1:]
    assert version.version_id(relabelled, hashes, labels, cfg) != vid
    assert version.version_id(refs, {**hashes, refs[1].key: "0" * 64}, labels, cfg) != vid


def test_incremental_versions_reuse_stored_samples(motion_videos, tmp_path):
    out = tmp_path / "out"
    rows = motion_rows(motion_videos, tmp_path)
    v1, computed, copied, _ = build(write_list(tmp_path / "v1.csv", rows[:7]), out)
    assert (computed, copied) == (7, 0)

    # Add a video: only it is computed, in a new unit; the old tars are shared, byte-identical.
    v2, computed, copied, _ = build(write_list(tmp_path / "v2.csv", rows), out)
    assert (computed, copied) == (1, 0) and v2 != v1
    assert shard_names(out, v1) < shard_names(out, v2) and len(shard_names(out, v2) - shard_names(out, v1)) == 1

    # Relabel one video: no decode, no flow; its json changes, its frame and flow members are copied.
    relabelled = [dict(r, label="left") if Path(r["path"]).stem == "v_up_g00" else r for r in rows]
    v3, computed, copied, _ = build(write_list(tmp_path / "v3.csv", relabelled), out)
    assert computed == 0 and copied >= 1
    old, new = members(out, v2, "videos_up_v_up_g00"), members(out, v3, "videos_up_v_up_g00")
    assert set(old) == set(new) and all(old[k] == new[k] for k in old if k != "json")
    assert encode.load_meta(new["json"])["label"] == "left" and encode.load_meta(old["json"])["label"] == "up"
    assert len(shard_names(out, v3) - shard_names(out, v2)) == 1  # only the relabelled video's unit changed

    # A clean build of the same inputs has the same id and byte-identical samples; only the
    # packing differs (the incremental plan kept v1's units and added one for the new video).
    v3_clean, *_ = build(tmp_path / "v3.csv", tmp_path / "clean")
    assert v3_clean == v3
    assert {v.video_id: v.sha256 for v in open_dataset(out).videos()} == \
        {v.video_id: v.sha256 for v in open_dataset(tmp_path / "clean").videos()}

    # Layout settings (shard size, parts) re-pack stored members without computing anything.
    v4, computed, copied, _ = build(tmp_path / "v3.csv", out, "--shard-samples", "5", "--max-frames", "5")
    assert computed == 0 and copied == 8
    v4_clean, *_ = build(tmp_path / "v3.csv", tmp_path / "clean4", "--shard-samples", "5", "--max-frames", "5")
    assert v4_clean == v4 and all(files(out)[f"shards/{n}"] == files(tmp_path / "clean4")[f"shards/{n}"]
                                  for n in shard_names(out, v4))

    # A flow setting recomputes every video's flow.
    v5, computed, copied, _ = build(tmp_path / "v3.csv", out, "--bound", "10")
    assert (computed, copied) == (8, 0)

    # Back to an earlier version: nothing computed or written, it is the latest again.
    before = {n: (out / "shards" / n).stat().st_mtime_ns for n in shard_names(out, v2)}
    again, computed, copied, text = build(tmp_path / "v2.csv", out)
    assert again == v2 and (computed, copied) == (0, 0) and "already done" in text
    assert {n: (out / "shards" / n).stat().st_mtime_ns for n in shard_names(out, v2)} == before
    assert open_dataset(out).version == v2 and (out / "dataset.json").read_bytes() == \
        (out / "versions" / v2 / "dataset.json").read_bytes()

    catalog = pq.read_table(out / "versions.parquet").to_pylist()
    assert [r["version"] for r in catalog] == [v1, v2, v3, v4, v5]
    assert [r["parent"] for r in catalog] == ["", v1, v2, v3, v4]
    for vid in (v1, v2, v3, v4, v5):
        result = invoke("verify", f"{out}@{vid[:7]}")
        assert result.exit_code == 0, result.output
        assert "warning" not in result.output
    assert len(list((out / "shards").glob("*.tar"))) == len(set().union(*(shard_names(out, v) for v in
                                                                             (v1, v2, v3, v4, v5))))


def test_versions_and_diff_commands(motion_videos, tmp_path):
    out = tmp_path / "out"
    rows = motion_rows(motion_videos, tmp_path)
    v1, *_ = build(write_list(tmp_path / "a.csv", rows[:6]), out)
    changed = [dict(r, label="down") if Path(r["path"]).stem == "v_left_g00" else r for r in rows[1:]]
    v2, *_ = build(write_list(tmp_path / "b.csv", changed), out)

    listing = invoke("versions", str(out))
    assert listing.exit_code == 0, listing.output
    lines = listing.output.splitlines()
    assert "VERSION" in lines[0] and "CREATED" in lines[0] and "SIZE" in lines[0]
    assert lines[1].startswith(f"  {v1}") and lines[2].startswith(f"* {v2}")
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+6\s+0\s+2\s+[\d.]+ MB", lines[1])
    as_json = json.loads(invoke("versions", str(out), "--json").output)
    assert [r["version"] for r in as_json] == [v1, v2] and as_json[1]["latest"] and as_json[1]["parent"] == v1

    d = invoke("diff", str(out), v1[:6], v2)
    assert d.exit_code == 0, d.output
    assert "2 added, 1 removed, 0 moved, 0 changed, 1 relabelled" in d.output
    assert "relabelled: videos_left_v_left_g00  left -> down" in d.output
    data = json.loads(invoke("diff", str(out), v1, "--json").output)
    assert [r["id"] for r in data["removed"]] == ["videos_down_v_down_g00"]
    assert {r["id"] for r in data["added"]} == {"videos_up_v_up_g00", "videos_up_v_up_g01"}
    assert data["relabelled"] == [{"id": "videos_left_v_left_g00", "from": "left", "to": "down",
                                   "path": "videos/left/v_left_g00.mp4"}]


def test_version_specs_resolve_by_unique_prefix(motion_videos, tmp_path):
    out = tmp_path / "out"
    v1, *_ = build(motion_videos, out)
    assert resolve_dataset(out) == (out, v1)
    assert resolve_dataset(f"{out}@{v1[:6]}") == (out, v1)
    assert open_dataset(f"{out}@{v1}").version == v1
    with pytest.raises(ValueError, match="too short"):
        resolve_dataset(f"{out}@{v1[:5]}")
    with pytest.raises(ValueError, match="no version 'ffffff'"):
        resolve_dataset(f"{out}@ffffff")
    # Two committed versions sharing a prefix: the prefix is refused as ambiguous.
    for fake in (v1[:6] + "0" * 10, v1[:6] + "1" * 10):
        (out / "versions" / fake).mkdir()
        (out / "versions" / fake / "dataset.json").write_text(json.dumps({"version": fake}))
    with pytest.raises(ValueError, match="ambiguous"):
        resolve_dataset(f"{out}@{v1[:6]}")
    assert resolve_dataset(f"{out}@{v1[:8]}") == (out, v1)
    # A folder whose own name holds "@" is a path, not a version spec.
    odd = tmp_path / "data@home"
    build(motion_videos, odd)
    assert resolve_dataset(odd)[0] == odd
    result = invoke("verify", f"{out}@nothere")
    assert result.exit_code != 0 and "no version 'nothere'" in result.output


def test_a_damaged_stored_shard_is_recomputed_not_copied(motion_videos, tmp_path):
    out = tmp_path / "out"
    rows = motion_rows(motion_videos, tmp_path)
    v1, *_ = build(write_list(tmp_path / "a.csv", rows), out)
    victim = next(s for s in open_dataset(out).shards() if "videos_up_v_up_g00" in
                  {x["__key__"] for x in shard.iter_shard(s.path)})
    with tarfile.open(victim.path) as tar:
        offset = tar.getmember("videos_up_v_up_g00.rgb.000003.jpg").offset_data
    data = bytearray(Path(victim.path).read_bytes())
    data[offset + 100] ^= 0xFF  # same size: only the per-video hash check can tell
    Path(victim.path).write_bytes(bytes(data))
    relabelled = [dict(r, label="down") if Path(r["path"]).stem == "v_up_g00" else r for r in rows]
    v2, computed, copied, _ = build(write_list(tmp_path / "b.csv", relabelled), out)
    assert (computed, copied) == (1, victim.samples - 1)  # the altered video recomputed, the rest copied
    assert invoke("verify", str(out)).exit_code == 0
    ref, *_ = build(tmp_path / "b.csv", tmp_path / "clean")
    assert ref == v2 and files(out)["dataset.json"] == files(tmp_path / "clean")["dataset.json"]


def test_two_clean_builds_are_byte_identical(motion_videos, tmp_path):
    a, *_ = build(motion_videos, tmp_path / "a")
    b, *_ = build(motion_videos, tmp_path / "b")
    assert a == b and files(tmp_path / "a") == files(tmp_path / "b")


def test_clips_mode_relabel_copies_samples_and_equals_a_clean_build(motion_videos, tmp_path):
    out, clips = tmp_path / "out", ("--clips", "2", "--clip-len", "3")
    rows = motion_rows(motion_videos, tmp_path)
    build(write_list(tmp_path / "a.csv", rows), out, *clips)
    relabelled = [dict(r, label="right") if Path(r["path"]).stem == "v_left_g01" else r for r in rows]
    v2, computed, copied, _ = build(write_list(tmp_path / "b.csv", relabelled), out, *clips)
    assert computed == 0 and copied >= 1
    clean_id, *_ = build(tmp_path / "b.csv", tmp_path / "clean", *clips)
    assert clean_id == v2
    ours, clean = files(out), files(tmp_path / "clean")
    for name in ["dataset.json", "manifest.parquet", "shards.parquet"] + \
            [f"shards/{n}" for n in shard_names(out, v2)]:
        assert ours[name] == clean[name], name
    s = open_dataset(out).read("videos_left_v_left_g01")
    assert s.meta["label"] == "right" and len(s.meta["clips"]) == 2 and len(s.flow) == 6


def test_a_truncated_shard_is_named_by_verify_and_hashes_are_exposed(motion_videos, tmp_path):
    out = tmp_path / "out"
    build(motion_videos, out)
    shards = open_dataset(out).shards()
    assert all(s.sha256 == shard.sha256_file(s.path) and s.bytes == Path(s.path).stat().st_size for s in shards)
    victim = Path(shards[0].path)
    victim.write_bytes(victim.read_bytes()[:-1536])
    result = invoke("verify", str(out))
    assert result.exit_code != 0 and f"{victim.name}: " in result.output and "truncated" in result.output


def test_a_schema_bump_recomputes_and_copies_nothing_stored_by_the_older_code(motion_videos, tmp_path, monkeypatch):
    """Bytes change => the revision changes, and a bump means recomputing: no sample stored by the
    code of another SCHEMA_VERSION is copied into the new version, and the old one stays intact."""
    from pipeline.build import reuse
    from pipeline.build.run import build_dataset
    from pipeline.decode import DecodeConfig
    from pipeline.flow.config import FlowConfig
    from pipeline.stages.config import WorkerConfig
    from pipeline.verify import verify as verify_dataset

    out = tmp_path / "ds"
    cfg = BuildConfig(worker=WorkerConfig(decode=DecodeConfig(resize="none"), flow=FlowConfig(algorithm="dis")),
                      shard=ShardConfig(max_samples=3))
    first = build_dataset(str(motion_videos), str(out), cfg, progress=False)
    old_tars = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    monkeypatch.setattr(encode, "SCHEMA_VERSION", 4)
    monkeypatch.setattr(encode, "KNOWN_SCHEMAS", (*encode.KNOWN_SCHEMAS, 4))
    assert reuse.stored_videos(out, version.committed_versions(out))  # the older samples are there to be found
    second = build_dataset(str(motion_videos), str(out), cfg, progress=False)
    assert second.version != first.version and (second.computed, second.reused) == (8, 0)
    new_tars = {p.name for p in (out / "shards").glob("*.tar")} - set(old_tars)
    assert len(new_tars) == len(old_tars)  # every tar written anew, beside the old ones
    assert all((out / "shards" / n).read_bytes() == b for n, b in old_tars.items())
    assert verify_dataset(f"{out}@{first.version}").ok and verify_dataset(str(out)).ok
