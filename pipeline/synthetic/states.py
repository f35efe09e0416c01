"""A synthetic state-change set: the class is what an object is before and after a change,
so no single frame tells it (benchmarks of models that compare a video's start with its end,
such as the Siamese precondition/effect network).

Each video is a still textured background with one disc on it. At a random moment (between
35% and 65% of the video) the state changes:

    red_to_green   a red disc turns green          green_to_red   a green disc turns red
    appears        a disc (red or green) appears   disappears     a disc (red or green) vanishes

Every frame of every class is a frame some other class also shows (a red disc, a green disc,
or no disc at all, on backgrounds drawn from the same textures), so appearance alone is at
best ambiguous; only the order of the two states separates the classes. Nothing moves: optical
flow sees only the instant of change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.synthetic.motion import texture, write_video

log = logging.getLogger(__name__)

STATE_CLASSES = ("red_to_green", "green_to_red", "appears", "disappears")
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60)}
# (before, after) per class; None: no disc. "any" is one colour, drawn per video.
STATES = {
    "red_to_green": ("red", "green"),
    "green_to_red": ("green", "red"),
    "appears": (None, "any"),
    "disappears": ("any", None),
}


@dataclass(frozen=True)
class StateVideo:
    """One video's draw: the disc's centre and radius, its colours before/after, the change frame."""

    centre: tuple[int, int]
    radius: int
    before: str | None
    after: str | None
    change_at: int


def draw_video(kind: str, num_frames: int, height: int, width: int, rng: np.random.Generator) -> StateVideo:
    """Random disc placement, colour and change time for a video of class `kind`."""
    if kind not in STATES:
        raise ValueError(f"unknown state-change class {kind!r}; choose one of {STATE_CLASSES}")
    radius = max(3, int(min(height, width) * rng.uniform(0.12, 0.2)))
    centre = (int(rng.integers(radius, width - radius)), int(rng.integers(radius, height - radius)))
    colour = str(rng.choice(sorted(COLOURS)))
    before, after = (colour if s == "any" else s for s in STATES[kind])
    change_at = int(round(num_frames * rng.uniform(0.35, 0.65)))
    return StateVideo(centre=centre, radius=radius, before=before, after=after, change_at=change_at)


def state_frames(video: StateVideo, background: np.ndarray, num_frames: int) -> Iterator[np.ndarray]:
    """The frames of `video` on `background` (RGB uint8): its first state until change_at, then the second."""
    for t in range(num_frames):
        state = video.before if t < video.change_at else video.after
        frame = background.copy()
        if state is not None:
            cv2.circle(frame, video.centre, video.radius, COLOURS[state], thickness=-1, lineType=cv2.LINE_AA)
        yield frame


def make_state_change_dataset(
    root: str | Path,
    *,
    classes: tuple[str, ...] = STATE_CLASSES,
    per_class: int = 3,
    num_frames: int = 32,
    size: tuple[int, int] = (96, 72),
    fps: float = 25.0,
    seed: int = 0,
) -> Path:
    """Write a folder-per-class state-change dataset; video i of every class uses background
    texture seed + i, so backgrounds carry no label information."""
    root = Path(root)
    w, h = size
    rng = np.random.default_rng(seed)
    for kind in classes:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            video = draw_video(kind, num_frames, h, w, rng)
            frames = state_frames(video, texture(h, w, seed + i), num_frames)
            write_video(root / kind / f"v_{kind}_g{i:02d}.mp4", frames, fps)
    log.info("wrote %d state-change videos under %s", len(classes) * per_class, root)
    return root
