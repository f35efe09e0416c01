"""`flowshard export --format rawframes`: mmaction2's folders and lists, checked with mmaction2's
own index arithmetic (SampleFrames + RawFrameDecode, reproduced here)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from pipeline import encode, open_dataset
from tests.helpers import write_list

RGB_TMPL = "img_{:05}.jpg"  # RawframeDataset's default filename_tmpl
FLOW_TMPL = "flow_{}_{:05d}.jpg"  # filename_tmpl of a Flow config for the exported names


def invoke(*args):
    res = CliRunner().invoke(cli, [*map(str, args)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


@pytest.fixture(scope="module")
def exported(motion_videos, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    rows = [{"path": f"{c}/v_{c}_g{i:02d}.mp4", "label": c,
             "split": "train" if i == 0 else ("test" if c in ("up", "down") else "val")}
            for c in ("left", "right", "up", "down") for i in range(2)]
    listing = write_list(motion_videos / "export_list.csv", rows)  # paths relative to the list
    invoke("build", listing, root / "ds", "--flow", "farneback", "--resize", "none", "--executor", "local",
           "--no-progress", "--max-frames", "5")  # parts of 5 frames: the export stitches them
    out = invoke("export", root / "ds", root / "mm", "--format", "rawframes")
    assert "8 video folders, 96 frames, 88 flow fields" in out
    return root / "ds", root / "mm"


# --- mmaction2's index arithmetic (mmaction/datasets/transforms/loading.py), reproduced ----------

def frame_inds(total_frames, clip_len, frame_interval, clip_offsets, start_index=1):
    """SampleFrames.transform with out_of_bound_opt='loop', then + start_index."""
    inds = np.asarray(clip_offsets)[:, None] + np.arange(clip_len)[None, :] * frame_interval
    return (np.mod(inds, total_frames) + start_index).astype(np.int32).ravel()


def train_offsets(total_frames, clip_len, frame_interval, num_clips):
    """Every offset SampleFrames._get_train_clips can draw (keep_tail_frames=False)."""
    ori = clip_len * frame_interval
    avg = (total_frames - ori + 1) // num_clips
    if avg > 0:
        return np.arange(num_clips * avg)  # base_offsets + randint(avg)
    if total_frames > max(num_clips, ori):
        return np.arange(total_frames - ori + 1)
    if avg == 0:
        return np.around(np.arange(num_clips) * (total_frames - ori + 1.0) / num_clips)
    return np.zeros(num_clips, int)


def eval_offsets(total_frames, clip_len, frame_interval, num_clips):
    """SampleFrames._get_test_clips (twice_sample=False, no target_fps)."""
    if clip_len == 1:
        avg = total_frames / float(num_clips)
        return np.arange(num_clips) * avg + avg / 2.0
    max_offset = max(total_frames - ((clip_len - 1) * frame_interval + 1), 0)
    if num_clips > 1:
        return np.round(np.arange(num_clips) * (max_offset / float(num_clips - 1)))
    return np.array([max_offset // 2])


def read_list(path):
    return [(d, int(n), int(label)) for d, n, label in (line.split() for line in path.read_text().splitlines())]


def requested_files(folder, total, clip_len, num_clips, test_mode, modality):
    offsets = (eval_offsets if test_mode else train_offsets)(total, clip_len, 1, num_clips)
    inds = frame_inds(total, clip_len, 1, offsets)
    if modality == "RGB":
        return [folder / RGB_TMPL.format(i) for i in inds]
    return [folder / FLOW_TMPL.format(c, i) for i in inds for c in "xy"]  # RawFrameDecode's x and y


# TSN configs: RGB 1x1x3 train / 25 test clips; flow clip_len 5, 3 train / 25 test clips.
PIPELINES = [("RGB", 1, 3, False), ("RGB", 1, 25, True), ("Flow", 5, 3, False), ("Flow", 5, 4, False),
             ("Flow", 5, 25, True)]


@pytest.mark.parametrize("modality,clip_len,num_clips,test_mode", PIPELINES)
def test_every_file_mmaction2_asks_for_exists(exported, modality, clip_len, num_clips, test_mode):
    _, mm = exported
    kind = "rawframes" if modality == "RGB" else "flow"
    for split in ("train", "val", "test"):
        for folder, total, label in read_list(mm / f"{split}_list_{kind}.txt"):
            for path in requested_files(mm / "rawframes" / folder, total, clip_len, num_clips, test_mode, modality):
                assert path.is_file(), path


def test_the_rgb_count_with_flow_is_the_reported_off_by_one(exported):
    """mmaction2's list builder writes the RGB count for flow too: its test pipeline then asks for
    flow_x_N, one past the last flow image; the flow list's count does not."""
    _, mm = exported
    folder, total, _ = read_list(mm / "train_list_rawframes.txt")[0]
    asked = requested_files(mm / "rawframes" / folder, total, 5, 25, True, "Flow")
    assert sorted({p.name for p in asked if not p.exists()}) == [f"flow_{c}_{total:05d}.jpg" for c in "xy"]


