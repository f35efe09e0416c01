"""Karpathy et al.'s context/fovea streams and time fusions at the paper's sizes and small ones."""
from __future__ import annotations

import pytest
import torch

from helpers import on_meta, rgb_batch as rgb
from training.models import ModelConfig, build_model, karpathy


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Every test here runs with one intra-op thread (see conftest.torch_one_thread)."""


@pytest.mark.parametrize("fusion", karpathy.TIME_FUSIONS)
@pytest.mark.parametrize("multires,size", [(True, 178), (False, 170)])
def test_karpathy_streams_end_in_7x7x256_at_the_papers_sizes(fusion, multires, size):
    opts = karpathy.Options(time_fusion=fusion, multires=multires, size=size)
    net = on_meta(model="karpathy", num_classes=487, rgb_frames=karpathy.FRAMES[fusion], options=opts)
    streams = len(net.streams)
    assert streams == (2 if multires else 1)
    towers = 2 if fusion == "late" else 1
    assert net.head[0].in_features == streams * towers * 256 * 7 * 7


def small_karpathy(fusion, frames=None, size=44, multires=True):
    opts = karpathy.Options(time_fusion=fusion, multires=multires, width_mult=0.0625, fc_dim=16, size=size)
    return build_model(ModelConfig(model="karpathy", streams="rgb", num_classes=4,
                                   rgb_frames=frames or karpathy.FRAMES[fusion], options=opts))


def test_karpathy_context_is_the_downsampled_frame_and_fovea_its_centre():
    net = small_karpathy("single")
    frames = torch.randn(3, 1, 3, 44, 44)
    parts = net.stream_inputs(frames)
    assert parts["context"].shape == parts["fovea"].shape == (3, 1, 3, 22, 22)
    torch.testing.assert_close(parts["fovea"], frames[..., 11:33, 11:33])
    flat = torch.full((1, 1, 3, 44, 44), 0.25)
    torch.testing.assert_close(net.stream_inputs(flat)["context"], torch.full((1, 1, 3, 22, 22), 0.25))


@pytest.mark.parametrize("fusion", karpathy.TIME_FUSIONS)
def test_karpathy_every_input_frame_reaches_the_output(fusion):
    """single/late/early/slow: the frames the fusion reads all influence the logits
    (slow fusion's conv3 sees all 10 frames; early's first filters span them)."""
    net = small_karpathy(fusion).eval()
    frames = karpathy.FRAMES[fusion]
    x = torch.randn(1, 1, 1, 3 * frames, 44, 44, requires_grad=True)
    net({"rgb": x})["rgb"].sum().backward()
    per_frame = x.grad.reshape(frames, 3, 44, 44).abs().sum((1, 2, 3))
    assert (per_frame > 0).all()


def test_karpathy_time_fusion_layouts_and_frame_counts():
    assert small_karpathy("early").streams["context"].tower[0].weight.shape[1] == 30  # 11x11x3x10
    slow = small_karpathy("slow").streams["context"].tower
    assert [slow[i].kernel_size[0] for i in (0, 4, 8)] == [4, 2, 2] and slow[0].stride[0] == 2
    assert karpathy.slow_frames_out(10) == 1
    with pytest.raises(ValueError, match="reads 2 frame"):
        small_karpathy("late", frames=3)
    with pytest.raises(ValueError, match="rgb_frames >= 10"):
        small_karpathy("slow", frames=8)
    assert small_karpathy("late", multires=False, size=44)(rgb(b=2, v=2, frames=2, size=44))["rgb"].shape == (2, 4)


def test_cli_time_fusion_picks_its_frames():
    from jobs.model_options import resolve_defaults

    late = resolve_defaults({"model": "karpathy", "time_fusion": "late", "rgb_frames": None, "frame_stride": None})
    assert (late["rgb_frames"], late["frame_stride"], late["crop_size"], late["streams"]) == (2, 15, 178, "rgb")
    given = resolve_defaults({"model": "karpathy", "time_fusion": "early", "rgb_frames": 6, "frame_stride": None})
    assert (given["rgb_frames"], given["frame_stride"]) == (6, 1)
