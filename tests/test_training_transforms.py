"""Paired transforms: the flip negates flow x only, the two streams' crops stay aligned."""
from __future__ import annotations

import random

import numpy as np
import pytest

from training import transforms as T
from training.transforms import TransformConfig


def coordinate_item(h: int = 48, w: int = 64, length: int = 3):
    """RGB whose red channel is x and green y; flow whose x field is x and y field is y (+ field index)."""
    ys, xs = np.mgrid[0:h, 0:w]
    rgb = np.stack([xs * 2, ys * 2, np.full_like(xs, 7)], axis=-1).astype(np.uint8)[None, None]
    flow = np.stack([np.stack([xs * 2 + i, ys * 2 + i], axis=-1) for i in range(length)]).astype(np.uint8)
    return rgb, T.interleave(flow)[None]  # (K=1, F=1, H, W, 3), K=1 x (2L, H, W)


def test_interleave_orders_channels_x_y_per_time_step():
    flow = np.zeros((3, 2, 2, 2), np.uint8)
    for t in range(3):
        flow[t, ..., 0], flow[t, ..., 1] = 10 * t, 10 * t + 1
    stacked = T.interleave(flow)
    assert stacked.shape == (6, 2, 2) and stacked[:, 0, 0].tolist() == [0, 1, 10, 11, 20, 21]


def test_stored_planes_stack_to_the_same_channels_as_decode_flow_q():
    from pipeline import encode
    from pipeline.encode import decode_flow_plane

    rng = np.random.default_rng(0)
    members = [encode.encode_flow_q(rng.integers(0, 256, (24, 32, 2), dtype=np.uint8)) for _ in range(4)]
    planes = [decode_flow_plane(m) for m in members]
    reference = T.interleave(np.stack([encode.decode_flow_q(m) for m in members]))
    np.testing.assert_array_equal(T.stack_fields(planes), reference)
    view = T.FieldPlanes(planes)  # the loader's zero-copy form
    assert view.shape == reference.shape
    np.testing.assert_array_equal(np.asarray(view), reference)
    box = T.Box(3, 2, 20, 18)
    for flip in (False, True):
        np.testing.assert_array_equal(T._flow_view(view, box, flip, 16), T._flow_view(reference, box, flip, 16))


def test_flow_normalization_maps_128_to_zero():
    x = T.normalize_flow(np.array([[[0, 128, 255]]], np.uint8))
    assert x[0, 0].tolist() == pytest.approx([-1.0, 0.0, 127 / 128])


def test_hflip_negates_x_only_and_mirrors_every_channel():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5, 7)).astype(np.float32)
    f = T.hflip_flow(x)
    np.testing.assert_array_equal(f[0::2], -x[0::2, :, ::-1])  # x: mirrored and negated
    np.testing.assert_array_equal(f[1::2], x[1::2, :, ::-1])  # y: mirrored, sign kept
    np.testing.assert_array_equal(T.hflip_rgb(x[:3]), x[:3, :, ::-1])
    # Flipping twice is the identity; zero motion stays exactly zero.
    np.testing.assert_array_equal(T.hflip_flow(f), x)
    assert T.hflip_flow(np.zeros((2, 1, 1), np.float32)).tolist() == [[[0.0]], [[0.0]]]


def test_train_views_flip_negates_x_of_real_motion():
    """A field moving right (+x) and down (+y) moves left and down after the flip."""
    fields = np.zeros((2, 32, 32, 2), np.uint8)
    fields[..., 0], fields[..., 1] = 160, 140  # x = +32/128, y = +12/128
    q = T.interleave(fields)[None]
    cfg = TransformConfig(crop_size=32, scales=(1.0,))
    flips = {}
    for seed in range(20):
        _, flow = T.train_views(None, q, cfg, random.Random(seed))
        flips[bool(flow[0, 0, 0].mean() < 0)] = flow[0, 0]
    assert set(flips) == {True, False}  # both outcomes drawn
    assert flips[True][0::2].mean() == pytest.approx(-32 / 128) and flips[True][1::2].mean() == pytest.approx(12 / 128)
    assert flips[False][0::2].mean() == pytest.approx(32 / 128) and flips[False][1::2].mean() == pytest.approx(12 / 128)


