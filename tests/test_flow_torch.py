"""Torch TV-L1: each step against OpenCV, accuracy against OpenCV on photographs, batching, errors.

The accuracy comparisons run OpenCV's TV-L1 and ours with the same TVL1Params on the same
photo pairs with known flow (bench/gpu_flow.py's generator) and require our mean end-point
error to be within 10 % of OpenCV's, or better. The GPU test has a CPU twin (the same checks).
"""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch

from bench.gpu_flow import MOTIONS, eval_margin, mean_epe, motion_batch
from pipeline.synthetic import motion as synthetic
from pipeline.flow.params import TVL1Params
from pipeline.flow.opencv import OpenCVTVL1
from pipeline.flow.tvl1_torch import (TorchTVL1, centered_gradient, median_filter, median_network, pyramid_sizes,
                                 resize_bilinear, tvl1_flow, warp_bicubic)

EPE_RATIO = 1.10  # torch's mean EPE may exceed OpenCV's by at most 10 %


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, like the one-core OpenCV runs, and stable reductions across machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def as_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch).float()


# ----------------------------------------------------------------------------- steps vs OpenCV

@pytest.mark.parametrize("fx", [0.8, 0.5, 0.63])
def test_downscale_matches_cv_resize(fx):
    img = np.random.default_rng(0).uniform(0, 255, (37, 53)).astype(np.float32)
    ref = cv2.resize(img, None, fx=fx, fy=fx, interpolation=cv2.INTER_LINEAR)
    out = resize_bilinear(torch.from_numpy(img)[None], ref.shape, (1 / fx, 1 / fx))[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-3)


