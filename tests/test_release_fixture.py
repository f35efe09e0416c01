"""A dataset, its unit records, manifests and a checkpoint made by release 0.1 (tests/fixtures/release-0.1,
written by tests/fixtures/make_release_fixture.py) must keep reading, verifying, resuming and evaluating."""
import json
import shutil
from pathlib import Path

import pytest

from pipeline import open_dataset
from pipeline.synthetic import motion
from tests.helpers import flowshard

FIXTURE = Path(__file__).parent / "fixtures" / "release-0.1"
VERSION = "3e86e472ea785371"
BUILD_ARGS = ["--flow", "farneback", "--resize", "none", "--shard-samples", "2", "--executor", "local",
              "--no-progress"]


@pytest.fixture
def release(tmp_path, monkeypatch):
    """A writable copy of the fixture; the build's relative paths resolve inside it."""
    root = tmp_path / "release"
    shutil.copytree(FIXTURE, root)
    monkeypatch.chdir(root)
    return root


def same_tools(dataset) -> bool:
    """True when `dataset` was made by the decode/flow/JPEG tools that made the fixture's bytes."""
    recorded = json.loads((FIXTURE / "tools.json").read_text())
    return open_dataset(dataset).info["config"]["tools"] == recorded


def test_reads_every_video_of_the_old_release(release):
    ds = open_dataset("dataset")
    assert ds.version == VERSION
    videos = ds.videos()
    assert sorted(v.label for v in videos) == ["left", "left", "right", "right"]
    for v in videos:
        s = ds.read(v.video_id)
        assert s.frames.shape == (10, 32, 48, 3) and s.flow.shape == (9, 32, 48, 2)
        mean_dx = s.flow[:, 8:-8, 8:-8, 0].mean()
        assert mean_dx == pytest.approx(-2 if v.label == "left" else 2, abs=0.5)


def test_verifies_by_version_id(release):
    out = flowshard("verify", f"dataset@{VERSION[:8]}")
    assert "ok" in out and "2 shards" in out


def test_resumes_and_extends_the_old_build(release):
    flowshard("build", "list.csv", "dataset", *BUILD_ARGS)  # the same build again: nothing lost
    frames = list(motion.moving_frames("left", 10, 32, 48, speed=2.0, seed=9))
    motion.write_video("videos/left/v_left_g09.mp4", frames, 25.0)
    rows = Path("list.csv").read_text() + "videos/left/v_left_g09.mp4,left,train\n"
    Path("list.csv").write_text(rows)
    out = flowshard("build", "list.csv", "dataset", *BUILD_ARGS)
    ds = open_dataset("dataset")
    assert len(ds.videos()) == 5 and ds.version != VERSION
    if same_tools("dataset"):  # stored samples are reused only where the same tools would make the same bytes
        assert "2 unit(s) already done; 1 video(s) computed" in out, out
    assert "ok" in flowshard("verify", "dataset")
    assert "ok" in flowshard("verify", f"dataset@{VERSION}")


def test_evaluates_the_old_checkpoint(release, tmp_path):
    flowshard("evaluate", "dataset", "run/last.pt", "--split", "test", "--device", "cpu", "--workers", "0",
              "--no-progress", "--json", tmp_path / "m.json")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0.0 <= metrics["rgb"]["video_top1"] <= 1.0 and metrics["flow"] is None
