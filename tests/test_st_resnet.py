"""ST-ResNet as the authors built it: 3x1x1 temporal filters with W/3 taps at every depth, the pre-ReLU
appearance map in the motion -> appearance connection, sizes, and the clip length check."""
from __future__ import annotations

import pytest
import torch

from training.models import ModelConfig, build_model
from training.models.backbones import pre_relu, residual_branch, stem
from training.models.st_resnet import Options, TemporalConv

N = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Every test here runs with one intra-op thread (see conftest.torch_one_thread)."""


def cfg(t: int = 3, arch: str = "resnet18", clip_len: int = 4, **opts) -> ModelConfig:
    return ModelConfig(model="st_resnet", arch=arch, num_classes=N, clip_len=clip_len, snippets=t,
                       options=Options(**opts))


def clip(b: int = 2, t: int = 3, clip_len: int = 4, size: int = 32) -> dict:
    return {"rgb": torch.randn(b, 1, t, 3, size, size), "flow": torch.randn(b, 1, t, 2 * clip_len, size, size)}


def test_temporal_filters_start_at_a_third_of_the_2d_weights_on_each_tap():
    torch.manual_seed(0)
    conv2d = torch.nn.Conv2d(6, 5, 1, bias=False)
    conv3d = TemporalConv(conv2d, frames=4)
    assert conv3d.conv.weight.shape == (5, 6, 3, 1, 1) and conv3d.conv.padding == (1, 0, 0)
    for tap in range(3):  # the authors' cat(2, W/3, W/3, W/3)
        torch.testing.assert_close(conv3d.conv.weight[:, :, tap], conv2d.weight / 3)
    # So it starts as W on the average of each snippet and its neighbours (zero padding at the ends).
    x = torch.randn(2, 4, 6, 9, 9)
    padded = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 0, 1, 1))
    average = (padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]) / 3
    torch.testing.assert_close(conv3d(x.flatten(0, 1)), conv2d(average.flatten(0, 1)), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="1x1"):
        TemporalConv(torch.nn.Conv2d(6, 5, 3), frames=4)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_basic_blocks_get_3x1x1_temporal_filters_not_3x3x3_convs(arch):
    with torch.device("meta"):
        model = build_model(cfg(arch=arch, clip_len=10))
        plain = build_model(cfg(arch=arch, clip_len=10, temporal_convs=False))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert len(convs) == 2 * 4 * 2  # two per second unit of each stage, in both streams
    assert all(c.kernel_size == (3, 1, 1) and c.in_channels == c.out_channels for c in convs)
    added = sum(3 * c * c for c in (64, 128, 256, 512)) * 2 * 2
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters()) == added


def test_basic_block_temporal_filters_average_three_snippets():
    model = build_model(cfg(arch="resnet18"))
    unit = model.rgb.layer2[1]
    filt, conv = unit.conv1[0], unit.conv1[1]
    eye = torch.eye(128)
    for tap in range(3):
        torch.testing.assert_close(filt.conv.weight[:, :, tap, 0, 0], eye / 3)
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3)


def test_bottleneck_temporal_filters_on_a_still_clip():
    torch.manual_seed(1)
    model = build_model(cfg(arch="resnet50", t=3, clip_len=2))
    conv = model.rgb.layer1[1].conv1  # res2b_branch2a, 256 -> 64
    w2d = conv.conv.weight[:, :, 0] * 3  # the ImageNet (here random) 1x1 weights it was made of
    frame = torch.randn(1, 256, 2, 2)
    y = conv(frame.expand(3, 256, 2, 2))  # one clip: the same frame three times
    ref = torch.nn.functional.conv2d(frame, w2d)[0]
    torch.testing.assert_close(y[1], ref, atol=1e-5, rtol=1e-5)  # the middle snippet: the 2D network's map
    torch.testing.assert_close(y[0], 2 / 3 * ref, atol=1e-5, rtol=1e-5)  # an end: one tap sees the zero padding


def test_the_connection_adds_the_pre_relu_appearance_map_to_the_residual_branch_only():
    torch.manual_seed(5)
    model = build_model(cfg(temporal_convs=False)).eval()
    x = clip()
    a = stem(model.rgb, x["rgb"].flatten(0, 2))
    m = stem(model.flow, x["flow"].flatten(0, 2))
    first_a, second_a = model.rgb.layer1[0], model.rgb.layer1[1]
    x_a = pre_relu(first_a, a)  # res2a of the appearance stream, before res2a_relu
    assert (x_a < 0).any()
    x_m = model.flow.layer1[0](m)  # res2a_relu of the motion stream
    # x_a' = ReLU(ReLU(x_a) + F(x_a + ReLU(x_m))): the shortcut keeps the rectified appearance map.
    expect = torch.relu(torch.relu(x_a) + residual_branch(second_a, x_a + x_m))
    got, _ = model._stage(model.rgb.layer1, model.flow.layer1, a, m)
    torch.testing.assert_close(got, expect)
    old = torch.relu(torch.relu(x_a) + residual_branch(second_a, torch.relu(x_a) + x_m))
    assert not torch.allclose(got, old)


def test_clips_of_another_length_are_refused():
    model = build_model(cfg(t=3)).eval()
    with pytest.raises(ValueError, match=r"T = 3 snippets.*got clips of 4"):
        model(clip(t=4))


@pytest.mark.parametrize("connection", ["additive", "multiplicative"])
def test_the_appearance_stream_sees_motion_through_the_connections(connection):
    torch.manual_seed(2)
    model = build_model(cfg(connection=connection)).eval()
    x = clip()
    other = {"rgb": x["rgb"], "flow": torch.randn_like(x["flow"])}
    assert not torch.allclose(model(x)["rgb"], model(other)["rgb"])
    model.train()
    model(x)["rgb"].sum().backward()
    assert model.flow.conv1.weight.grad is not None and model.flow.conv1.weight.grad.abs().sum() > 0
    apart = build_model(cfg(connection="none")).eval()
    torch.testing.assert_close(apart(x)["rgb"], apart(other)["rgb"])


def test_resnet50_parameter_count():
    model = build_model(cfg(arch="resnet50", clip_len=10))
    resnet50 = 23_508_032  # without its ImageNet classifier
    # The two 1x1 convs of res2b ... res5b gain two more taps each, in both streams.
    temporal = 2 * 2 * 2 * (256 * 64 + 512 * 128 + 1024 * 256 + 2048 * 512)
    flow_conv1 = 64 * 49 * (20 - 3)
    heads = 2 * (2048 * N + N)
    assert sum(p.numel() for p in model.parameters()) == 2 * resnet50 + temporal + flow_conv1 + heads
    out = model({"rgb": torch.randn(1, 1, 3, 3, 64, 64), "flow": torch.randn(1, 1, 3, 20, 64, 64)})
    assert set(out) == {"rgb", "flow"} and all(v.shape == (1, N) for v in out.values())


def test_options_and_config_errors():
    from training.models import check

    with pytest.raises(ValueError, match="unknown connection"):
        Options(connection="gated")
    with pytest.raises(ValueError, match="needs both streams"):
        check(ModelConfig(model="st_resnet", streams="rgb", num_classes=N, snippets=3))
    with pytest.raises(ValueError, match="T >= 1"):
        check(ModelConfig(model="st_resnet", num_classes=N, clip_len=4))
