"""Per-frame boxes: importers (CSV, UCF101-24 pickles, J-HMDB masks), transforms, checks, versions."""
from __future__ import annotations

import csv
import json
import os
import pickle
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from pipeline import boxes, open_dataset
from pipeline.records import Track, VideoBoxes
from pipeline.synthetic.detection import (DetectionSetConfig, action_offsets, make_detection_dataset, paste)

ARGS = ("--flow", "dis", "--executor", "local", "--no-progress", "--shard-samples", "2")


def write_csv(path, rows, fields=("video", "frame", "x1", "y1", "x2", "y2", "label", "track")):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)
    return path


# --- importers ----------------------------------------------------------------------------------

def test_csv_groups_tracks_and_names_bad_rows(tmp_path):
    rows = [{"video": "a/v1.mp4", "frame": f, "x1": 1, "y1": 2, "x2": 11, "y2": 22, "label": "jump", "track": 0}
            for f in (3, 1, 2)]
    rows.append({"video": "a/v1.mp4", "frame": 1, "x1": 5, "y1": 5, "x2": 9, "y2": 9, "label": "wave", "track": 1})
    loaded = boxes.read_csv(str(write_csv(tmp_path / "b.csv", rows)))
    assert loaded.labels == ("jump", "wave") and list(loaded.videos) == ["a/v1"]
    t0, t1 = loaded.videos["a/v1"].tracks
    assert (t0.track, t0.label, t0.label_id, t0.frames) == (0, "jump", 0, (1, 2, 3))
    assert t0.boxes[0] == (1.0, 2.0, 11.0, 22.0) and (t1.label_id, t1.frames) == (1, (1,))
    bad = rows + [{**rows[0], "label": "run"}]
    with pytest.raises(ValueError, match=r"b2.csv line 6: track 0 of a/v1.mp4 changes label"):
        boxes.read_csv(str(write_csv(tmp_path / "b2.csv", bad)))
    with pytest.raises(ValueError, match=r"line 2: x1 'left' is not a number"):
        boxes.read_csv(str(write_csv(tmp_path / "b3.csv", [{**rows[0], "x1": "left"}])))
    with pytest.raises(ValueError, match=r"second box in frame 3"):
        boxes.read_csv(str(write_csv(tmp_path / "b4.csv", [rows[0], rows[0]])))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['x1', 'y1', 'x2', 'y2', 'label'\]"):
        boxes.read_csv(str(write_csv(tmp_path / "b5.csv", [{"video": "x", "frame": 0}], ("video", "frame"))))


