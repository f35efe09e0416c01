"""OpenCV estimators: parameter mapping, flow direction, known translations, batching, errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from bench.gpu_flow import eval_margin, mean_epe, motion_batch
from pipeline.synthetic import motion as synthetic
from pipeline.flow.config import FlowConfig
from pipeline.flow.estimators import make_estimator
from pipeline.flow.params import DISParams, FarnebackParams, TVL1Params
from pipeline.flow.opencv import DIS, Farneback, OpenCVTVL1, check_pair_batch

ESTIMATORS = {"tvl1": OpenCVTVL1, "farneback": Farneback, "dis": DIS}


def gray_pair(motion: str, size=(64, 64), speed=2.0, seed=0):
    """Frames 0 and 1 of pipeline.synthetic.motion's moving texture, as a (1, H, W) uint8 batch each."""
    h, w = size
    rgb = synthetic.moving_frames(motion, 2, h, w, speed=speed, seed=seed)
    frames = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb]
    return frames[0][None], frames[1][None]


def interior_median(flow: np.ndarray, margin: int = 10) -> np.ndarray:
    """Median (x, y) of (N, H, W, 2) flow away from the borders."""
    return np.median(flow[:, margin:-margin, margin:-margin].reshape(-1, 2), axis=0)


def test_tvl1_maps_every_param():
    p = TVL1Params(tau=0.2, lambda_=0.1, theta=0.4, nscales=3, warps=2, epsilon=0.02, inner_iterations=7,
                   outer_iterations=4, scale_step=0.6, gamma=0.05, median_filtering=3, use_initial_flow=True)
    tv = OpenCVTVL1(p)._tvl1
    got = (tv.getTau(), tv.getLambda(), tv.getTheta(), tv.getScalesNumber(), tv.getWarpingsNumber(),
           tv.getEpsilon(), tv.getInnerIterations(), tv.getOuterIterations(), tv.getScaleStep(),
           tv.getGamma(), tv.getMedianFiltering(), tv.getUseInitialFlow())
    assert got == pytest.approx((0.2, 0.1, 0.4, 3, 2, 0.02, 7, 4, 0.6, 0.05, 3, True))


def test_dis_applies_preset_and_overrides():
    dis = DIS(DISParams(preset="fast", patch_size=6, gradient_descent_iterations=7,
                        use_spatial_propagation=False))._dis
    fast = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    assert (dis.getPatchSize(), dis.getGradientDescentIterations(), dis.getUseSpatialPropagation()) == (6, 7, False)
    assert dis.getFinestScale() == fast.getFinestScale()  # None keeps the preset's value
    assert dis.getPatchStride() == fast.getPatchStride()


def test_threads_are_set():
    Farneback(threads=2)
    assert cv2.getNumThreads() == 2
    OpenCVTVL1(threads=1)
    assert cv2.getNumThreads() == 1


@pytest.mark.parametrize("algorithm", sorted(ESTIMATORS))
@pytest.mark.parametrize("motion, sign", [("right", (1, 0)), ("down", (0, 1)), ("left", (-1, 0)), ("up", (0, -1))])
def test_flow_sign(algorithm, motion, sign):
    prev, nxt = gray_pair(motion)
    flow = ESTIMATORS[algorithm]()(prev, nxt)
    assert flow.shape == (1, 64, 64, 2) and flow.dtype == np.float32
    # 2 px per frame along the motion, nothing across it.
    np.testing.assert_allclose(interior_median(flow), 2.0 * np.array(sign), atol=0.25)


@pytest.mark.parametrize("algorithm, max_epe", [("farneback", 0.4), ("dis", 0.25), ("tvl1", 0.05)])
@pytest.mark.parametrize("kind", ["shift_subpixel", "shift_pixels"])
def test_known_translation_on_photographs(algorithm, max_epe, kind):
    prev, nxt, truth = motion_batch(kind, 96, 96, pairs=2)
    flow = ESTIMATORS[algorithm]()(prev, nxt)
    margin = eval_margin(truth)
    assert mean_epe(flow, truth, margin) < max_epe
    for k in range(2):  # the dominant motion within 0.15 px
        np.testing.assert_allclose(interior_median(flow[k:k + 1], margin), truth[k, 0, 0], atol=0.15)