def _decode_coords(rgb: np.ndarray, flow: np.ndarray):
    """Back to pixel coordinates: red/green of the RGB view, x/y channels of the first field."""
    red = (rgb[0] * T.IMAGENET_STD[0] + T.IMAGENET_MEAN[0]) * 255
    green = (rgb[1] * T.IMAGENET_STD[1] + T.IMAGENET_MEAN[1]) * 255
    fx, fy = flow[0] * 128 + 128, flow[1] * 128 + 128
    return red, green, fx, fy


@pytest.mark.parametrize("seed", range(12))
def test_train_crops_of_both_streams_stay_aligned(seed):
    rgb, flow = coordinate_item()
    cfg = TransformConfig(crop_size=40)
    out_rgb, out_flow = T.train_views(rgb, flow, cfg, random.Random(seed))
    assert out_rgb.shape == (1, 1, 3, 40, 40) and out_flow.shape == (1, 1, 6, 40, 40)
    red, green, fx, fy = _decode_coords(out_rgb[0, 0], out_flow[0, 0])
    flipped = red[0, 0] > red[0, -1]
    # Same pixels in both streams: flow y equals RGB green; flow x equals RGB red, negated if flipped.
    # (atol: the uint8 resize rounds each channel on its own.)
    np.testing.assert_allclose(fy, green, atol=1.01)
    np.testing.assert_allclose(fx, (256 - red) if flipped else red, atol=1.01)
    # Later fields keep their own values (+1 per field), so the stack is in time order.
    np.testing.assert_allclose(out_flow[0, 0][3] * 128 + 128, green + 1, atol=1.01)


def test_every_snippet_and_frame_shares_one_crop_and_keeps_its_time_order():
    rgb, flow = coordinate_item()
    # K = 2 snippets of F = 3 frames: frame j of snippet k is the coordinate image + 10 * (3k + j).
    frames = np.stack([np.stack([rgb[0, 0] + np.uint8(10 * (3 * k + j)) for j in range(3)]) for k in range(2)])
    stacks = [flow[0], flow[0] + np.uint8(50)]
    for seed in range(6):
        out_rgb, out_flow = T.train_views(frames, stacks, TransformConfig(crop_size=32), random.Random(seed))
        assert out_rgb.shape == (1, 2, 9, 32, 32) and out_flow.shape == (1, 2, 6, 32, 32)
        base = out_rgb[0, 0, 0:3]
        for k in range(2):
            for j in range(3):
                shift = 10 * (3 * k + j) / 255 / T.IMAGENET_STD[1]
                level = 1.01 / 255 / T.IMAGENET_STD[1]  # one uint8 level of resize rounding
                np.testing.assert_allclose(out_rgb[0, k, 3 * j + 1], base[1] + shift, atol=level)  # same crop
        np.testing.assert_allclose(out_flow[0, 1, 1], out_flow[0, 0, 1] + 50 / 128, atol=1.01 / 128)


@pytest.mark.parametrize("flip", [False, True])
def test_fast_views_equal_the_reference_definitions(flip):
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    stack = rng.integers(0, 256, (6, 48, 64), dtype=np.uint8)
    box = T.Box(5, 3, 40, 36)
    rgb = T.normalize_rgb(T.crop_resize(frame, box, 32))
    flow = T.normalize_flow(T.crop_resize_planes(stack, box, 32))
    if flip:
        rgb, flow = T.hflip_rgb(rgb), T.hflip_flow(flow)
    np.testing.assert_allclose(T._rgb_view(frame, box, flip, 32), rgb, atol=1e-6)
    np.testing.assert_array_equal(T._flow_view(stack, box, flip, 32), flow)  # negation is exact


