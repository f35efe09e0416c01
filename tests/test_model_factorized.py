"""R3D and R(2+1)D: parameter counts against Tran et al. 2018 and torchvision, factorized convs."""
from __future__ import annotations

import pytest
import torch
import torchvision

from helpers import model_params as params, on_meta, rgb_batch as rgb
from training.models import ModelConfig, build_model, factorized


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Every test here runs with one intra-op thread (see conftest.torch_one_thread)."""


def test_r3d_18_matches_torchvision_and_the_model_zoos_33_4M():
    net = on_meta(model="r3d", num_classes=400, rgb_frames=16)
    with torch.device("meta"):
        reference = torchvision.models.video.r3d_18(num_classes=400)
    assert params(net) == params(reference) == 33_371_472  # Tran et al. 2018: 33.4 M


def test_r2plus1d_mid_channels_match_the_3d_parameters():
    # Eq. 1: M = floor(t d^2 N_in N_out / (d^2 N_in + t N_out)); 144 for 64 -> 64 (the paper's example).
    assert factorized.mid_channels(64, 64) == 144
    assert factorized.mid_channels(3, 64, t=3, d=7) == 83
    for n_in, n_out in ((64, 64), (64, 128), (256, 512), (512, 512)):
        m = factorized.mid_channels(n_in, n_out)
        three_d = 27 * n_in * n_out
        assert 9 * n_in * m + 3 * m * n_out <= three_d < 9 * n_in * (m + 1) + 3 * (m + 1) * n_out
    r3d = params(on_meta(model="r3d", num_classes=400, rgb_frames=16))
    r21d = params(on_meta(model="r2plus1d", num_classes=400, rgb_frames=16))
    # The paper: 33.4 M vs 33.3 M; ours differ only by the factorized convs' extra batch norms.
    assert abs(r21d - r3d) / r3d < 1e-3


def test_r2plus1d_factorizes_every_conv_and_keeps_strides():
    net = build_model(ModelConfig(model="r2plus1d", streams="rgb", num_classes=5, rgb_frames=8,
                                  options=factorized.Options(depth=10, width=8)))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size != (1, 1, 1)]
    assert all(c.kernel_size[0] == 1 or c.kernel_size[1:] == (1, 1) for c in convs)  # spatial or temporal only
    assert net(rgb(b=2, v=2, frames=8))["rgb"].shape == (2, 5)
    # 8 frames: time stride 2 in conv3_1, conv4_1 and conv5_1 -> 1; 32 px -> 16 -> 2 after three more.
    maps = net.trunk(torch.randn(1, 3, 8, 32, 32))
    assert maps.shape == (1, 64, 1, 2, 2)


@pytest.mark.parametrize("d", [3, 7])  # a block's conv and the stem
def test_r2plus1d_puts_batch_norm_and_relu_between_the_spatial_and_the_temporal_conv(d):
    torch.manual_seed(0)
    conv = factorized.st_conv(4, 6, "2plus1d", d=d, stride=(2, 2))
    spatial, bn, relu, temporal = conv
    assert spatial.kernel_size == (1, d, d) and spatial.stride == (1, 2, 2)
    assert temporal.kernel_size == (3, 1, 1) and temporal.stride == (2, 1, 1)
    assert isinstance(bn, torch.nn.BatchNorm3d) and bn.num_features == spatial.out_channels
    assert isinstance(relu, torch.nn.ReLU)
    # What the temporal conv sees is the rectified, normalised spatial output: non-negative, with
    # both signs before the ReLU (so the ReLU is at work), and the block computes exactly that chain.
    conv.train()
    seen = {}
    temporal.register_forward_hook(lambda _module, inputs, _out: seen.update(x=inputs[0]))
    x = torch.randn(2, 4, 6, 16, 16)
    y = conv(x)
    mid = torch.nn.functional.batch_norm(spatial(x), None, None, bn.weight, bn.bias, training=True)
    assert (mid < 0).any() and (mid > 0).any()
    torch.testing.assert_close(seen["x"], torch.relu(mid))
    torch.testing.assert_close(y, temporal(torch.relu(mid)))
    # The stem of an R(2+1)D net is factorized the same way.
    net = build_model(ModelConfig(model="r2plus1d", streams="rgb", num_classes=5, rgb_frames=8,
                                  options=factorized.Options(depth=10, width=8)))
    kinds = [type(m).__name__ for m in net.trunk[0][0]]
    assert kinds == ["Conv3d", "BatchNorm3d", "ReLU", "Conv3d"]