@pytest.mark.parametrize("algorithm", sorted(ESTIMATORS))
def test_batch_equals_single_calls(algorithm):
    prev, nxt, _ = motion_batch("smooth_field", 48, 56, pairs=3)
    est = ESTIMATORS[algorithm]()
    batched = est(prev, nxt)
    for k in range(3):
        np.testing.assert_array_equal(batched[k], est(prev[k:k + 1], nxt[k:k + 1])[0])


def test_tvl1_same_flow_after_smaller_frames():
    # OpenCV lowers its scale count in place for small frames; the estimator restores it.
    prev, nxt, _ = motion_batch("zoom", 96, 96, pairs=1)
    est = OpenCVTVL1()
    est(prev[:, :20, :20].copy(), nxt[:, :20, :20].copy())
    np.testing.assert_array_equal(est(prev, nxt), OpenCVTVL1()(prev, nxt))


def test_tvl1_initial_flow_is_used():
    prev, nxt, truth = motion_batch("shift_pixels", 64, 64, pairs=1)
    p = TVL1Params(use_initial_flow=True, nscales=1, warps=1, outer_iterations=1, inner_iterations=1)
    est = OpenCVTVL1(p)
    near = mean_epe(est(prev, nxt, init_flow=truth), truth, 10)
    far = mean_epe(est(prev, nxt), truth, 10)
    assert near < 0.5 < far


@pytest.mark.parametrize("prev, nxt, match", [
    (np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.float32), "uint8"),
    (np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), "grayscale"),
    (np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8), "grayscale"),
    (np.zeros((1, 8, 8), np.uint8), np.zeros((1, 8, 9), np.uint8), "one shape"),
    (np.zeros((1, 2, 8), np.uint8), np.zeros((1, 2, 8), np.uint8), "3x3"),
    ([[[0]]], [[[0]]], "numpy array"),
])
def test_bad_inputs_raise(prev, nxt, match):
    with pytest.raises(ValueError, match=match):
        check_pair_batch(prev, nxt)
    for cls in ESTIMATORS.values():
        with pytest.raises(ValueError):
            cls()(prev, nxt)


def test_bad_construction_raises():
    with pytest.raises(ValueError, match="TVL1Params"):
        OpenCVTVL1(FarnebackParams())
    with pytest.raises(ValueError, match="threads"):
        DIS(threads=0)
    with pytest.raises(ValueError, match="median"):
        OpenCVTVL1(TVL1Params(median_filtering=4))


def test_empty_batch():
    empty = np.zeros((0, 16, 16), np.uint8)
    assert Farneback()(empty, empty).shape == (0, 16, 16, 2)


@pytest.mark.parametrize("algorithm, backend", [("tvl1", "opencv"), ("farneback", "opencv"), ("dis", "opencv"),
                                                ("tvl1", "torch")])
def test_make_estimator_every_algorithm_and_backend(algorithm, backend):
    est = make_estimator(FlowConfig(algorithm=algorithm, backend=backend, device="cpu"))
    assert est.name.endswith(algorithm) and est.params is not None
    prev, nxt = gray_pair("right")
    flow = est(np.concatenate([prev, prev]), np.concatenate([nxt, prev]))
    assert flow.shape == (2, 64, 64, 2) and flow.dtype == np.float32
    np.testing.assert_allclose(interior_median(flow[:1]), [2.0, 0.0], atol=0.25)
    np.testing.assert_allclose(interior_median(flow[1:]), [0.0, 0.0], atol=0.05)  # identical frames


def test_one_pair_calls_equal_batches_without_a_copy():
    est = make_estimator(FlowConfig(algorithm="dis"))
    assert est.batched is False
    prev, nxt = gray_pair("right")
    pairs = np.concatenate([prev, nxt]), np.concatenate([nxt, prev])
    batch = est(*pairs)
    singles = [est(pairs[0][i:i + 1], pairs[1][i:i + 1]) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(singles), batch)
    assert all(s.shape == (1, 64, 64, 2) and s.dtype == np.float32 and s.base is not None for s in singles)