def test_ucf101_24_pickle_layouts(tmp_path):
    # ACT-detector's UCF101v2-GT.pkl: 1-based frames, resolution (height, width), tubes per label index.
    tube = np.array([[1, 10, 20, 50, 80], [2, 11, 21, 51, 81], [3, 12, 22, 52, 82]], np.float32)
    act = {"labels": ["Basketball", "Biking"], "gttubes": {"Biking/v_Biking_g01_c01": {1: [tube, tube[:2] + 1]}},
           "nframes": {"Biking/v_Biking_g01_c01": 3}, "resolution": {"Biking/v_Biking_g01_c01": (240, 320)},
           "train_videos": [["Biking/v_Biking_g01_c01"]], "test_videos": [[]]}
    (tmp_path / "gt.pkl").write_bytes(pickle.dumps(act, protocol=2))
    loaded = boxes.load_boxes(tmp_path / "gt.pkl")
    vb = loaded.videos["Biking/v_Biking_g01_c01"]
    assert loaded.format == "ucf101-24" and loaded.labels == ("Basketball", "Biking") and vb.size == (320, 240)
    assert [(t.track, t.label, t.label_id, t.frames) for t in vb.tracks] == [(0, "Biking", 1, (0, 1, 2)),
                                                                             (1, "Biking", 1, (1, 2))]
    assert vb.tracks[0].boxes[2] == (12.0, 22.0, 52.0, 82.0)
    # The corrected annotations' pyannot.pkl: 0-based sf..ef-1, boxes as x, y, w, h.
    corrected = {"Fencing/v_Fencing_g01_c01": {"label": 6, "numf": 10, "annotations": [
        {"label": 6, "sf": 4, "ef": 6, "boxes": np.array([[10, 20, 30, 40], [11, 21, 30, 40]], np.uint16)}]}}
    (tmp_path / "pyannot.pkl").write_bytes(pickle.dumps(corrected))
    t = boxes.load_boxes(tmp_path / "pyannot.pkl").videos["Fencing/v_Fencing_g01_c01"].tracks[0]
    assert (t.label, t.frames, t.boxes) == ("Fencing", (4, 5), ((10, 20, 40, 60), (11, 21, 41, 61)))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"gttubes": _Evil()}))
    monkeypatch.chdir(tmp_path)  # where the payload's relative "pwned" would land
    with pytest.raises(ValueError, match=r"evil.pkl: refused to load posix.system"):
        boxes.load_boxes(tmp_path / "evil.pkl")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ValueError, match="not a UCF101-24 annotation pickle"):
        (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
        boxes.load_boxes(tmp_path / "list.pkl")


def test_jhmdb_puppet_masks_give_pixel_edge_boxes(tmp_path):
    import scipy.io

    mask = np.zeros((24, 32, 3), np.uint8)
    mask[5:10, 7:20, 0] = 1  # rows 5..9, columns 7..19
    mask[6:12, 8:21, 2] = 1  # frame 1 is empty: no box there
    folder = tmp_path / "puppet_mask" / "run" / "v_run_1"
    folder.mkdir(parents=True)
    scipy.io.savemat(folder / "puppet_mask.mat", {"part_mask": mask})
    loaded = boxes.load_boxes(tmp_path / "puppet_mask")
    vb = loaded.videos["run/v_run_1"]
    assert loaded.format == "jhmdb-puppet-masks" and vb.size == (32, 24)
    assert vb.tracks[0].label == "run" and vb.tracks[0].frames == (0, 2)
    assert vb.tracks[0].boxes == ((7, 5, 20, 10), (8, 6, 21, 12))


# --- transforms ----------------------------------------------------------------------------------

def _video_boxes(frames, box_of, size=None, tol=1.0):
    track = Track(track=0, label="jump", label_id=0, frames=tuple(frames), boxes=tuple(box_of(f) for f in frames))
    return VideoBoxes(file="b.csv", format="csv", video="v", tracks=(track,), labels=("jump",), size=size,
                      tolerance=tol)


def test_annotate_scales_with_resize_and_interpolates_with_fps():
    vb = _video_boxes(range(2, 9), lambda f: (10.0 + f, 20.0, 30.0 + f, 40.0))
    meta = {"decode": {"fps": None}, "source_fps": 25.0, "source_size": [64, 48], "size": [96, 72],
            "frames": [{"index": i, "pts": i / 25} for i in range(10)]}
    out = boxes.annotate(meta, vb)
    assert out["tracks"] == [{"track": 0, "label": "jump", "label_id": 0}]
    assert out["frames"][1]["boxes"] == [] and out["frames"][9]["boxes"] == []
    assert out["frames"][4]["boxes"] == [[21.0, 30.0, 51.0, 60.0, 0]]  # (14, 20, 34, 40) * 1.5
    # --fps 10 from 25 fps: stored frame n shows source position 2.5 n.
    meta = {**meta, "decode": {"fps": 10.0}, "size": [64, 48], "frames": [{"index": i, "pts": i / 10} for i in range(4)]}
    got = [f["boxes"] for f in boxes.annotate(meta, vb)["frames"]]
    assert got[0] == [] and got[1] == [[12.5, 20.0, 32.5, 40.0, 0]]  # between source frames 2 and 3
    assert got[2] == [[15.0, 20.0, 35.0, 40.0, 0]] and got[3] == [[17.5, 20.0, 37.5, 40.0, 0]]
    with pytest.raises(ValueError, match="no frame rate"):
        boxes.annotate({**meta, "source_fps": 0.0}, vb)


def test_clipping_tolerance_and_flip():
    vb = _video_boxes([0], lambda f: (-0.5, 1.0, 64.8, 20.0))
    boxes.check_frame_size(vb, 64, 48)  # within 1 px: clipped
    meta = {"decode": {"fps": None}, "source_fps": 25.0, "source_size": [64, 48], "size": [64, 48],
            "frames": [{"index": 0, "pts": 0.0}]}
    assert boxes.annotate(meta, vb)["frames"][0]["boxes"] == [[0.0, 1.0, 64.0, 20.0, 0]]
    with pytest.raises(ValueError, match=r"box \[-0.5, 1, 64.8, 20\] in frame 0 \(track 0\) is out of the 60x48 frame \(boxes of 'v' in b.csv\)"):
        boxes.check_frame_size(vb, 60, 48)
    with pytest.raises(ValueError, match="are for 32x24 frames, the video decodes to 64x48"):
        boxes.check_frame_size(_video_boxes([0], lambda f: (1, 1, 5, 5), size=(32, 24)), 64, 48)
    with pytest.raises(ValueError, match="empty box"):
        boxes.check_frame_size(_video_boxes([0], lambda f: (5, 1, 5, 5)), 64, 48)
    flipped = boxes.flip_boxes(np.array([[2.0, 3.0, 10.0, 7.0]]), 64)
    assert flipped.tolist() == [[54.0, 3.0, 62.0, 7.0]]
    assert boxes.flip_boxes(flipped, 64).tolist() == [[2.0, 3.0, 10.0, 7.0]]


def test_paste_puts_a_patch_exactly_at_its_box():
    frame = paste(np.zeros((20, 30, 3), np.uint8), np.full((4, 6, 3), 200, np.uint8), 3.25, 5.5)
    alpha = frame[..., 0].astype(np.float64) / 200
    assert alpha.sum() == pytest.approx(24, abs=0.2)
    cx = (alpha.sum(0) * np.arange(30)).sum() / alpha.sum()  # pixel centres: box [3.25, 9.25) -> 5.75
    cy = (alpha.sum(1) * np.arange(20)).sum() / alpha.sum()
    assert (cx, cy) == (pytest.approx(3.25 + 3 - 0.5, abs=0.02), pytest.approx(5.5 + 2 - 0.5, abs=0.02))
    assert np.allclose(action_offsets("circle", 9, 5, 8)[0], 0) and np.allclose(action_offsets("circle", 9, 5, 8)[8], 0)


# --- in a real build ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def det_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("detset")
    return make_detection_dataset(root, DetectionSetConfig(classes=("jump", "slide"), train_per_class=2,
                                                           test_per_class=0, frames=12, size=(64, 48)))


def flowshard(*args):
    result = CliRunner().invoke(cli, list(map(str, args)))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output.strip().splitlines()[-1], result.output


def truth(det_set):
    out = {}
    with open(det_set.boxes_csv) as f:
        for r in csv.DictReader(f):
            out.setdefault(r["video"], {})[int(r["frame"])] = [float(r[k]) for k in ("x1", "y1", "x2", "y2")]
    return out


def test_build_stores_boxes_moved_with_resize_and_fps(det_set, tmp_path):
    out = tmp_path / "ds"
    flowshard("build", det_set.list_csv, out, "--boxes", det_set.boxes_csv, "--resize", "96x72", "--fps", "12.5",
              "--step", "2", *ARGS)
    ds = open_dataset(out)
    assert ds.info["boxes"]["label_map"] == {"jump": 0, "slide": 1} and ds.info["boxes"]["videos"] == 4
    gt = truth(det_set)
    rows = {r["id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    for v in ds.videos():
        s = ds.read(v.video_id)
        src = gt[v.path]
        assert [f["index"] for f in s.meta["frames"]] == list(range(6))  # 12 frames at half the rate
        for f in s.meta["frames"]:
            want = src.get(2 * f["index"])  # stored frame n shows source frame 2n, scaled 1.5x
            got = f["boxes"]
            assert (got == []) if want is None else got[0][:4] == pytest.approx([1.5 * x for x in want], abs=2e-3)
        cell = json.loads(rows[v.video_id]["boxes"])["tracks"][0]
        assert cell["label"] == v.label and [b[0] for b in cell["boxes"]] == [f["index"] for f in s.meta["frames"]
                                                                               if f["boxes"]]
        assert s.meta["flow_fields"][0] == {"from": 0, "to": 2}


def test_bad_boxes_are_error_rows(det_set, tmp_path):
    rows = list(csv.DictReader(open(det_set.boxes_csv)))
    videos = sorted({r["video"] for r in rows})
    bad = [dict(r) for r in rows]
    for r in bad:
        if r["video"] == videos[0] and r["frame"] == "3":
            r["x2"] = "80"  # out of the 64-wide frame
    bad.append({**rows[-1], "frame": "12"})  # the video has frames 0..11
    path = write_csv(tmp_path / "bad.csv", bad)
    flowshard("build", det_set.list_csv, tmp_path / "ds", "--boxes", path, "--resize", "none", *ARGS)
    errors = {e.path: e.error for e in open_dataset(tmp_path / "ds").errors()}
    assert set(errors) == {videos[0], rows[-1]["video"]}
    assert re.fullmatch(r"videos/\S+\.mp4: box \[[\d., ]+80, [\d.]+\] in frame 3 \(track 0\) is out of the 64x48 "
                        r"frame \(boxes of 'videos/\S+' in \S+bad.csv\)", errors[videos[0]])
    assert "its boxes name frame 12 (track 0), but the video has 12 frames" in errors[rows[-1]["video"]]
    result = CliRunner().invoke(cli, ["build", str(det_set.list_csv), str(tmp_path / "x"), "--boxes",
                                      str(tmp_path / "nope.csv"), *ARGS])
    assert result.exit_code != 0 and "--boxes" in result.output and "nope.csv: no such file" in result.output


def test_changed_boxes_make_a_new_version_copied_not_recomputed(det_set, tmp_path):
    out = tmp_path / "ds"
    v1, _ = flowshard("build", det_set.list_csv, out, "--boxes", det_set.boxes_csv, "--resize", "none", *ARGS)
    again, _ = flowshard("build", det_set.list_csv, out, "--boxes", det_set.boxes_csv, "--resize", "none", *ARGS)
    plain, _ = flowshard("build", det_set.list_csv, tmp_path / "plain", "--resize", "none", *ARGS)
    assert again == v1 and plain != v1
    rows = list(csv.DictReader(open(det_set.boxes_csv)))
    moved = [dict(r, x1=str(float(r["x1"]) + 1)) if r["video"] == rows[0]["video"] else r for r in rows]
    v2, output = flowshard("build", det_set.list_csv, out, "--boxes", write_csv(tmp_path / "b2.csv", moved),
                           "--resize", "none", *ARGS)
    assert v2 != v1 and "0 video(s) computed, 2 copied" in output  # one unit of two videos rewritten
    old, new = open_dataset(f"{out}@{v1}"), open_dataset(f"{out}@{v2}")
    changed = next(v.video_id for v in new.videos() if v.path == rows[0]["video"])
    b_old = old.read(changed).meta["frames"][int(rows[0]["frame"])]["boxes"][0]
    b_new = new.read(changed).meta["frames"][int(rows[0]["frame"])]["boxes"][0]
    assert b_new[0] == pytest.approx(b_old[0] + 1) and b_new[1:] == b_old[1:]
    assert len({s.name for s in old.shards()} & {s.name for s in new.shards()}) == 1
    shared = next(v for v in new.videos() if v.shard in {s.name for s in old.shards()})
    assert old.raw(shared.video_id)[0]["json"] == new.raw(shared.video_id)[0]["json"]


def test_warped_flow_is_told_where_the_annotated_people_are():
    """--flow-warp with --boxes: each chunk carries its frames' boxes in stored pixels, which
    the camera-motion estimate leaves out."""
    import dataclasses

    from pipeline.stages.chunks import chunk_people
    from pipeline.stages.config import WorkerConfig
    from pipeline.stages.plan import VideoPlan
    from pipeline.flow import warp
    from pipeline.records import VideoInfo, VideoRef

    vb = _video_boxes(range(3, 6), lambda f: (10.0, 8.0, 30.0, 24.0))
    ref = VideoRef(key="v", uri="v.mp4", source="v.mp4", label="jump", label_id=0, split="train", boxes=vb)
    plan = VideoPlan(info=VideoInfo(width=64, height=48, fps=25.0, duration=1.0, stream_index=0),
                     total_frames=None, keep_frames=None, keep_fields=None)
    frame_ids, size = range(2, 7), (32, 24)  # a chunk of 5 frames from frame 2, stored at 32x24
    cfg = WorkerConfig(warp=warp.WarpConfig())
    people = chunk_people(ref, plan, frame_ids, size, cfg)
    assert people == {i: [[5.0, 4.0, 15.0, 12.0]] for i in (3, 4, 5)}  # frames 3-5, half size
    assert chunk_people(ref, plan, frame_ids, size, dataclasses.replace(cfg, warp=None)) is None
