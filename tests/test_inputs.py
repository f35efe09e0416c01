"""Input discovery: folder per class, CSV/Parquet lists, UCF101/HMDB51 split files, keys."""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.inputs import discover, make_key

SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


def _touch(path: Path, data: bytes = b"") -> Path:
    """An empty placeholder: discovery never decodes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize("source, key", [
    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "ApplyEyeMakeup_v_ApplyEyeMakeup_g01_c01"),
    ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "brush_hair_April_09_brush_hair_u_nm_np1_ba_goo_0"),
    ("a b/it's \"quoted\"; rm -rf.mp4", "a_b_it_s_quoted_rm_-rf"),
    ("dots.in.name/x.y.z.mkv", "dots_in_name_x_y_z"),
    ("café/naïve ñ.mp4", "caf_na_ve"),
    ("-leading/-dash.mp4", "leading_-dash"),
    ("windows\\path\\v.avi", "windows_path_v"),
    ("s3://bucket/dir/v.mp4?X-Amz-Signature=abc", "s3_bucket_dir_v"),
    ("dir.v2/noext", "dir_v2_noext"),
    ("...", "video"),
    ("日本語.mp4", "video"),
])
def test_make_key_sanitizes(source, key):
    assert make_key(source) == key
    assert SAFE.match(make_key(source))


def test_make_key_never_has_dots_slashes_or_repeats():
    for source in ["../../etc/passwd", "a//b..c.avi", "  spaces  .mp4", "a__b.avi", "#(!)&.avi"]:
        key = make_key(source)
        assert SAFE.match(key) and "__" not in key and "." not in key and "/" not in key


# --------------------------------------------------------------------------- (a) folders


def test_folder_per_class(tmp_path, caplog):
    root = tmp_path / "data"
    _touch(root / "Walk" / "v_walk_01.avi")
    _touch(root / "Walk" / "sub" / "deeper.MP4")  # recursion below the class folder, any case
    _touch(root / "Run" / "v_run_01.mkv")
    _touch(root / "Run" / ".hidden.mp4")
    _touch(root / "Run" / "notes.txt")
    _touch(root / ".cache" / "x.mp4")
    _touch(root / "Empty" / "readme.md")
    _touch(root / "loose.mp4")
    with caplog.at_level(logging.WARNING, logger="pipeline.inputs"):
        refs, labels = discover(str(root))
    assert labels == {"Run": 0, "Walk": 1}
    assert [r.source for r in refs] == ["Run/v_run_01.mkv", "Walk/sub/deeper.MP4", "Walk/v_walk_01.avi"]
    assert [r.key for r in refs] == sorted(r.key for r in refs)
    walk = next(r for r in refs if r.source == "Walk/v_walk_01.avi")
    assert walk.uri == str(root / "Walk" / "v_walk_01.avi") and Path(walk.uri).is_absolute()
    assert (walk.label, walk.label_id, walk.split, walk.key) == ("Walk", 1, "train", "Walk_v_walk_01")
    assert "loose.mp4" in caplog.text


def test_folder_default_split_and_real_videos(motion_videos):
    refs, labels = discover(str(motion_videos), default_split="test")
    assert labels == {"down": 0, "left": 1, "right": 2, "up": 3}
    assert len(refs) == 8 and {r.split for r in refs} == {"test"}
    assert all(Path(r.uri).is_file() and labels[r.label] == r.label_id for r in refs)


def test_colliding_keys_get_hashes(tmp_path):
    root = tmp_path / "data"
    for name in ["a b.mp4", "a_b.mp4", "a;b.avi", "other.mp4"]:
        _touch(root / "cls" / name)
    refs, _ = discover(str(root))
    by_source = {r.source: r.key for r in refs}
    for source in ["cls/a b.mp4", "cls/a_b.mp4", "cls/a;b.avi"]:
        digest = hashlib.sha1(source.encode()).hexdigest()[:8]
        assert by_source[source] == f"cls_a_b-{digest}"
    assert by_source["cls/other.mp4"] == "cls_other"
    assert len(set(by_source.values())) == 4
    assert discover(str(root))[0] == refs  # deterministic


def test_empty_folder_and_bad_arguments(tmp_path):
    (tmp_path / "cls").mkdir()
    with pytest.raises(ValueError, match="no videos"):
        discover(str(tmp_path))
    with pytest.raises(ValueError, match="does-not-exist"):
        discover(str(tmp_path / "does-not-exist"))
    with pytest.raises(ValueError, match="split=4"):
        discover(str(tmp_path), split=4)
    with pytest.raises(ValueError, match="'holdout'"):
        discover(str(tmp_path), default_split="holdout")
    with pytest.raises(ValueError, match="list.txt"):
        discover(str(_touch(tmp_path / "list.txt")))


# --------------------------------------------------------------------------- (b) lists


def test_csv_list_resolves_relative_to_its_folder(tmp_path):
    lists = tmp_path / "lists"
    _touch(tmp_path / "videos" / "a.mp4")
    csv = lists / "videos.csv"
    lists.mkdir()
    csv.write_text("path,label,split\n"
                   "../videos/a.mp4,jump,train\n"
                   "/abs/elsewhere/b.avi,sit,test\n"
                   "s3://bucket/c.mp4,jump,val\n"
                   "0001.mp4,7,train\n")
    refs, labels = discover(str(csv))
    assert labels == {"7": 0, "jump": 1, "sit": 2}
    by_source = {r.source: r for r in refs}
    assert by_source["../videos/a.mp4"].uri == str(tmp_path / "videos" / "a.mp4")
    assert by_source["/abs/elsewhere/b.avi"].uri == "/abs/elsewhere/b.avi"
    assert by_source["s3://bucket/c.mp4"].uri == "s3://bucket/c.mp4"
    assert by_source["0001.mp4"].uri == str(lists / "0001.mp4") and by_source["0001.mp4"].label == "7"
    assert [by_source[s].split for s in ("../videos/a.mp4", "/abs/elsewhere/b.avi", "s3://bucket/c.mp4")] == \
        ["train", "test", "val"]
    assert by_source["../videos/a.mp4"].key == "videos_a"
    assert all(SAFE.match(r.key) for r in refs)


def test_csv_without_split_uses_default(tmp_path):
    csv = tmp_path / "l.csv"
    csv.write_text("path,label\nx.mp4,a\ny.mp4,b\n")
    refs, labels = discover(str(csv), default_split="test")
    assert {r.split for r in refs} == {"test"} and labels == {"a": 0, "b": 1}


def test_parquet_list(tmp_path):
    path = tmp_path / "sub" / "list.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"path": ["v/1.mp4", "v/2.mp4"], "label": ["b", "a"], "split": ["train", "test"]}), path)
    refs, labels = discover(str(path))
    assert labels == {"a": 0, "b": 1}
    assert [(r.key, r.uri, r.label_id, r.split) for r in refs] == [
        ("v_1", str(tmp_path / "sub" / "v" / "1.mp4"), 1, "train"),
        ("v_2", str(tmp_path / "sub" / "v" / "2.mp4"), 0, "test")]


def test_list_errors(tmp_path):
    no_label = tmp_path / "no_label.csv"
    no_label.write_text("path,class\nx.mp4,a\n")
    with pytest.raises(ValueError, match=r"no_label\.csv.*'label'"):
        discover(str(no_label))
    no_path = tmp_path / "no_path.parquet"
    pq.write_table(pa.table({"file": ["x.mp4"], "label": ["a"]}), no_path)
    with pytest.raises(ValueError, match=r"no_path\.parquet.*'path'"):
        discover(str(no_path))
    empty = tmp_path / "empty.csv"
    empty.write_text("path,label\n")
    with pytest.raises(ValueError, match="empty"):
        discover(str(empty))
    bad_split = tmp_path / "bad_split.csv"
    bad_split.write_text("path,label,split\nx.mp4,a,holdout\n")
    with pytest.raises(ValueError, match="'holdout'"):
        discover(str(bad_split))
    twice = tmp_path / "twice.csv"
    twice.write_text("path,label\nx.mp4,a\nx.mp4,b\n")
    with pytest.raises(ValueError, match="more than once"):
        discover(str(twice))


# --------------------------------------------------------------------------- (c) split files


def _ucf_root(root: Path, *, list_dir: str = "ucfTrainTestlist", video_dir: str = "UCF-101") -> Path:
    lists = root / list_dir if list_dir else root
    videos = root / video_dir if video_dir else root
    lists.mkdir(parents=True, exist_ok=True)
    # The official files use CRLF line ends.
    (lists / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 Basketball\r\n3 HandstandPushups\r\n")
    (lists / "trainlist01.txt").write_bytes(b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
                                            b"HandstandPushups/v_HandStandPushups_g08_c01.avi 3\r\n")
    (lists / "testlist01.txt").write_bytes(b"Basketball/v_Basketball_g01_c01.avi\r\n"
                                           b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n")
    for rel in ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "HandstandPushups/v_HandStandPushups_g08_c01.avi",
                "Basketball/v_Basketball_g01_c01.avi"]:  # g01_c01 of ApplyEyeMakeup is missing on disk
        _touch(videos / rel)
    return root


@pytest.mark.parametrize("list_dir, video_dir", [("ucfTrainTestlist", "UCF-101"), ("", "")])
def test_ucf101_split_files(tmp_path, caplog, list_dir, video_dir):
    root = _ucf_root(tmp_path / "ucf", list_dir=list_dir, video_dir=video_dir)
    with caplog.at_level(logging.WARNING, logger="pipeline.inputs"):
        refs, labels = discover(str(root), split=1)
    assert labels == {"ApplyEyeMakeup": 0, "Basketball": 1, "HandstandPushups": 2}
    prefix = f"{video_dir}/" if video_dir else ""
    got = {(r.source, r.label, r.label_id, r.split) for r in refs}
    assert got == {(prefix + "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup", 0, "train"),
                   (prefix + "HandstandPushups/v_HandStandPushups_g08_c01.avi", "HandstandPushups", 2, "train"),
                   (prefix + "Basketball/v_Basketball_g01_c01.avi", "Basketball", 1, "test"),
                   (prefix + "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "ApplyEyeMakeup", 0, "test")}
    missing = next(r for r in refs if r.source.endswith("g01_c01.avi") and r.label == "ApplyEyeMakeup")
    assert missing.uri == str(root / prefix / "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi")
    assert not Path(missing.uri).exists()  # kept, so the worker reports it as an error row
    assert "1 of 4 videos" in caplog.text
    assert [r.key for r in refs] == sorted(r.key for r in refs) and all(SAFE.match(r.key) for r in refs)


def test_split_files_ignored_without_split(tmp_path, caplog):
    root = _ucf_root(tmp_path / "ucf", list_dir="", video_dir="")
    with caplog.at_level(logging.INFO, logger="pipeline.inputs"):
        refs, labels = discover(str(root))
    assert labels == {"ApplyEyeMakeup": 0, "Basketball": 1, "HandstandPushups": 2}
    assert len(refs) == 3 and {r.split for r in refs} == {"train"}
    assert "split=1..3" in caplog.text


def test_hmdb51_split_files(tmp_path, caplog):
    root = tmp_path / "hmdb"
    lists = root / "testTrainMulti_7030_splits"
    lists.mkdir(parents=True)
    (lists / "brush_hair_test_split2.txt").write_text(
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \nBlonde_being_brushed_(1)_brush_hair_f_nm_np2_ri_med_0.avi 2 \n"
        "unused_clip.avi 0 \n")
    (lists / "cartwheel_test_split2.txt").write_text("#Bodyguard-Netherlands_cartwheel_f_cm_np1_ba_med_0.avi 2\n")
    (lists / "cartwheel_test_split1.txt").write_text("other.avi 1\n")  # another split: not read
    for rel in ["brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
                "brush_hair/Blonde_being_brushed_(1)_brush_hair_f_nm_np2_ri_med_0.avi",
                "cartwheel/#Bodyguard-Netherlands_cartwheel_f_cm_np1_ba_med_0.avi"]:
        _touch(root / "hmdb51_org" / rel)
    refs, labels = discover(str(root), split=2)
    assert labels == {"brush_hair": 0, "cartwheel": 1}
    assert [(r.key, r.label_id, r.split) for r in refs] == [
        ("hmdb51_org_brush_hair_April_09_brush_hair_u_nm_np1_ba_goo_0", 0, "train"),
        ("hmdb51_org_brush_hair_Blonde_being_brushed_1_brush_hair_f_nm_np2_ri_med_0", 0, "test"),
        ("hmdb51_org_cartwheel_Bodyguard-Netherlands_cartwheel_f_cm_np1_ba_med_0", 1, "test")]
    assert all(Path(r.uri).is_file() for r in refs)
    assert refs[2].source == "hmdb51_org/cartwheel/#Bodyguard-Netherlands_cartwheel_f_cm_np1_ba_med_0.avi"
    assert "not on disk" not in caplog.text


def test_split_requested_without_split_files(tmp_path):
    _touch(tmp_path / "cls" / "a.mp4")
    with pytest.raises(ValueError, match=r"split=2.*trainlist02\.txt.*_test_split2\.txt"):
        discover(str(tmp_path), split=2)
