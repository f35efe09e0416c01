"""SEA-RAFT: the parts checked against their definitions, the reference's checkpoint layout, and
the estimator wiring (random weights: no trained weights exist on a test machine)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.flow.config import FlowConfig
from pipeline.flow.estimators import make_estimator
from pipeline.flow.params import SEARAFTParams
from pipeline.flow.searaft import (SEARAFT, SEARAFTFlow, convex_upsample, coords_grid, correlation_pyramid,
                                   lookup, official_state_dict)

# Keys of the reference model's state dict (core/raft.py), one or more per kind of layer.
REFERENCE_KEYS = ("cnet.conv1.weight", "cnet.bn1.running_var", "cnet.layer1.0.conv1.weight",
                  "cnet.layer2.0.downsample.0.weight", "cnet.layer2.0.downsample.1.running_mean",
                  "cnet.layer3.1.bn2.bias", "cnet.final_conv.weight", "fnet.layer3.0.downsample.1.weight",
                  "init_conv.bias", "upsample_weight.0.weight", "upsample_weight.2.bias", "flow_head.0.weight",
                  "flow_head.2.weight", "update_block.encoder.convc1.weight", "update_block.encoder.convc2.bias",
                  "update_block.encoder.convf1.weight", "update_block.encoder.convf2.weight",
                  "update_block.encoder.conv.weight", "update_block.refine.0.dwconv.weight",
                  "update_block.refine.0.norm.weight", "update_block.refine.1.pwconv1.weight",
                  "update_block.refine.1.pwconv2.bias", "update_block.refine.1.gamma", "update_block.refine.0.final.weight")


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    yield


def test_key_layout_and_shapes_of_the_reference_model():
    state = SEARAFT("S").state_dict()
    assert set(REFERENCE_KEYS) <= set(state)
    assert state["cnet.conv1.weight"].shape == (64, 6, 7, 7) and state["fnet.conv1.weight"].shape == (64, 3, 7, 7)
    assert state["update_block.encoder.convc1.weight"].shape == (256, 324, 1, 1)  # 4 levels x 9 x 9
    assert state["update_block.refine.0.pwconv1.weight"].shape == (512, 384)
    assert state["upsample_weight.2.weight"].shape == (576, 256, 1, 1)
    assert state["flow_head.2.weight"].shape == (6, 256, 3, 3)
    # M has ResNet-34 depths: 3, 4, 6 blocks.
    m = SEARAFT("M").state_dict()
    assert "cnet.layer3.5.conv2.weight" in m and "cnet.layer3.6.conv2.weight" not in m
    assert "cnet.layer3.2.conv2.weight" not in state


def test_loads_a_state_dict_saved_in_the_reference_layout(tmp_path):
    torch.manual_seed(0)
    net = SEARAFT("S")
    state = net.state_dict()
    reference = {}
    for key, value in state.items():  # the reference stores each downsampling BN twice, DataParallel-prefixed
        reference["module." + key] = value
        if ".downsample.1." in key:
            reference["module." + key.replace(".downsample.1.", ".bn3.")] = value.clone()
    torch.save(reference, tmp_path / "Tartan-C-T-TSKH-spring540x960-S.pth")
    est = SEARAFTFlow(tmp_path / "Tartan-C-T-TSKH-spring540x960-S.pth", variant="S", iters=1)
    assert all(torch.equal(est.net.state_dict()[k], v) for k, v in state.items())
    bad = dict(reference)
    bad["module.cnet.layer2.0.bn3.weight"] = bad["module.cnet.layer2.0.bn3.weight"] + 1
    with pytest.raises(ValueError, match="bn3"):
        official_state_dict(bad)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        SEARAFTFlow(variant="S")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SEARAFTFlow(tmp_path / "missing.pth", variant="S")


def test_correlation_lookup_samples_the_window_around_each_pixel():
    torch.manual_seed(1)
    f1, f2 = torch.randn(2, 8, 6, 7), torch.randn(2, 8, 6, 7)
    pyramid = correlation_pyramid(f1, f2, levels=2)
    assert [tuple(p.shape) for p in pyramid] == [(84, 1, 6, 7), (84, 1, 3, 3)]
    coords = coords_grid(2, 6, 7, "cpu") + torch.tensor([1.0, -1.0])[None, :, None, None]
    corr = lookup(pyramid, coords, radius=1)
    assert corr.shape == (2, 2 * 9, 6, 7)
    # Window position (i, j) samples at (x + d_i, y + d_j); the centre is the shifted dot product.
    n, y, x = 1, 3, 2
    expect = lambda dx, dy: (f1[n, :, y, x] * f2[n, :, y - 1 + dy, x + 1 + dx]).sum() / 8 ** 0.5  # noqa: E731
    torch.testing.assert_close(corr[n, 4, y, x], expect(0, 0))
    torch.testing.assert_close(corr[n, 1, y, x], expect(-1, 0))  # i = 0 (x - 1), j = 1
    torch.testing.assert_close(corr[n, 3, y, x], expect(0, -1))  # i = 1, j = 0 (y - 1)
    assert corr[0, 0, 0, 0] == 0  # outside the image: zero


def test_convex_upsampling_keeps_a_constant_flow_and_interpolates_within_neighbours():
    flow = torch.full((1, 2, 4, 5), 0.75)
    flow[:, 1] = -0.5
    mask = torch.randn(1, 576, 4, 5)
    up = convex_upsample(flow, mask)
    assert up.shape == (1, 2, 32, 40)
    inner = up[..., 8:-8, 8:-8]  # away from the zero padding of the unfold
    torch.testing.assert_close(inner[:, 0], torch.full_like(inner[:, 0], 6.0))
    torch.testing.assert_close(inner[:, 1], torch.full_like(inner[:, 1], -4.0))
    # A mask that puts all weight on the centre neighbour is nearest-neighbour x8.
    ramp = torch.arange(20.0).view(1, 1, 4, 5).repeat(1, 2, 1, 1)
    centre = torch.full((1, 9, 64, 4, 5), -1e4)
    centre[:, 4] = 0
    torch.testing.assert_close(convex_upsample(ramp, centre.view(1, 576, 4, 5)),
                               8 * F.interpolate(ramp, scale_factor=8, mode="nearest"))


def test_estimator_wiring_any_size_rgb_and_reduced_precision(tmp_path):
    torch.manual_seed(2)
    path = tmp_path / "s.pth"
    torch.save(SEARAFT("S").state_dict(), path)
    est = make_estimator(FlowConfig(algorithm="sea_raft_s", backend="torch",
                                    params=SEARAFTParams(weights=str(path), iters=2)))
    assert est.input == "rgb" and est.iters == 2
    rng = np.random.default_rng(0)
    prev = rng.integers(0, 255, (2, 45, 61, 3), dtype=np.uint8)
    flow = est(prev, prev[::-1].copy())
    assert flow.shape == (2, 45, 61, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()
    q = est.quantized(prev, prev[::-1].copy())
    assert q.dtype == np.uint8 and q.shape == (2, 45, 61, 2)
    bf16 = SEARAFTFlow(path, variant="S", iters=2, dtype="bf16")(prev, prev[::-1].copy())
    assert np.isfinite(bf16).all() and np.abs(bf16 - flow).mean() < 0.1 * max(1.0, np.abs(flow).mean())
    with pytest.raises(ValueError, match="RGB"):
        est(prev[..., 0], prev[..., 0])
