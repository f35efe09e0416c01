"""Simonyan & Zisserman's mean flow subtraction on stacked flow inputs."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.synthetic import motion as synthetic
from pipeline.flow.opencv import Farneback
from training.mean_flow import subtract_mean_flow
from training.transforms import interleave


def test_each_field_loses_its_own_mean_vector():
    rng = np.random.default_rng(0)
    fields = rng.normal(size=(3, 8, 10, 2)).astype(np.float32) + np.array([[[[2.0, -1.0]]], [[[0.0, 3.0]]],
                                                                           [[[-4.0, 0.5]]]], np.float32)
    stack = interleave(fields)  # (6, 8, 10): x0 y0 x1 y1 x2 y2
    out = subtract_mean_flow(stack)
    assert np.allclose(out.mean(axis=(1, 2)), 0, atol=1e-6)
    for l in range(3):  # noqa: E741
        mean = fields[l].reshape(-1, 2).mean(0)
        assert np.allclose(out[2 * l], fields[l, ..., 0] - mean[0], atol=1e-5)
        assert np.allclose(out[2 * l + 1], fields[l, ..., 1] - mean[1], atol=1e-5)
    assert stack.mean() != 0  # the input is left as it was


def test_batches_of_views_and_snippets_and_linearity():
    x = np.random.default_rng(1).normal(size=(2, 3, 4, 6, 6)).astype(np.float32) + 5
    out = subtract_mean_flow(x)
    assert out.shape == x.shape and np.allclose(out.mean(axis=(-2, -1)), 0, atol=1e-5)
    assert np.allclose(subtract_mean_flow(x / 128.0), out / 128.0, atol=1e-6)  # normalised values alike
    with pytest.raises(ValueError, match="2L, H, W"):
        subtract_mean_flow(np.zeros((3, 4, 4)))


def test_a_pan_is_removed_and_local_motion_stays():
    """A textured scene panning right, with a patch moving down on it: after subtraction the
    pan is gone and the patch's motion relative to the scene remains."""
    frames = list(synthetic.moving_frames("right", 2, 64, 64, speed=3.0, seed=2))
    a, b = (f.mean(-1).astype(np.uint8) for f in frames)
    patch = synthetic.texture(16, 16, seed=9).mean(-1).astype(np.uint8)
    a = a.copy()
    b = b.copy()
    a[20:36, 24:40] = patch
    b[23:39, 27:43] = patch  # the patch moves (+3, +3): 3 down relative to the panning scene
    flow = Farneback()(a[None], b[None])[0]
    out = subtract_mean_flow(interleave(flow[None]))
    bg = np.ones((64, 64), bool)
    bg[14:45, 18:49] = False
    bg[:6] = bg[-6:] = False
    bg[:, :6] = bg[:, -6:] = False
    assert abs(flow[..., 0][bg].mean() - 3.0) < 0.5  # the pan, before
    assert abs(out[0][bg].mean()) < 0.5 and abs(out[1][bg].mean()) < 0.5  # gone after
    assert out[1][26:32, 30:36].mean() > 1.5  # the patch still moves down