def count_like_mmaction2(folder, filename_tmpl, modality):
    """InferencerPackInput's total_frames for a rawframes folder: files matching the template."""
    import os
    import re

    pattern = f"^{filename_tmpl}$"
    if modality == "Flow":
        pattern = pattern.replace("{}", "x")
    pattern = pattern.replace(pattern[pattern.find("{"):pattern.find("}") + 1], "\\d+")
    return len([f for f in os.listdir(folder) if re.match(pattern, f)])


def test_mmaction2_counts_the_same_frames_as_the_lists(exported):
    _, mm = exported
    for kind, tmpl, modality in (("rawframes", RGB_TMPL, "RGB"), ("flow", FLOW_TMPL, "Flow")):
        for folder, total, _ in read_list(mm / f"train_list_{kind}.txt"):
            assert count_like_mmaction2(mm / "rawframes" / folder, tmpl, modality) == total


def test_folders_lists_and_bytes(exported):
    ds_path, mm = exported
    ds = open_dataset(ds_path)
    lines = [ln for sp in ("train", "val", "test") for ln in read_list(mm / f"{sp}_list_rawframes.txt")]
    assert len(read_list(mm / "val_list_rawframes.txt")) == len(read_list(mm / "test_list_flow.txt")) == 2
    assert sorted(d for d, _, _ in lines) == sorted(v.video_id for v in ds.videos())
    assert all(n == 12 for _, n, _ in lines)
    assert all(n == 11 for _, n, _ in read_list(mm / "train_list_flow.txt"))
    assert (mm / "label_map.txt").read_text().splitlines() == ["0 down", "1 left", "2 right", "3 up"]
    info = json.loads((mm / "export.json").read_text())
    assert (info["bound"], info["step"], info["start_index"], info["zero_motion"]) == (20.0, 1, 1, 128)
    for v in ds.videos():
        folder = mm / "rawframes" / v.video_id
        assert len(list(folder.iterdir())) == 12 + 2 * 11
        assert v.label_id == dict((d, lab) for d, _, lab in lines)[v.video_id]
        for part in ds.raw(v.video_id):  # RGB: the stored JPEG bytes, unchanged, 1-based
            meta = encode.load_meta(part[encode.META])
            for i, f in enumerate(meta["frames"]):
                assert (folder / RGB_TMPL.format(f["index"] + 1)).read_bytes() == part[encode.rgb_member(i)]


def test_flow_images_hold_the_stored_quantized_components(exported):
    ds_path, mm = exported
    s = open_dataset(ds_path).read("right_v_right_g00")
    folder = mm / "rawframes" / "right_v_right_g00"
    for i, f in enumerate(s.meta["flow_fields"]):
        k = f["from"] + 1  # flow_x_k is the motion from img_k to img_k+1
        x = cv2.imread(str(folder / FLOW_TMPL.format("x", k)), cv2.IMREAD_GRAYSCALE).astype(float)
        y = cv2.imread(str(folder / FLOW_TMPL.format("y", k)), cv2.IMREAD_GRAYSCALE).astype(float)
        q = encode.decode_flow_q(open_dataset(ds_path).raw("right_v_right_g00")[f["from"] // 5][
            encode.flow_member(f["from"] % 5)]).astype(float)
        assert np.abs(x - q[..., 0]).mean() < 0.5 and np.abs(y - q[..., 1]).mean() < 0.5  # one re-encode
        # the synthetic video moves right by 2 px per frame: d = q 2b/255 - b, zero motion at 128
        assert (x[8:-8, 8:-8] * 40 / 255 - 20).mean() == pytest.approx(2.0, abs=0.3)
        assert (y[8:-8, 8:-8] - 128).mean() == pytest.approx(0.0, abs=2)


def test_refusals(exported, tmp_path, motion_videos):
    ds_path, mm = exported
    res = CliRunner().invoke(cli, ["export", str(ds_path), str(mm)])
    assert res.exit_code != 0 and "already exists" in res.output
    res = CliRunner().invoke(cli, ["export", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert res.exit_code != 0 and "nope" in res.output
    invoke("build", motion_videos, tmp_path / "clips", "--flow", "dis", "--resize", "none", "--executor", "local",
           "--no-progress", "--clips", "1", "--clip-len", "2")
    res = CliRunner().invoke(cli, ["export", str(tmp_path / "clips"), str(tmp_path / "out2")])
    assert res.exit_code != 0 and "rawframes needs every frame" in res.output
