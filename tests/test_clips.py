"""Clip shards derived from a real build: bytes copied unchanged, splits apart, reproducible."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pipeline import encode, shard
from pipeline.build import manifest
from pipeline.synthetic import motion
from pipeline.clips import CLIP_SCHEMA, ClipsConfig, derive_clips


def flowshard(*args: str) -> str:
    """Run a flowshard command; fail on a non-zero exit."""
    from jobs.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def motion_list(root, per_class: int = 3, test_from: int = 2, frames: int = 20):
    """Motion videos and a CSV list: textures >= test_from are test videos, the rest train."""
    videos = motion.make_motion_dataset(root / "videos", per_class=per_class, num_frames=frames, size=(64, 48))
    return motion.write_split_list(root, videos, test_from)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips_build")
    out = root / "ds"
    flowshard("build", str(motion_list(root)), str(out), "--flow", "farneback", "--resize", "none",
              "--executor", "local", "--shard-samples", "4", "--no-progress")
    return out


def read_all(folder) -> dict[str, dict]:
    rows = manifest.read_rows(folder / manifest.SHARDS)
    return {s["__key__"]: s for r in rows for s in shard.iter_shard(folder / "shards" / r["name"])}


def test_clip_members_are_the_parent_members_byte_for_byte(built, tmp_path):
    info = derive_clips(built, tmp_path / "clips", ClipsConfig(clip_len=6, per_video=4))
    parents = read_all(built)
    clips = read_all(tmp_path / "clips")
    assert len(clips) == sum(info["counts"]["clips"].values()) == 12 * 4
    for key, clip in clips.items():
        meta = encode.load_meta(clip["json"])
        parent = parents[meta["parent"]["key"]]
        pmeta = encode.load_meta(parent["json"])
        assert meta["kind"] == "clip" and meta["video_id"] == pmeta["video_id"] and meta["label_id"] == pmeta["label_id"]
        assert clip["rgb.jpg"] == parent[encode.rgb_member(meta["frame"]["position"])]
        fields = encode.unpack_stack(clip["flow.fstk"])
        assert fields == [parent[encode.flow_member(f["position"])] for f in meta["flow_fields"]]
        # Centred: the clip's frame is where its field L // 2 starts.
        assert meta["frame"]["index"] == meta["flow_fields"][3]["from"]
        assert [f["from"] for f in meta["flow_fields"]] == list(range(meta["flow_fields"][0]["from"],
                                                                      meta["flow_fields"][0]["from"] + 6))
        assert sorted(clip) == ["__key__", "__shard__", "flow.fstk", "json", "rgb.jpg"]


def test_splits_are_kept_apart_and_clips_of_videos_mixed(built, tmp_path):
    derive_clips(built, tmp_path / "clips", ClipsConfig(clip_len=4, per_video=3, shard_samples=5))
    rows = manifest.read_rows(tmp_path / "clips" / manifest.SHARDS)
    videos = {}
    for r in rows:
        split = r["name"].split("-")[0]
        assert r["split"] == split
        metas = [encode.load_meta(s["json"]) for s in shard.iter_shard(tmp_path / "clips" / "shards" / r["name"])]
        assert {m["split"] for m in metas} == {split}
        videos.setdefault(split, set()).update(m["video_id"] for m in metas)
    assert videos["train"] and videos["test"] and not videos["train"] & videos["test"]
    first = [encode.load_meta(s["json"])["video_id"] for s in shard.iter_shard(tmp_path / "clips/shards/train-00000.tar")]
    assert len(set(first)) > 1  # shuffled together, not one video after another


def test_manifest_hashes_and_dataset_json(built, tmp_path):
    out = tmp_path / "clips"
    info = derive_clips(built, out, ClipsConfig(clip_len=4, per_video=2, shard_samples=7))
    on_disk = json.loads((out / "dataset.json").read_text())
    assert on_disk == info and info["kind"] == "clips" and info["clip_len"] == 4
    parent = json.loads((built / "dataset.json").read_text())
    assert info["parent"]["version"] == parent["version"] and info["parent"]["path"] == str(built.absolute())
    import hashlib

    assert info["parent"]["dataset_json_sha256"] == hashlib.sha256((built / "dataset.json").read_bytes()).hexdigest()
    assert info["label_map"] == parent["label_map"]
    for r in manifest.read_rows(out / manifest.SHARDS):
        assert shard.sha256_file(out / "shards" / r["name"]) == r["sha256"]
        assert r["samples"] <= 7
    rows = {r["id"]: r for r in manifest.read_rows(out / manifest.MANIFEST)}
    import pyarrow.parquet as pq

    assert pq.read_schema(out / manifest.MANIFEST).equals(CLIP_SCHEMA)
    for key, sample in read_all(out).items():
        assert rows[key]["sha256"] == shard.sample_sha256(sample)
        assert rows[key]["shard"] == sample["__shard__"]


def test_same_input_gives_identical_bytes_and_the_seed_matters(built, tmp_path):
    cfg = ClipsConfig(clip_len=4, per_video=3, sampling="random", seed=3)
    a = derive_clips(built, tmp_path / "a", cfg)
    b = derive_clips(built, tmp_path / "b", cfg)
    assert a == b
    for name in ("manifest.parquet", "shards.parquet", "dataset.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    c = derive_clips(built, tmp_path / "c", ClipsConfig(clip_len=4, per_video=3, sampling="random", seed=4))
    assert c["version"] != a["version"]


def test_an_existing_output_needs_overwrite_and_stale_shards_go(built, tmp_path):
    out = tmp_path / "clips"
    derive_clips(built, out, ClipsConfig(clip_len=4, per_video=4, shard_samples=3))
    with pytest.raises(FileExistsError, match="overwrite"):
        derive_clips(built, out, ClipsConfig(clip_len=4, per_video=4))
    derive_clips(built, out, ClipsConfig(clip_len=4, per_video=4), overwrite=True)
    names = {r["name"] for r in manifest.read_rows(out / manifest.SHARDS)}
    assert {p.name for p in (out / "shards").glob("*.tar")} == names == {"train-00000.tar", "test-00000.tar"}


def test_clips_are_not_cut_from_clips_and_corrupt_parents_are_refused(built, tmp_path):
    derive_clips(built, tmp_path / "clips", ClipsConfig(clip_len=4, per_video=1))
    with pytest.raises(ValueError, match="kind 'clips'"):
        derive_clips(tmp_path / "clips", tmp_path / "again", ClipsConfig(clip_len=4, per_video=1))
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    bad = sorted((copy / "shards").glob("train-*.tar"))[0]
    bad.chmod(0o644)
    bad.write_bytes(bad.read_bytes()[:-1] + b"\x01")
    with pytest.raises(shard.ShardError, match=bad.name):
        derive_clips(copy, tmp_path / "out", ClipsConfig(clip_len=4, per_video=1))


def test_clips_from_a_dataset_built_in_clips_mode(tmp_path):
    lst = motion_list(tmp_path, per_class=1, test_from=1, frames=24)
    out = tmp_path / "ds"
    flowshard("build", str(lst), str(out), "--flow", "farneback", "--resize", "none", "--executor", "local",
              "--clips", "3", "--clip-len", "6", "--no-progress")
    info = derive_clips(out, tmp_path / "clips", ClipsConfig(clip_len=4, per_video=2))
    assert info["counts"]["clips"] == {"train": 8}
    parents = read_all(out)
    for clip in read_all(tmp_path / "clips").values():
        meta = encode.load_meta(clip["json"])
        pmeta = encode.load_meta(parents[meta["parent"]["key"]]["json"])
        stored = [c for c in pmeta["clips"] if c["frame"] == meta["frame"]["position"]]
        assert len(stored) == 1 and [f["position"] for f in meta["flow_fields"]] == stored[0]["flow"][1:5]


def test_clips_command(built, tmp_path):
    text = flowshard("clips", str(built), str(tmp_path / "clips"), "--clip-len", "5", "--per-video", "2",
                     "--sampling", "random", "--seed", "1", "--shard-size", "1MiB")
    assert "24 clips of 12 videos" in text
    info = json.loads((tmp_path / "clips" / "dataset.json").read_text())
    assert info["config"]["shard_bytes"] == 1 << 20 and info["config"]["sampling"] == "random"


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="unknown sampling 'dense'"):
        ClipsConfig(sampling="dense")
    with pytest.raises(ValueError, match="per_video"):
        ClipsConfig(per_video=0)


def test_multi_timescale_clips_store_each_member_once_and_map_snippets_to_them(built, tmp_path):
    cfg = ClipsConfig(clip_len=4, snippets=3, strides=(1, 5), per_video=2)
    info = derive_clips(built, tmp_path / "clips", cfg)
    assert info["counts"]["clips"] == {"train": 8 * 2 * 2, "test": 4 * 2 * 2}
    parents = read_all(built)
    strides = set()
    for clip in read_all(tmp_path / "clips").values():
        meta = encode.load_meta(clip["json"])
        assert meta["schema_version"] == encode.SNIPPETS_SCHEMA_VERSION and len(meta["snippets"]) == 3
        parent = parents[meta["parent"]["key"]]
        frames = encode.unpack_stack(clip["rgb.stk"])
        fields = encode.unpack_stack(clip["flow.fstk"])
        # Each distinct member once, bytes copied unchanged, in time order.
        assert frames == [parent[encode.rgb_member(f["position"])] for f in meta["frames"]]
        assert fields == [parent[encode.flow_member(f["position"])] for f in meta["flow_fields"]]
        positions = [f["position"] for f in meta["flow_fields"]]
        assert positions == sorted(set(positions))
        centres = []
        for snip in meta["snippets"]:
            froms = [meta["flow_fields"][i]["from"] for i in snip["fields"]]
            assert froms == list(range(froms[0], froms[0] + 4))
            centre = meta["frames"][snip["frames"][0]]["index"]
            assert centre == froms[2]  # the frame is where field L // 2 starts
            centres.append(centre)
        step = {b - a for a, b in zip(centres, centres[1:])}
        assert step == {meta["stride"]}
        strides.add(meta["stride"])
        assert sorted(clip) == ["__key__", "__shard__", "flow.fstk", "json", "rgb.stk"]
    assert strides == {1, 5}


def test_rgb_run_clips_without_flow(built, tmp_path):
    info = derive_clips(built, tmp_path / "clips", ClipsConfig(clip_len=0, rgb_frames=8, frame_stride=2, per_video=1))
    assert info["counts"]["clips"]["train"] == 8
    parents = read_all(built)
    for clip in read_all(tmp_path / "clips").values():
        meta = encode.load_meta(clip["json"])
        assert "flow.fstk" not in clip and len(meta["snippets"][0]["frames"]) == 8
        indices = [meta["frames"][i]["index"] for i in meta["snippets"][0]["frames"]]
        assert [b - a for a, b in zip(indices, indices[1:])] == [2] * 7
        parent = parents[meta["parent"]["key"]]
        assert encode.unpack_stack(clip["rgb.stk"]) == [parent[encode.rgb_member(f["position"])] for f in meta["frames"]]


def test_multi_snippet_config_validation():
    with pytest.raises(ValueError, match="strides"):
        ClipsConfig(snippets=3, strides=(0,))
    with pytest.raises(ValueError, match="per_video x strides"):
        ClipsConfig(per_video=400, strides=(1, 5, 10))
    with pytest.raises(ValueError, match="rgb_frames"):
        ClipsConfig(rgb_frames=0)


def test_rgb_clips_read_back_through_the_loader_equal_the_dense_frames(built, tmp_path):
    """C3D-style clips (F frames D apart, no flow): what the trainer decodes from a clip shard
    is exactly the dense dataset's frames at the clip's positions (stored JPEGs copied, so not
    one pixel differs), in time order."""
    import numpy as np

    from pipeline import open_dataset
    from training.data import DataConfig
    from training.data.stages import PickPlan, decode_item, pick_items

    derive_clips(built, tmp_path / "clips", ClipsConfig(clip_len=0, rgb_frames=5, frame_stride=3, per_video=2))
    dense = open_dataset(built)
    frames_of = {v.video_id: dense.read(v.video_id).frames for v in dense.videos()}
    plan = PickPlan(cfg=DataConfig(streams="rgb", clip_len=0, rgb_frames=5, frame_stride=3), train=False)
    checked = 0
    for key, sample in read_all(tmp_path / "clips").items():
        meta = encode.load_meta(sample["json"])
        (item,) = pick_items(sample, plan, epoch=0)
        rgb = decode_item(item)["rgb"]  # (K, F, H, W, 3)
        positions = [meta["frames"][i]["position"] for i in meta["snippets"][0]["frames"]]
        assert [b - a for a, b in zip(positions, positions[1:])] == [3] * 4
        assert rgb.shape[:2] == (1, 5)
        np.testing.assert_array_equal(rgb[0], frames_of[meta["video_id"]][positions])
        checked += 1
    assert checked == 12 * 2