def test_multiscale_boxes_stay_inside_the_frame_and_use_tsn_scales():
    cfg = TransformConfig(crop_size=224)
    sizes = set()
    for seed in range(300):
        box = T.multiscale_box(256, 340, cfg, random.Random(seed))
        assert 0 <= box.x and box.x + box.w <= 340 and 0 <= box.y and box.y + box.h <= 256
        sizes.add((box.w, box.h))
    steps = [256, 224, 192, 168]  # int(256 * s) for TSN's scales
    assert {(s, s) for s in steps} <= sizes
    assert all(abs(steps.index(w) - steps.index(h)) <= 1 for w, h in sizes)  # max_distort = 1


def test_wang_et_al_corner_and_multiscale_cropping():
    """Width and height each from {256, 224, 192, 168}, at the 4 corners or the centre only."""
    cfg = TransformConfig(crop_size=224, max_distort=3, crop_positions=5)
    sizes, places = set(), set()
    for seed in range(600):
        box = T.multiscale_box(256, 340, cfg, random.Random(seed))
        sizes.add((box.w, box.h))
        ws, hs = (340 - box.w) // 4, (256 - box.h) // 4
        corners = [(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs)]
        assert (box.x, box.y) in corners
        places.add(corners.index((box.x, box.y)))
    steps = [256, 224, 192, 168]
    assert sizes == {(w, h) for w in steps for h in steps}
    assert places == {0, 1, 2, 3, 4}


def test_eval_views_centre_and_ten_crop():
    rgb, flow = coordinate_item(h=48, w=64)
    one_rgb, one_flow = T.eval_views(rgb, flow, TransformConfig(crop_size=32, test_crops=1))
    assert one_rgb.shape == (1, 1, 3, 32, 32) and one_flow.shape == (1, 1, 6, 32, 32)
    red, green, fx, fy = _decode_coords(one_rgb[0, 0], one_flow[0, 0])
    # The central 42 x 42 (0.875 of the short side 48) resized to 32: the box starts at (11, 3).
    assert red[0, 0] == pytest.approx(2 * 11, abs=1.5) and green[0, 0] == pytest.approx(2 * 3, abs=1.5)
    assert red[0, -1] == pytest.approx(2 * 52, abs=1.5) and green[-1, 0] == pytest.approx(2 * 44, abs=1.5)
    np.testing.assert_allclose(fx, red, atol=1.01)  # both streams cut by the same box
    np.testing.assert_allclose(fy, green, atol=1.01)
    ten_rgb, ten_flow = T.eval_views(rgb, flow, TransformConfig(crop_size=32, test_crops=10))
    assert ten_rgb.shape == (10, 1, 3, 32, 32) and ten_flow.shape == (10, 1, 6, 32, 32)
    corner_red, corner_green, _, _ = _decode_coords(ten_rgb[3, 0], ten_flow[3, 0])  # bottom right corner
    assert corner_red[-1, -1] == pytest.approx(2 * 63, abs=1.5) and corner_green[-1, -1] == pytest.approx(2 * 47, abs=1.5)
    np.testing.assert_array_equal(ten_flow[5, 0][0::2], -ten_flow[0, 0][0::2, :, ::-1])  # view 5 = view 0 flipped
    np.testing.assert_array_equal(ten_flow[5, 0][1::2], ten_flow[0, 0][1::2, :, ::-1])


def test_eval_views_of_small_frames_are_resized_to_the_crop():
    rgb, flow = coordinate_item(h=24, w=32)
    out_rgb, out_flow = T.eval_views(rgb, flow, TransformConfig(crop_size=48))
    assert out_rgb.shape == (1, 1, 3, 48, 48) and out_flow.shape == (1, 1, 6, 48, 48)


def stripes(h: int, w: int, period: float) -> np.ndarray:
    """(H, W) uint8: a sine of `period` stored pixels along x plus one along y."""
    ys, xs = np.mgrid[0:h, 0:w]
    wave = np.sin(2 * np.pi * xs / period) + np.sin(2 * np.pi * ys / period)
    return np.clip(128 + 60 * wave, 0, 255).astype(np.uint8)


