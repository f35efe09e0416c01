"""--flow-warp end to end: warped members beside flow, the homography per pair, schema 3,
readers, verify, incremental copies, Ray (tasks and flow actors) byte-identical to in-process."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import encode, open_dataset, shard
from pipeline.synthetic import camera as sc
from pipeline.flow import warp
from pipeline.verify import verify
from tests import helpers

SCENES = {"pan": sc.CameraSceneConfig(width=128, height=96, frames=6, pan=(2.6, -1.3), object_speed=(1.7, 0.6)),
          "zoom": sc.CameraSceneConfig(width=128, height=96, frames=6, pan=(-2.0, 0.0), zoom=0.01, seed=1)}
ARGS = ["--flow", "dis", "--resize", "none", "--shard-samples", "2"]


@pytest.fixture(scope="module")
def camera_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("camera_videos")
    for label, cfg in SCENES.items():
        sc.write_camera_videos(root / label, {f"v_{label}_g00": cfg})
    return root


def build(input_path, output, *args):
    """A build with this file's settings; its output."""
    return helpers.build(input_path, output, *ARGS, *args)


@pytest.fixture(scope="module")
def warped_ds(camera_videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("warped") / "ds"
    build(camera_videos, out, "--flow-warp", "--executor", "local")
    return out


def test_warped_members_metadata_and_reader(warped_ds):
    ds = open_dataset(warped_ds)
    assert ds.info["schema_version"] == 3 and ds.info["config"]["warp"]["features"] == "orb"
    s = ds.read("pan_v_pan_g00")
    assert s.warped is not None and s.warped.shape == s.flow.shape == (5, 96, 128, 2)
    m = s.meta
    assert m["schema_version"] == 3 and m["warp"]["method"] == "homography" and m["warp"]["ransac_threshold"] == 1.0
    scene = sc.render_scene(SCENES["pan"])
    for field, true_h in zip(m["flow_fields"], scene.homographies):
        cam = field["camera"]
        assert cam["estimated"] and cam["inliers"] >= 25 and len(cam["homography"]) == 9
        est = warp.homography_flow(np.array(cam["homography"]).reshape(3, 3), 96, 128)
        assert np.abs(est - warp.homography_flow(true_h, 96, 128))[8:-8, 8:-8].mean() < 0.3
    bg, _ = sc.score_regions(scene)
    plain = np.linalg.norm(s.flow, axis=-1)[bg].mean()
    assert plain > 2 and np.linalg.norm(s.warped, axis=-1)[bg].mean() <= 0.2 * plain
    raw = ds.raw("pan_v_pan_g00")[0]
    assert sorted(k for k in raw if k.startswith("warped."))[-1] == "warped.000004.jpg"


def test_verify_checks_warped_members(warped_ds):
    assert verify(warped_ds).ok
    sample = open_dataset(warped_ds).raw("zoom_v_zoom_g00")[0]
    del sample[encode.warped_member(2)]
    with pytest.raises(encode.SchemaError, match="4 warped field member"):
        encode.from_sample(sample, "s")
    meta = json.loads(sample[encode.META])
    meta["schema_version"] = 1
    sample = {**open_dataset(warped_ds).raw("zoom_v_zoom_g00")[0], encode.META: encode.dump_meta(meta)}
    with pytest.raises(encode.SchemaError, match="warped flow in a sample of schema 1"):
        encode.from_sample(sample, "s")


def test_an_older_reader_refuses_warped_data_and_old_data_reads_as_before(warped_ds, camera_videos, tmp_path, monkeypatch):
    build(camera_videos, tmp_path / "plain", "--executor", "local")
    plain = open_dataset(tmp_path / "plain")
    assert plain.info["schema_version"] == 1 and "warp" not in plain.info["config"]
    s = plain.read("pan_v_pan_g00")
    assert s.warped is None and s.meta["schema_version"] == 1 and "camera" not in s.meta["flow_fields"][0]
    # flow members are the same whether or not warped flow is stored beside them
    warped = open_dataset(warped_ds).raw("pan_v_pan_g00")[0]
    assert plain.raw("pan_v_pan_g00")[0][encode.flow_member(3)] == warped[encode.flow_member(3)]
    monkeypatch.setattr(encode, "KNOWN_SCHEMAS", (1, 2))
    with pytest.raises(encode.SchemaError, match="schema version 3 is not one this flowshard reads"):
        open_dataset(warped_ds)
    assert open_dataset(tmp_path / "plain").read("pan_v_pan_g00").warped is None


def test_incremental_rebuild_copies_warped_members(camera_videos, warped_ds, tmp_path):
    import shutil

    shutil.copytree(warped_ds, tmp_path / "ds")
    videos = tmp_path / "videos"
    shutil.copytree(camera_videos, videos)
    sc.write_camera_videos(videos / "pan", {"v_pan_g01": sc.CameraSceneConfig(width=128, height=96, frames=6, seed=2)})
    # --shard-samples 1: a new shard plan, so every unit is rewritten and stored videos are copied
    out = build(videos, tmp_path / "ds", "--flow-warp", "--executor", "local", "--shard-samples", "1")
    assert "1 video(s) computed, 2 copied from stored shards" in out
    old = pq.read_table(warped_ds / "manifest.parquet").to_pylist()
    new = {r["id"]: r for r in pq.read_table(tmp_path / "ds" / "manifest.parquet").to_pylist()}
    for row in old:  # the copied samples, warped members and cameras included, are byte-identical
        assert new[row["id"]]["sha256"] == row["sha256"]
    ds = open_dataset(tmp_path / "ds")
    assert verify(tmp_path / "ds").ok and ds.read("pan_v_pan_g01").warped.shape == (5, 96, 128, 2)


@pytest.mark.parametrize("actors", [0, 1], ids=["tasks", "flow-actor"])
def test_ray_builds_equal_in_process(camera_videos, warped_ds, tmp_path, ray_local, actors):
    build(camera_videos, tmp_path / "ray", "--flow-warp", "--executor", "ray", "--flow-actors", str(actors))
    names = sorted(p.name for p in (warped_ds / "shards").glob("*.tar"))
    assert names == sorted(p.name for p in (tmp_path / "ray" / "shards").glob("*.tar"))
    for name in names:
        assert shard.sha256_file(warped_ds / "shards" / name) == shard.sha256_file(tmp_path / "ray" / "shards" / name)


def test_clips_mode_keeps_warped_fields_of_its_clips(camera_videos, tmp_path):
    build(camera_videos, tmp_path / "ds", "--flow-warp", "--clips", "2", "--clip-len", "2", "--executor", "local")
    s = open_dataset(tmp_path / "ds").read("zoom_v_zoom_g00")
    assert s.warped.shape == s.flow.shape == (4, 96, 128, 2)
    assert [f["from"] for f in s.meta["flow_fields"]] == [0, 1, 3, 4]
    assert all(f["camera"]["estimated"] for f in s.meta["flow_fields"])


def test_clip_shards_carry_warped_stacks(warped_ds, tmp_path):
    from pipeline.clips import ClipsConfig, derive_clips

    info = derive_clips(str(warped_ds), tmp_path / "clips", ClipsConfig(clip_len=3, per_video=2))
    assert info["schema_version"] == 3
    parent = {v.video_id: open_dataset(warped_ds).raw(v.video_id)[0] for v in open_dataset(warped_ds).videos()}
    samples = [s for p in sorted((tmp_path / "clips" / "shards").glob("*.tar")) for s in shard.iter_shard(p)]
    assert len(samples) == 4
    for s in samples:
        meta = encode.load_meta(s[encode.META])
        assert meta["schema_version"] == 3 and meta["warp"]["method"] == "homography"
        positions = [f["position"] for f in meta["flow_fields"]]
        src = parent[meta["video_id"]]
        assert encode.unpack_stack(s[encode.WARPED_STACK]) == [src[encode.warped_member(p)] for p in positions]
        assert encode.unpack_stack(s[encode.FLOW_STACK]) == [src[encode.flow_member(p)] for p in positions]
        assert all(f["camera"]["estimated"] for f in meta["flow_fields"])


def test_rawframes_export_writes_warped_flow(warped_ds, tmp_path):
    import cv2

    from pipeline.export import export_rawframes

    summary = export_rawframes(str(warped_ds), tmp_path / "mm")
    assert summary.warped and summary.flow_fields == 10
    folder = tmp_path / "mm" / "rawframes" / "pan_v_pan_g00"
    assert len(list(folder.glob("warp_x_*.jpg"))) == len(list(folder.glob("flow_y_*.jpg"))) == 5
    s = open_dataset(warped_ds).read("pan_v_pan_g00")
    x = cv2.imread(str(folder / "warp_x_00003.jpg"), cv2.IMREAD_GRAYSCALE).astype(float) * 40 / 255 - 20
    assert np.abs(x - s.warped[2, ..., 0]).mean() < 0.1  # warp_*_k: the warped flow of field k - 1
    assert json.loads((tmp_path / "mm" / "export.json").read_text())["warp_template"] == "warp_{}_{:05d}.jpg"
