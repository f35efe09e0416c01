"""ST-ResNet: centre-slice temporal convolutions, motion -> appearance connections, sizes."""
from __future__ import annotations

import pytest
import torch

from training.models import ModelConfig, build_model
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


@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 2)])
def test_centre_slice_conv_gives_the_2d_output_frame_by_frame(kernel, stride):
    torch.manual_seed(0)
    conv2d = torch.nn.Conv2d(6, 5, kernel, stride=stride, padding=kernel // 2, bias=False)
    conv3d = TemporalConv(conv2d, frames=4)
    assert conv3d.conv.weight.shape == (5, 6, 3, kernel, kernel)
    static = torch.randn(2, 1, 6, 9, 9).expand(2, 4, 6, 9, 9).flatten(0, 1)  # a still clip: one frame 4 times
    moving = torch.randn(8, 6, 9, 9)
    for x in (static, moving):
        torch.testing.assert_close(conv3d(x), conv2d(x))
    with torch.no_grad():  # once it learns, neighbouring snippets count: a still clip keeps its frame
        conv3d.conv.weight[:, :, 0] = 0.5 * conv2d.weight
    y = conv3d(static).unflatten(0, (2, 4))
    torch.testing.assert_close(y[:, 1], 1.5 * conv2d(static).unflatten(0, (2, 4))[:, 1])


def test_temporal_convs_start_as_the_frame_by_frame_network():
    torch.manual_seed(1)
    plain = build_model(cfg(connection="none", temporal_convs=False)).eval()
    temporal = build_model(cfg(connection="none", temporal_convs=True)).eval()
    state = dict(plain.state_dict())
    for key, value in temporal.state_dict().items():
        if key not in state:  # layerN.1.convK.conv.weight: the plain layerN.1.convK.weight in its centre slice
            centre = torch.zeros_like(value)
            centre[:, :, 1] = state.pop(key.replace(".conv.weight", ".weight"))
            state[key] = centre
    temporal.load_state_dict(state)  # strict: every weight of one net has its place in the other
    x = clip()
    for key, value in plain(x).items():
        torch.testing.assert_close(temporal(x)[key], value, atol=1e-5, rtol=1e-4)


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
    # The two 1x1 convs of res2b ... res5b gain two more slices each, in both streams.
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
