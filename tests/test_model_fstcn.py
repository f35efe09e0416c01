"""FstCN: the paper's geometry, the T-P operator's permutation, difference inputs."""
from __future__ import annotations

import pytest
import torch

from helpers import on_meta, rgb_batch as rgb
from training.models import ModelConfig, build_model, fstcn


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Every test here runs with one intra-op thread (see conftest.torch_one_thread)."""


def test_fstcn_paper_geometry_2048_and_8192_features_into_the_fc_layers():
    net = on_meta(model="fstcn", num_classes=101, rgb_frames=25)
    assert net.spatial_fc[0].in_features == 128 * 4 * 4  # 204 px -> Conv5 maps 4 x 4
    assert net.temporal_fc[0].in_features == 64 * 4 * 4 * 8  # two TCL branches of 32, T = 16 pooled to 8
    assert net.classifier[-1].in_features == 2 * 2048


def test_fstcn_permutation_makes_time_the_axis_of_each_position():
    maps = torch.arange(2 * 3 * 4 * 2 * 5, dtype=torch.float32).reshape(2 * 3, 4, 2, 5)  # (N*T, C, h, w)
    seqs = fstcn.permute_to_sequences(maps, frames=3)
    assert seqs.shape == (2 * 2 * 5, 4, 3)
    n, c, t, y, x = 1, 2, 1, 1, 3
    assert seqs[n * 10 + y * 5 + x, c, t] == maps[n * 3 + t, c, y, x]


def test_fstcn_reads_differences_and_the_middle_frame():
    opts = fstcn.Options(frames=4, diff=2, width_mult=0.0625, fc_dims=(16, 8), size=64)
    net = build_model(ModelConfig(model="fstcn", streams="rgb", num_classes=3, rgb_frames=6, options=opts)).eval()
    x = rgb(b=2, frames=6, size=64)
    assert net(x)["rgb"].shape == (2, 3)
    # A constant added to every frame changes no difference and only the SCL path's frame.
    shifted = {"rgb": x["rgb"] + 0.5}
    seqs = lambda b: fstcn.permute_to_sequences(  # noqa: E731
        net.transform(net.scls((b["rgb"][:, 0, 0].reshape(2, 6, 3, 64, 64)[:, 2:]
                                - b["rgb"][:, 0, 0].reshape(2, 6, 3, 64, 64)[:, :4]).flatten(0, 1))), 4)
    torch.testing.assert_close(seqs(x), seqs(shifted))
    with pytest.raises(ValueError, match="T \\+ dt = 4 \\+ 2 = 6"):
        build_model(ModelConfig(model="fstcn", streams="rgb", num_classes=3, rgb_frames=5, options=opts))


def test_fstcn_refuses_crops_its_poolings_reduce_to_nothing():
    assert fstcn.map_side(204) == 4 and fstcn.map_side(54) == 1 and fstcn.map_side(52) == 0
    with pytest.raises(ValueError, match="size 48 is too small"):
        fstcn.Options(size=48)
