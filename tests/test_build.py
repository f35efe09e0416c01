"""End-to-end builds on synthetic videos with known motion: flow, layout, errors, identity."""
import csv
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import open_dataset, shard
from pipeline.synthetic import motion as synthetic
from pipeline.decode import resolve_ffmpeg
from tests.helpers import build, invoke

DIRECTIONS = {"left": (-2, 0), "right": (2, 0), "up": (0, -2), "down": (0, 2)}


def interior_mean(flow, margin=8):
    return flow[:, margin:-margin, margin:-margin].mean(axis=(0, 1, 2))


@pytest.mark.parametrize("algo,tol", [("tvl1", 0.3), ("farneback", 0.3), ("dis", 0.5)])
def test_stored_flow_has_true_direction_and_magnitude(motion_videos, tmp_path, algo, tol):
    build(motion_videos, tmp_path / "ds", "--flow", algo, "--resize", "none", "--executor", "local")
    ds = open_dataset(tmp_path / "ds")
    assert len(ds.videos()) == 8
    for v in ds.videos():
        s = ds.read(v.video_id)
        mean = interior_mean(s.flow)
        assert np.allclose(mean, DIRECTIONS[v.label], atol=tol), (algo, v.label, mean)


def test_dense_round_trip_frames_fields_and_timestamps(motion_videos, tmp_path):
    build(motion_videos, tmp_path / "ds", "--flow", "farneback", "--resize", "none", "--executor", "local")
    ds = open_dataset(tmp_path / "ds")
    s = ds.read("right_v_right_g00")
    assert s.frames.shape == (12, 48, 64, 3) and s.frames.dtype == np.uint8
    assert s.flow.shape == (11, 48, 64, 2) and s.flow.dtype == np.float32
    assert [f["index"] for f in s.meta["frames"]] == list(range(12))
    assert [f["pts"] for f in s.meta["frames"]] == pytest.approx([i / 25 for i in range(12)], abs=1e-3)
    assert s.meta["flow_fields"] == [{"from": i, "to": i + 1} for i in range(11)]
    source = list(synthetic.moving_frames("right", 12, 48, 64, speed=2.0, seed=0))
    mse = np.mean((s.frames.astype(float) - np.stack(source).astype(float)) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 25  # RGB order and alignment kept through decode + JPEG
    m = s.meta
    assert (m["label"], m["split"], m["source"], m["schema_version"]) == ("right", "train", "right/v_right_g00.mp4", 1)
    assert m["flow"]["bound"] == 20.0 and m["flow"]["algorithm"] == "farneback" and m["source_size"] == [64, 48]


def test_step_two_pairs_and_doubles_motion(motion_videos, tmp_path):
    build(motion_videos, tmp_path / "ds", "--flow", "farneback", "--resize", "none", "--step", "2",
          "--executor", "local")
    s = open_dataset(tmp_path / "ds").read("down_v_down_g01")
    assert s.meta["flow_fields"][0] == {"from": 0, "to": 2} and len(s.flow) == 10
    assert interior_mean(s.flow) == pytest.approx([0, 4], abs=0.5)


def test_clips_mode_keeps_n_clips_of_l_fields(motion_videos, tmp_path):
    build(motion_videos, tmp_path / "ds", "--flow", "farneback", "--resize", "none", "--clips", "3",
          "--clip-len", "4", "--executor", "local")
    s = open_dataset(tmp_path / "ds").read("left_v_left_g00")
    clips = s.meta["clips"]
    assert s.meta["mode"] == "clips" and len(clips) == 3 and len(s.frames) == 3
    for c in clips:
        starts = [s.meta["flow_fields"][i]["from"] for i in c["flow"]]
        assert len(starts) == 4 and starts == list(range(starts[0], starts[0] + 4))
        assert s.meta["frames"][c["frame"]]["index"] == starts[0] + 2  # the frame sits mid-stack
    assert [s.meta["flow_fields"][c["flow"][0]]["from"] for c in clips] == [0, 4, 7]  # uniform over 11 fields
    assert interior_mean(s.flow) == pytest.approx([-2, 0], abs=0.3)


def test_long_video_becomes_parts_read_back_whole(motion_videos, tmp_path):
    build(motion_videos, tmp_path / "ds", "--flow", "farneback", "--resize", "none", "--max-frames", "5",
          "--chunk-frames", "4", "--executor", "local")
    ds = open_dataset(tmp_path / "ds")
    raw = ds.raw("up_v_up_g00")
    assert [r["__key__"] for r in raw] == [f"up_v_up_g00_part{k:03d}" for k in range(3)]
    s = ds.read("up_v_up_g00")
    assert len(s.frames) == 12 and len(s.flow) == 11
    assert [f["from"] for f in s.meta["flow_fields"]] == list(range(11))


def test_resize_modes(motion_videos, tmp_path):
    build(motion_videos, tmp_path / "a", "--flow", "dis", "--resize", "32x24", "--executor", "local")
    assert open_dataset(tmp_path / "a").read("up_v_up_g01").frames.shape[1:3] == (24, 32)
    build(motion_videos, tmp_path / "b", "--flow", "dis", "--resize", "short:24", "--executor", "local")
    assert open_dataset(tmp_path / "b").read("up_v_up_g01").frames.shape[1:3] == (24, 32)


def _bad_files(root):
    bad = root / "broken"
    bad.mkdir(parents=True)
    (bad / "zero.mp4").write_bytes(b"")
    (bad / "random.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    good = synthetic.write_video(bad / "whole.mp4", synthetic.moving_frames("left", 30, 48, 64))
    (bad / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    subprocess.run([resolve_ffmpeg(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=1", "-c:a", "aac", str(bad / "audio_only.mp4")], check=True)
    return bad


def test_bad_files_become_error_rows_and_the_build_succeeds(motion_videos, tmp_path, ray_local):
    rows = [{"path": str(p), "label": p.parent.name, "split": "train"}
            for p in sorted(motion_videos.glob("*/*.mp4"))]
    bad = _bad_files(tmp_path)
    rows += [{"path": str(p), "label": "broken", "split": "train"} for p in sorted(bad.iterdir())]
    listing = tmp_path / "list.csv"
    with open(listing, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    out = build(listing, tmp_path / "ds", "--flow", "farneback", "--resize", "none", "--shard-samples", "5")
    assert "8 of 12 videos ok, 4 error(s)" in out
    ds = open_dataset(tmp_path / "ds")
    errors = {e.path.rsplit("/", 1)[-1]: e.error for e in ds.errors()}
    assert set(errors) == {"zero.mp4", "random.mp4", "audio_only.mp4", "truncated.mp4"}
    for name, reason in errors.items():
        assert name in reason and len(reason) > len(name) + 5, reason
    assert "no video stream" in errors["audio_only.mp4"]
    assert invoke("verify", str(tmp_path / "ds")).exit_code == 0


def test_shard_boundaries_splits_and_mixing(motion_videos, tmp_path):
    rows = [{"path": str(p), "label": p.parent.name, "split": "test" if p.stem.endswith("g01") else "train"}
            for p in sorted(motion_videos.glob("*/*.mp4"))][:7]
    listing = tmp_path / "list.csv"
    with open(listing, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    build(listing, tmp_path / "ds", "--flow", "dis", "--resize", "none", "--shard-samples", "3", "--executor", "local")
    ds = open_dataset(tmp_path / "ds")
    assert sorted((s.split, s.samples) for s in ds.shards()) == [("test", 3), ("train", 1), ("train", 3)]
    by_id = {v.video_id: v for v in ds.videos()}
    for s in ds.shards():
        keys = {smp["__key__"] for smp in shard.iter_shard(s.path)}
        labels = {by_id[k].label for k in keys}
        assert {by_id[k].split for k in keys} == {s.split}
        if s.samples == 3:
            assert len(labels) > 1  # the seeded shuffle mixes classes
    table = pq.read_table(tmp_path / "ds" / "manifest.parquet").to_pylist()
    assert len(table) == 7 and all(len(r["sha256"]) == 64 for r in table)


def test_ray_and_local_builds_are_byte_identical_and_verify_catches_a_flip(motion_videos, tmp_path, ray_local):
    build(motion_videos, tmp_path / "a", "--flow", "farneback", "--resize", "none", "--shard-samples", "3",
          "--chunk-frames", "5")
    build(motion_videos, tmp_path / "b", "--flow", "farneback", "--resize", "none", "--shard-samples", "3",
          "--executor", "local")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                   if p.is_file() and ".flowshard" not in p.parts)
    assert len(files) >= 6
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    tar = sorted((tmp_path / "a" / "shards").glob("*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[3000] ^= 0x01
    tar.write_bytes(bytes(data))
    result = invoke("verify", str(tmp_path / "a"))
    assert result.exit_code != 0 and tar.name in result.output


def test_rerun_skips_finished_units(motion_videos, tmp_path):
    args = ("--flow", "dis", "--resize", "none", "--shard-samples", "3", "--executor", "local")
    build(motion_videos, tmp_path / "ds", *args)
    before = (tmp_path / "ds" / "dataset.json").read_bytes()
    out = build(motion_videos, tmp_path / "ds", *args)
    assert "3 unit(s) already done" in out
    assert (tmp_path / "ds" / "dataset.json").read_bytes() == before


def test_inspect_writes_a_contact_sheet(motion_videos, tmp_path):
    build(motion_videos, tmp_path / "ds", "--flow", "dis", "--resize", "none", "--executor", "local")
    png = tmp_path / "sheet.png"
    result = invoke("inspect", str(tmp_path / "ds"), "--video", "left_v_left_g00", "-o", str(png))
    assert result.exit_code == 0, result.output
    import cv2

    img = cv2.imread(str(png))
    assert img.shape[0] > 4 * 48 and img.shape[1] > 6 * 64  # four rows of tiles, six columns, labels, legend


@pytest.mark.parametrize("mode", [("--max-frames", "5"), ("--clips", "2", "--clip-len", "3")], ids=["parts", "clips"])
def test_ray_streams_parts_and_clips_to_the_same_bytes_as_local(motion_videos, tmp_path, ray_local, mode):
    """On Ray the writer assembles a video's parts while it fetches its chunks, one at a time
    (chunks of 4 frames against parts of 5): the bytes equal the in-process build's."""
    args = ("--flow", "dis", "--resize", "none", "--chunk-frames", "4", *mode)
    build(motion_videos, tmp_path / "ray", *args)
    build(motion_videos, tmp_path / "local", *args, "--executor", "local")
    files = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*")
                   if p.is_file() and ".flowshard" not in p.parts)
    for rel in files:
        assert (tmp_path / "ray" / rel).read_bytes() == (tmp_path / "local" / rel).read_bytes(), rel
    assert len(open_dataset(tmp_path / "ray").read("up_v_up_g00").frames) == (12 if mode[0] == "--max-frames" else 2)


def test_a_lost_writers_temporary_tar_is_removed_when_the_build_ends(motion_videos, tmp_path):
    """A writer lost with its node mid-build (its unit written again by another) can leave its
    temporary tar beside the shards: the build removes it before committing."""
    from pipeline.build.config import BuildConfig, ShardConfig
    from pipeline.build.executors import LocalExecutor
    from pipeline.build.run import build_dataset
    from pipeline.decode import DecodeConfig
    from pipeline.flow.config import FlowConfig
    from pipeline.stages.config import WorkerConfig

    out = tmp_path / "ds"
    stale = out / "shards" / ".train-00000-0123456789.tar.tmp-99999"

    class LosesAWriter(LocalExecutor):
        def run(self, units, cfg, output, done, progress):
            stale.write_bytes(b"half a tar")  # what the lost writer left
            super().run(units, cfg, output, done, progress)

    cfg = BuildConfig(worker=WorkerConfig(decode=DecodeConfig(resize="none"), flow=FlowConfig(algorithm="dis")),
                      shard=ShardConfig(max_samples=3))
    build_dataset(str(motion_videos), str(out), cfg, executor=LosesAWriter(), progress=False)
    assert not stale.exists()
    assert not [p.name for p in (out / "shards").iterdir() if ".tmp-" in p.name]
    assert open_dataset(out).info["counts"]["ok"] == 8
