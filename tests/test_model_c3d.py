"""C3D: the paper's size and layers, shapes, view/snippet consensus, fc6 features."""
from __future__ import annotations

import pytest
import torch

from helpers import model_params as params, on_meta, rgb_batch as rgb
from training.models import ModelConfig, build_model, c3d


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Every test here runs with one intra-op thread (see conftest.torch_one_thread)."""


def test_c3d_paper_size_has_78_4M_parameters_and_8192_pool5_features():
    net = on_meta(model="c3d", num_classes=101, rgb_frames=16)
    # 8 convs of 3x3x3 (27.66 M) + fc6 8192x4096 + fc7 4096x4096 + fc8 4096x101 (mmaction2: 78.4 M).
    assert params(net) == 78_409_573
    assert net.pool5_size == 512 * 1 * 4 * 4
    convs = [m for m in net.trunk if isinstance(m, torch.nn.Conv3d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert {c.kernel_size for c in convs} == {(3, 3, 3)}
    pools = [m for m in net.trunk if isinstance(m, torch.nn.MaxPool3d)]
    assert pools[0].kernel_size == (1, 2, 2) and len(pools) == 5  # pool1 keeps time


def small_c3d(frames=16, size=32, **kw):
    opts = c3d.Options(width_mult=0.125, fc_dim=32, size=size)
    return build_model(ModelConfig(model="c3d", streams="rgb", num_classes=5, rgb_frames=frames, options=opts, **kw))


def test_c3d_shapes_views_and_snippets_averaged_and_fc6_features():
    net = small_c3d().eval()
    x = rgb(b=2, v=2, k=2, frames=16)
    out = net(x)["rgb"]
    assert out.shape == (2, 5)
    each = torch.stack([net({"rgb": x["rgb"][:, v:v + 1, k:k + 1]})["rgb"] for v in range(2) for k in range(2)])
    torch.testing.assert_close(out, each.mean(0))
    assert net.features(x).shape == (2, 32)
    with pytest.raises(ValueError, match="--crop-size 32"):
        net(rgb(frames=16, size=48))
    with pytest.raises(ValueError, match="--rgb-frames 16"):
        net(rgb(frames=8))


def test_c3d_refuses_flow_and_short_clips():
    with pytest.raises(ValueError, match="RGB clips only"):
        build_model(ModelConfig(model="c3d", streams="both", num_classes=5, rgb_frames=16))
    with pytest.raises(ValueError, match="rgb_frames >= 16"):
        small_c3d(frames=8)