def test_upscale_to_size_matches_cv_resize():
    img = np.random.default_rng(1).uniform(-3, 3, (29, 41)).astype(np.float32)
    ref = cv2.resize(img, (52, 36), interpolation=cv2.INTER_LINEAR)
    out = resize_bilinear(torch.from_numpy(img)[None], (36, 52), (29 / 36, 41 / 52))[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("ksize", [3, 5])
def test_median_matches_cv_median_blur(ksize):
    img = np.random.default_rng(2).normal(0, 2, (23, 31)).astype(np.float32)
    out = median_filter(torch.from_numpy(img)[None, None], ksize)[0, 0].numpy()
    np.testing.assert_array_equal(out, cv2.medianBlur(img, ksize))


@pytest.mark.parametrize("n", [9, 25, 49])
def test_median_network_selects_the_median(n):
    vals = torch.from_numpy(np.random.default_rng(n).normal(size=(n, 500)))
    rows = list(vals)
    for i, j, keep_min, keep_max in median_network(n):
        lo, hi = torch.minimum(rows[i], rows[j]), torch.maximum(rows[i], rows[j])
        rows[i], rows[j] = (lo if keep_min else rows[i]), (hi if keep_max else rows[j])
    torch.testing.assert_close(rows[n // 2], vals.median(dim=0).values)


def test_warp_matches_cv_remap_cubic():
    rng = np.random.default_rng(3)
    img = rng.uniform(0, 255, (33, 47)).astype(np.float32)
    flow = rng.normal(0, 3, (33, 47, 2)).astype(np.float32)  # some samples fall outside: zero border
    ys, xs = np.mgrid[0:33, 0:47].astype(np.float32)
    ref = cv2.remap(img, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_CUBIC)
    out = warp_bicubic(torch.from_numpy(img)[None, None], torch.from_numpy(flow).permute(2, 0, 1)[None])
    np.testing.assert_allclose(out[0, 0].numpy(), ref, atol=0.02)


def test_centered_gradient_borders_like_opencv():
    img = torch.tensor([[0.0, 1.0, 4.0], [2.0, 3.0, 9.0], [5.0, 5.0, 5.0]])[None]
    dx, dy = centered_gradient(img)
    # Interior: half the central difference; borders: half the one-sided difference.
    assert dx[0].tolist() == [[0.5, 2.0, 1.5], [0.5, 3.5, 3.0], [0.0, 0.0, 0.0]]
    assert dy[0].tolist() == [[1.0, 1.0, 2.5], [2.5, 2.0, 0.5], [1.5, 1.0, -2.0]]


def test_pyramid_sizes_follow_opencv():
    assert pyramid_sizes(256, 340, TVL1Params()) == [(256, 340), (205, 272), (164, 218), (131, 174), (105, 139)]
    assert pyramid_sizes(30, 200, TVL1Params()) == [(30, 200), (24, 160), (19, 128)]  # stops below 16
    assert pyramid_sizes(15, 15, TVL1Params()) == [(15, 15)]


def test_same_flow_as_opencv_when_iterations_are_fixed():
    # Without the epsilon stop (epsilon tiny) both run the same steps: the flows agree closely.
    p = TVL1Params(epsilon=1e-9, nscales=3, warps=2, outer_iterations=2, inner_iterations=10)
    prev, nxt, _ = motion_batch("smooth_field", 64, 80, pairs=2)
    ours = TorchTVL1(p)(prev, nxt)[:, 4:-4, 4:-4]
    ref = OpenCVTVL1(p)(prev, nxt)[:, 4:-4, 4:-4]
    diff = np.abs(ours - ref).max(-1)
    assert np.median(diff) < 1e-3 and diff.mean() < 5e-3, (np.median(diff), diff.mean())


# ----------------------------------------------------------------------------- accuracy

@pytest.mark.parametrize("kind", MOTIONS)
def test_epe_within_ten_percent_of_opencv(kind):
    # Six pairs: on one pair the two can differ by a few hundredths of a pixel either way,
    # because the epsilon stop can fire one step apart (float sums in another order).
    prev, nxt, truth = motion_batch(kind, 96, 96, pairs=6)
    margin = eval_margin(truth)
    cv_epe = mean_epe(OpenCVTVL1()(prev, nxt), truth, margin)
    torch_epe = mean_epe(TorchTVL1()(prev, nxt), truth, margin)
    assert torch_epe <= EPE_RATIO * cv_epe, (kind, torch_epe, cv_epe)
    assert torch_epe < 0.2  # and both are actually good on these scenes


@pytest.mark.parametrize("motion, sign", [("right", (1, 0)), ("down", (0, 1)), ("left", (-1, 0)), ("up", (0, -1))])
def test_flow_sign(motion, sign):
    frames = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in synthetic.moving_frames(motion, 2, 64, 64, speed=1.5)]
    flow = TorchTVL1()(frames[0][None], frames[1][None])
    np.testing.assert_allclose(np.median(flow[0, 10:-10, 10:-10].reshape(-1, 2), axis=0),
                               1.5 * np.array(sign), atol=0.1)


def test_batch_equals_single_calls():
    prev, nxt, _ = motion_batch("rotate", 48, 64, pairs=3)
    est = TorchTVL1(TVL1Params(outer_iterations=3))
    batched = est(prev, nxt)
    for k in range(3):
        np.testing.assert_allclose(batched[k], est(prev[k:k + 1], nxt[k:k + 1])[0], atol=1e-4)


def test_stop_checks_do_not_change_the_flow():
    # Pairs stop per pair through masks; how often the loop checks for "all stopped" is
    # only a speed knob (CUDA checks every 10 steps).
    prev, nxt, _ = motion_batch("zoom", 48, 48, pairs=3)
    i0, i1 = as_tensor(prev), as_tensor(nxt)
    every_step = tvl1_flow(i0, i1, sync_every=1)
    torch.testing.assert_close(tvl1_flow(i0, i1, sync_every=7), every_step)
    torch.testing.assert_close(tvl1_flow(i0, i1, sync_every=10 ** 6), every_step)


@pytest.mark.parametrize("size", [(61, 77), (17, 23), (9, 130)])
def test_sizes_not_divisible_by_anything(size):
    prev, nxt, truth = motion_batch("shift_subpixel", *size, pairs=1)
    flow = TorchTVL1()(prev, nxt)
    assert flow.shape == (1, *size, 2) and np.isfinite(flow).all()
    if min(size) > 40:
        assert mean_epe(flow, truth, eval_margin(truth)) < 0.1


def test_gamma_illumination_term_runs_and_stays_accurate():
    prev, nxt, truth = motion_batch("smooth_field", 64, 64, pairs=1)
    brighter = np.clip(nxt.astype(np.int16) + 12, 0, 255).astype(np.uint8)
    p = TVL1Params(gamma=0.2)
    ours = mean_epe(TorchTVL1(p)(prev, brighter), truth, 10)
    ref = mean_epe(OpenCVTVL1(p)(prev, brighter), truth, 10)
    assert ours <= EPE_RATIO * ref + 0.01, (ours, ref)


def test_initial_flow_is_used():
    prev, nxt, truth = motion_batch("shift_pixels", 64, 64, pairs=1)
    p = TVL1Params(use_initial_flow=True, nscales=1, warps=1, outer_iterations=1, inner_iterations=1)
    est = TorchTVL1(p)
    assert mean_epe(est(prev, nxt, init_flow=truth), truth, 10) < 0.5 < mean_epe(est(prev, nxt), truth, 10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_flag(dtype):
    prev, nxt, truth = motion_batch("rotate", 64, 64, pairs=1)
    flow = TorchTVL1(dtype=dtype)(prev, nxt)
    assert flow.dtype == np.float32 and mean_epe(flow, truth, eval_margin(truth)) < 0.15


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_steps_give_the_same_flow():
    # The CUDA benchmark uses compile=True; the same traced steps run here on CPU.
    p = TVL1Params(nscales=2, warps=2, outer_iterations=2, inner_iterations=5, epsilon=1e-9)
    prev, nxt, truth = motion_batch("smooth_field", 40, 48, pairs=2)
    i0, i1 = as_tensor(prev), as_tensor(nxt)
    eager = tvl1_flow(i0, i1, p)
    compiled = tvl1_flow(i0, i1, p, compile=True)
    assert (compiled - eager).abs()[..., 6:-6, 6:-6].mean() < 1e-3


def test_empty_batch():
    empty = np.zeros((0, 20, 24), np.uint8)
    assert TorchTVL1()(empty, empty).shape == (0, 20, 24, 2)


def test_bad_inputs_raise():
    est = TorchTVL1()
    with pytest.raises(ValueError, match="uint8"):
        est(np.zeros((1, 8, 8), np.float32), np.zeros((1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="one shape"):
        est(np.zeros((1, 8, 8), np.uint8), np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="grayscale"):
        est(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        tvl1_flow(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="floating"):
        tvl1_flow(torch.zeros(1, 8, 8, dtype=torch.uint8), torch.zeros(1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="median_filtering"):
        TorchTVL1(TVL1Params(median_filtering=4))
    with pytest.raises(ValueError, match="device"):
        TorchTVL1(device="tpu")
    with pytest.raises(ValueError, match="TVL1Params"):
        TorchTVL1(params={"tau": 0.25})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error path")
def test_cuda_without_gpu_raises():
    with pytest.raises(ValueError, match="CUDA"):
        TorchTVL1(device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_matches_cpu_and_opencv_accuracy(compiled):
    # CPU twin: test_epe_within_ten_percent_of_opencv and test_batch_equals_single_calls.
    for kind in MOTIONS:
        prev, nxt, truth = motion_batch(kind, 96, 96, pairs=4)
        margin = eval_margin(truth)
        gpu = TorchTVL1(device="cuda", compile=compiled)(prev, nxt)
        cpu = TorchTVL1()(prev, nxt)
        cv_epe = mean_epe(OpenCVTVL1()(prev, nxt), truth, margin)
        assert mean_epe(gpu, truth, margin) <= EPE_RATIO * cv_epe, kind
        assert mean_epe(gpu, cpu, margin) < 0.02, kind


# ----------------------------------------------------------------------------- RAFT wiring

def test_raft_pads_and_crops_any_size():
    from pipeline.flow.raft import RAFTFlow, pad_to_multiple

    padded, size = pad_to_multiple(torch.zeros(1, 3, 130, 61))
    assert padded.shape[-2:] == (136, 128) and size == (130, 61)
    torch.manual_seed(0)
    est = RAFTFlow(random_init=True, num_flow_updates=1)  # random weights: wiring only
    assert est.input == "rgb"
    prev = np.random.default_rng(0).integers(0, 255, (2, 50, 61, 3), dtype=np.uint8)
    flow = est(prev, prev[::-1].copy())
    assert flow.shape == (2, 50, 61, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()
    with pytest.raises(ValueError, match="RGB"):  # grey copied to 3 channels is not what RAFT learned
        est(prev[..., 0], prev[..., 0])


def test_raft_uses_colour():
    """The colour channels reach the network: a channel swap changes the flow, which grey
    copied to three channels could never show."""
    from pipeline.flow.raft import RAFTFlow

    torch.manual_seed(0)
    est = RAFTFlow(random_init=True, num_flow_updates=1)
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 255, (1, 32, 40, 3), dtype=np.uint8) for _ in range(2))
    assert not np.allclose(est(a, b), est(a[..., ::-1].copy(), b[..., ::-1].copy()))


def test_raft_loads_a_local_checkpoint_and_never_downloads(tmp_path, monkeypatch):
    from torchvision.models.optical_flow import raft_small

    from pipeline.flow.raft import RAFTFlow

    def no_download(*args, **kwargs):
        raise AssertionError("weights must never be downloaded")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        RAFTFlow()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RAFTFlow(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="raft_medium"):
        RAFTFlow(random_init=True, model="raft_medium")
    torch.manual_seed(1)
    state = raft_small(weights=None).state_dict()
    torch.save(state, tmp_path / "raft_small.pth")
    est = RAFTFlow(tmp_path / "raft_small.pth")
    loaded = est.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_make_estimator_builds_raft_from_a_local_checkpoint(tmp_path):
    """--flow raft_small --flow-backend torch reaches torchvision's RAFT with the user's file."""
    import torch
    from torchvision.models.optical_flow import raft_small

    from pipeline.flow.config import FlowConfig
    from pipeline.flow.estimators import make_estimator
    from pipeline.flow.params import RAFTParams

    path = tmp_path / "raft_small.pth"
    torch.save(raft_small(weights=None).state_dict(), path)
    cfg = FlowConfig(algorithm="raft_small", backend="torch", params=RAFTParams(weights=str(path), num_flow_updates=1))
    est = make_estimator(cfg)
    out = est(np.zeros((1, 40, 56, 3), np.uint8), np.zeros((1, 40, 56, 3), np.uint8))
    assert out.shape == (1, 40, 56, 2) and out.dtype == np.float32
    # The weights count by their bytes (pipeline.tools), not their path: the path is no setting.
    assert cfg.output_dict()["params"] == {"num_flow_updates": 1}