def view_periods(view: np.ndarray) -> tuple[float, float]:
    """Dominant period of a (S, S) view along x and along y, in view pixels."""
    out = []
    for axis in (0, 1):  # mean over rows: the profile along x; over columns: along y
        profile = view.mean(axis=axis)
        spectrum = np.abs(np.fft.rfft(profile - profile.mean()))
        out.append(len(profile) / (int(spectrum[1:].argmax()) + 1))
    return out[0], out[1]


@pytest.mark.parametrize("crop", [112, 224])
@pytest.mark.parametrize("test_crops", [1, 10])
def test_test_views_see_the_pixel_scale_of_training_views(crop, test_crops):
    """Stripes of a known period in stored pixels: the period a test view shows lies inside the
    range that training's multi-scale crops show, in both streams (a raw 112 px centre crop of a
    256-pixel frame shows them at scale 1, where training sees them at 0.44-0.67)."""
    h, w, period = 256, 340, 16.0
    plane = stripes(h, w, period)
    rgb = np.repeat(plane[..., None], 3, axis=-1)[None, None]
    flow = [np.stack([plane, plane])]
    cfg = TransformConfig(crop_size=crop, max_distort=0, test_crops=test_crops)
    train = []
    for seed in range(40):
        out_rgb, out_flow = T.train_views(rgb, flow, cfg, random.Random(seed))
        train += [*view_periods(out_rgb[0, 0, 0]), *view_periods(out_flow[0, 0, 1])]
    lo, hi = min(train), max(train)
    # Training's scales cover crop / 256 .. crop / 168 of a stored pixel (the FFT bins blur a little).
    assert lo <= period * crop / 256 * 1.05 and hi >= period * crop / 168 * 0.95
    test_rgb, test_flow = T.eval_views(rgb, flow, cfg)
    for v in range(test_crops):
        for seen in (*view_periods(test_rgb[v, 0, 0]), *view_periods(test_flow[v, 0, 1])):
            assert lo <= seen <= hi, f"test view {v} shows period {seen:.2f}, training {lo:.2f}..{hi:.2f}"


def test_test_views_stay_inside_narrow_training_scales():
    """`--crop-scales 1` trains on the whole short side: the test view takes it too, not 0.875 of it."""
    assert T.eval_side(256, 340, (1.0,)) == 256 and T.eval_side(256, 340, T.TSN_SCALES) == 224
    assert T.eval_side(256, 340, (0.5, 0.6)) == round(256 * 0.6)
    rgb, flow = coordinate_item(h=48, w=48)
    cfg = TransformConfig(crop_size=48, scales=(1.0,), flip=False)
    train_rgb, train_flow = T.train_views(rgb, flow, cfg, random.Random(0))
    test_rgb, test_flow = T.eval_views(rgb, flow, cfg)
    np.testing.assert_array_equal(test_rgb, train_rgb)
    np.testing.assert_array_equal(test_flow, train_flow)


def test_flow_values_are_not_rescaled_in_training_or_test_views():
    """A uniform motion gives the same normalized values in training and test views (both stay
    in pixels of the stored resolution, whatever the view's resize)."""
    fields = np.zeros((2, 96, 128, 2), np.uint8)
    fields[..., 0], fields[..., 1] = 160, 140  # x = +32/128, y = +12/128
    q = T.interleave(fields)[None]
    cfg = TransformConfig(crop_size=40, flip=False)
    _, train = T.train_views(None, q, cfg, random.Random(0))
    _, test = T.eval_views(None, q, cfg)
    for view in (train[0, 0], test[0, 0]):
        np.testing.assert_array_equal(view[0::2], np.float32(32 / 128))
        np.testing.assert_array_equal(view[1::2], np.float32(12 / 128))


def test_streams_of_different_sizes_are_refused():
    rgb, _ = coordinate_item(h=48, w=64)
    _, flow = coordinate_item(h=24, w=32)
    with pytest.raises(ValueError, match="one stored size"):
        T.train_views(rgb, flow, TransformConfig(crop_size=16), random.Random(0))


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="crop_positions"):
        TransformConfig(crop_positions=9)
    with pytest.raises(ValueError, match="test_crops"):
        TransformConfig(test_crops=5)
    with pytest.raises(ValueError, match="scales"):
        TransformConfig(scales=(1.2,))
