"""The binding and long-range sets: the motion each class promises, and flow that cannot tell A from B."""
from __future__ import annotations

import csv
import random

import cv2
import numpy as np
import pytest

from pipeline.synthetic import sets
from pipeline.synthetic.sets import SetConfig


def decoded_frames(path, size: tuple[int, int]) -> np.ndarray:
    """The RGB frames of a written video, decoded by ffmpeg: (T, H, W, 3)."""
    import subprocess

    from pipeline.decode import resolve_ffmpeg

    raw = subprocess.run([resolve_ffmpeg(), "-loglevel", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt",
                          "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, size[1], size[0], 3)


@pytest.fixture(scope="module")
def pictures():
    return sets.photos()


def test_tints_add_colour_but_no_grey():
    a = sets.tinted_texture(16, "A", 50.0, seed=3)
    b = sets.tinted_texture(16, "B", 50.0, seed=3)
    grey = lambda img: cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(int)  # noqa: E731 - what flow sees
    assert np.abs(grey(a) - grey(b)).max() <= 1
    assert a[..., 0].mean() - b[..., 0].mean() > 90  # A is red, B cyan: the spatial stream can tell them
    assert a.min() > 0 and a.max() < 255 and b.min() > 0 and b.max() < 255  # nothing clipped


@pytest.mark.parametrize("label", sets.BINDING_CLASSES)
def test_binding_paths_move_a_towards_the_class_and_never_touch(label):
    cfg = SetConfig(num_frames=24, size=(64, 64), object_size=16, speed=1)
    for seed in range(20):
        rng = random.Random(seed)
        dir_b = rng.choice([d for d in sets.BINDING_CLASSES if d != label])
        a, b = sets.binding_paths(label, dir_b, cfg, rng)
        assert (np.diff(a, axis=0) == sets.DIRECTIONS[label]).all()
        assert (np.diff(b, axis=0) == sets.DIRECTIONS[dir_b]).all()
        assert sets.apart(a, b, 16)
        for path in (a, b):
            assert path.min() >= 0 and path.max() <= 64 - 16


def test_binding_mid_positions_do_not_depend_on_the_direction():
    cfg = SetConfig(num_frames=24, size=(64, 64), object_size=16)
    mids = {d: sets.straight_path((20.0, 30.0), d, cfg)[[11, 12]].mean(0) for d in sets.DIRECTIONS}
    assert all(np.allclose(m, (20.0, 30.0), atol=1) for m in mids.values())


@pytest.mark.parametrize("label", sets.LONG_RANGE_CLASSES)
def test_long_range_paths_reverse_once_between_a_quarter_and_three_quarters(label):
    cfg = SetConfig(num_frames=48, size=(64, 64), object_size=12)
    for seed in range(20):
        path = sets.long_range_path(label, cfg, random.Random(seed))
        dx = np.diff(path[:, 0])
        assert set(np.abs(dx)) == {1} and (np.diff(path[:, 1]) == 0).all()
        assert path[:, 0].min() >= 0 and path[:, 0].max() <= 64 - 12
        turns = np.flatnonzero(np.diff(dx))
        first = "right" if dx[0] > 0 else "left"
        if "_then_" in label:
            assert len(turns) == 1 and 48 // 4 - 1 <= turns[0] <= 3 * 48 // 4
            assert label == f"{first}_then_{'left' if first == 'right' else 'right'}"
        else:
            assert len(turns) == 0 and label == first


def test_config_refuses_objects_that_cannot_fit():
    with pytest.raises(ValueError, match="does not fit"):
        SetConfig(num_frames=60, size=(64, 64), object_size=16)
    with pytest.raises(ValueError, match="unknown set"):
        sets.write_set("/nonexistent", "nope", SetConfig(), [np.zeros((8, 8, 3), np.uint8)])


def test_a_built_binding_set_has_the_flow_its_labels_promise(tmp_path, pictures):
    """Write, build with Farneback, read back: inside A's square the flow points towards the class, in B's
    towards B's direction."""
    from pipeline import open_dataset
    from test_clips import flowshard

    cfg = SetConfig(per_class=1, test_per_class=1, num_frames=12, size=(64, 64), object_size=16, speed=2)
    listing = sets.write_set(tmp_path / "set", "binding", cfg, pictures)
    with open(listing) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["split"] for r in rows} == {"train", "test"}
    assert sorted({r["label"] for r in rows}) == sorted(sets.BINDING_CLASSES)
    flowshard("build", str(listing), str(tmp_path / "ds"), "--flow", "farneback", "--resize", "none",
              "--executor", "local", "--no-progress")
    ds = open_dataset(tmp_path / "ds")
    written = decoded_frames(tmp_path / "set" / rows[0]["path"], cfg.size)
    rng = random.Random(f"binding/{cfg.seed}/{rows[0]['label']}/0")
    drawn = sets.binding_video(rows[0]["label"], cfg, pictures, rng)
    grey = lambda f: cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY).astype(int)  # noqa: E731
    assert max(np.abs(grey(a) - grey(b)).max() for a, b in zip(written, drawn)) <= 1  # lossless but for rounding
    for v in ds.videos():
        s = ds.read(v.video_id)
        label = s.meta["label"]
        rng = random.Random(f"binding/{cfg.seed}/{label}/{int(v.video_id[-3:])}")
        dir_b = rng.choice([d for d in sets.BINDING_CLASSES if d != label])
        path_a, path_b = sets.binding_paths(label, dir_b, cfg, rng)
        t = 5
        for path, direction in ((path_a, label), (path_b, dir_b)):
            x, y = (int(c) for c in path[t])
            inner = s.flow[t, y + 4:y + 12, x + 4:x + 12].reshape(-1, 2).mean(0)
            along = np.array(sets.DIRECTIONS[direction], np.float32)
            across = along[::-1]
            # Farneback smooths the square's 2 px/frame into its still surround: the direction is exact,
            # the size about two thirds of the truth.
            assert inner @ along > 0.5 * cfg.speed and abs(inner @ across) < 0.3, (label, direction, inner)
