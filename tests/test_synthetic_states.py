"""The state-change set: before and after define the class; no frame alone does."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.synthetic import states as ss
from pipeline.decode import DecodeConfig, iter_frames


def disc_colour(frame: np.ndarray, video: ss.StateVideo) -> str | None:
    """The disc's colour at its centre, or None when the background shows there."""
    x, y = video.centre
    patch = frame[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(0)
    for name, rgb in ss.COLOURS.items():
        if np.abs(patch - rgb).max() < 30:
            return name
    return None


@pytest.mark.parametrize("kind", ss.STATE_CLASSES)
def test_each_class_shows_its_before_and_after_state_around_the_change(kind):
    rng = np.random.default_rng(3)
    background = np.full((48, 64, 3), 128, np.uint8)
    for _ in range(5):
        video = ss.draw_video(kind, 20, 48, 64, rng)
        assert 7 <= video.change_at <= 13
        frames = list(ss.state_frames(video, background, 20))
        states = [disc_colour(f, video) for f in frames]
        assert states[:video.change_at] == [video.before] * video.change_at
        assert states[video.change_at:] == [video.after] * (20 - video.change_at)
        before, after = ss.STATES[kind]
        assert (video.before is None) == (before is None) and (video.after is None) == (after is None)
        if kind in ("red_to_green", "green_to_red"):
            assert (video.before, video.after) == (before, after)


def test_no_single_state_belongs_to_one_class_only():
    seen: dict[str | None, set[str]] = {}
    rng = np.random.default_rng(0)
    for kind in ss.STATE_CLASSES:
        for _ in range(20):
            v = ss.draw_video(kind, 30, 48, 64, rng)
            for state in (v.before, v.after):
                seen.setdefault(state, set()).add(kind)
    assert seen[None] == {"appears", "disappears"}
    assert all(len(classes) >= 3 for state, classes in seen.items() if state is not None)


def test_dataset_folders_and_decodable_videos(tmp_path):
    root = ss.make_state_change_dataset(tmp_path / "states", per_class=1, num_frames=12, size=(64, 48))
    videos = sorted(root.rglob("*.mp4"))
    assert [p.parent.name for p in videos] == sorted(ss.STATE_CLASSES)
    frames = [f for f, _ in iter_frames(str(videos[0]), DecodeConfig(resize="none"))]
    assert len(frames) == 12 and frames[0].shape == (48, 64, 3)
    first, last = frames[0].astype(int), frames[-1].astype(int)
    assert np.abs(first - last).max() > 100  # appears: a disc where there was background
    with pytest.raises(ValueError, match="unknown state-change class 'melts'"):
        ss.draw_video("melts", 10, 48, 64, np.random.default_rng(0))
