"""Feichtenhofer et al.'s fusion family: fusion types, identity initialisations, temporal
pooling, parameter counts, and a few training steps through the real loader."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision

from training.models import ModelConfig, build_model, check
from training.models.backbones import stage_channels
from training.models.fusion import Fuse, Options, TemporalPool, bilinear

N = 4  # classes


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Every test here runs with one intra-op thread (see conftest.torch_one_thread)."""


def cfg(t: int = 3, clip_len: int = 4, arch: str = "resnet18", **opts) -> ModelConfig:
    return ModelConfig(model="fusion", arch=arch, num_classes=N, clip_len=clip_len, snippets=t,
                       options=Options(**opts))


def clip(b: int = 2, v: int = 1, t: int = 3, clip_len: int = 4, size: int = 64) -> dict:
    return {"rgb": torch.randn(b, v, t, 3, size, size), "flow": torch.randn(b, v, t, 2 * clip_len, size, size)}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


COMBOS = [(f, p) for f in ("sum", "max", "concat", "conv") for p in ("3d", "none")] + [("bilinear", "none")]


@pytest.mark.parametrize("fusion_type,pool", COMBOS)
def test_outputs_per_tower_and_fused_is_their_mean(fusion_type, pool):
    model = build_model(cfg(fusion_type=fusion_type, temporal_pool=pool)).eval()
    out = model(clip())
    assert set(out) == {"fusion", "flow"} and all(v.shape == (2, N) for v in out.values())
    s = model.scores(out)
    torch.testing.assert_close(s["fused"], (s["fusion"] + s["flow"]) / 2)
    single = build_model(cfg(fusion_type=fusion_type, temporal_pool=pool, temporal_tower=False)).eval()
    assert set(single(clip())) == {"fusion"}


def test_parameter_counts_follow_the_fusion_layers():
    r18 = count(torchvision.models.resnet18()) - (512 * 1000 + 1000)  # trunk without fc
    flow_conv1 = 64 * 2 * 4 * 49 - 64 * 3 * 49  # conv1 takes 2L = 8 channels
    heads = 2 * (512 * N + N)  # fused tower + temporal tower
    base = 2 * r18 + flow_conv1 + heads
    c, conv3d = 512, 27
    assert count(build_model(cfg(fusion_type="sum", temporal_pool="none"))) == base
    assert count(build_model(cfg(fusion_type="conv", temporal_pool="none"))) == base + 2 * c * c + c
    assert count(build_model(cfg(fusion_type="sum", temporal_pool="3d"))) == base + conv3d * c * c + c
    # Concatenation + 3D pooling is the paper's 3D conv fusion: 2C -> C channels.
    assert count(build_model(cfg(fusion_type="concat", temporal_pool="3d"))) == base + conv3d * 2 * c * c + c
    assert count(build_model(cfg(fusion_type="concat", temporal_pool="none"))) == base + c * N
    assert count(build_model(cfg(fusion_type="bilinear", temporal_pool="none"))) == base + (c * c - c) * N


def test_resnet50_streams_have_torchvision_sizes():
    model = build_model(cfg(arch="resnet50", clip_len=10, fusion_type="sum", temporal_pool="none",
                            temporal_tower=False))
    assert count(model.rgb) == 23_508_032  # ResNet-50 without its ImageNet classifier
    assert count(model.flow) == 23_508_032 + 64 * 49 * (20 - 3)
    assert stage_channels(model.rgb, "layer4") == 2048 and stage_channels(model.rgb, "layer3") == 1024


def test_conv_fusion_starts_as_the_sum_of_the_streams():
    torch.manual_seed(0)
    a, b = torch.randn(2, 16, 5, 5), torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(Fuse("conv", 16)(a, b), torch.relu(a + b))
    # The whole network too: conv fusion with the sum model's weights gives the sum model's output.
    torch.manual_seed(1)
    total = build_model(cfg(fusion_type="sum", temporal_pool="none")).eval()
    conv = build_model(cfg(fusion_type="conv", temporal_pool="none")).eval()
    missing, unexpected = conv.load_state_dict(total.state_dict(), strict=False)
    assert sorted(missing) == ["fuse.conv.bias", "fuse.conv.weight"] and not unexpected
    x = clip()
    for key, value in total(x).items():
        torch.testing.assert_close(conv(x)[key], value, atol=1e-5, rtol=1e-4)


def test_3d_conv_starts_as_identity_on_a_static_clip_and_sums_concatenated_maps():
    pool = TemporalPool(8, 8)
    x = torch.rand(1, 8, 5, 7, 7).mean((2, 3, 4), keepdim=True).expand(1, 8, 5, 7, 7)  # constant per channel
    y = torch.relu(pool.conv(x))
    torch.testing.assert_close(y[:, :, 2, 3, 3], x[:, :, 2, 3, 3])  # away from the zero padding
    both = TemporalPool(16, 8)
    y = both.conv(torch.cat([x, 2 * x], dim=1))
    torch.testing.assert_close(y[:, :, 2, 3, 3], 3 * x[:, :, 2, 3, 3])


def test_temporal_pooling_sees_the_order_of_the_snippets():
    torch.manual_seed(2)
    x = clip(t=4, size=32)
    reverse = {k: v.flip(2) for k, v in x.items()}
    pooled = build_model(cfg(t=4, fusion_type="conv", temporal_pool="3d")).eval()
    with torch.no_grad():
        for w in pooled.head.pool3d.conv.parameters():  # a conv that is not symmetric in time
            w.add_(0.01 * torch.randn_like(w))
    assert not torch.allclose(pooled(x)["fusion"], pooled(reverse)["fusion"], atol=1e-6)
    averaged = build_model(cfg(t=4, fusion_type="conv", temporal_pool="none")).eval()
    torch.testing.assert_close(averaged(x)["fusion"], averaged(reverse)["fusion"], atol=1e-5, rtol=1e-4)


def test_bilinear_is_the_signed_root_normalised_outer_product_over_positions():
    a, b = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    y = bilinear(a, b)
    outer = torch.einsum("ncp,ndp->ncd", a.flatten(2), b.flatten(2)).flatten(1)
    expected = torch.nn.functional.normalize(outer.sqrt(), dim=1)
    torch.testing.assert_close(y, expected)
    assert y.shape == (2, 9)


def test_concatenation_and_bilinear_fusion_below_layer4():
    r18 = count(torchvision.models.resnet18()) - (512 * 1000 + 1000)
    base = 2 * r18 + 64 * 49 * (8 - 3) + 2 * (512 * N + N)
    concat = build_model(cfg(fusion_layer="layer2", fusion_type="concat", temporal_pool="none")).eval()
    # layer3's first conv (3x3, 128 -> 256) and projection (1x1) take [a, b]: 256 channels.
    assert count(concat) == base + 128 * 256 * 9 + 128 * 256
    a, b = torch.randn(2, 128, 4, 4), torch.randn(2, 128, 4, 4)
    block = concat.rgb.layer3[0]
    widened = torch.nn.functional.conv2d(torch.cat([a, b], 1), block.conv1.weight, stride=2, padding=1)
    torch.testing.assert_close(widened, torch.nn.functional.conv2d(a + b, block.conv1.weight[:, :128], stride=2,
                                                                   padding=1), atol=1e-5, rtol=1e-4)
    assert concat(clip(size=32))["fusion"].shape == (2, N)
    bil = build_model(cfg(fusion_layer="layer2", fusion_type="bilinear", temporal_pool="none"))
    rgb_later = count(torchvision.models.resnet18().layer3) + count(torchvision.models.resnet18().layer4)
    assert count(bil) == base - rgb_later + (128 * 128 - 512) * N
    sum(v.sum() for v in bil(clip(size=32)).values()).backward()
    assert all(p.grad is not None for p in bil.parameters())


def test_earlier_fusion_continues_in_the_spatial_stream():
    model = build_model(cfg(fusion_layer="layer2", fusion_type="sum")).eval()
    assert stage_channels(model.rgb, "layer2") == 128
    assert model(clip(size=32))["fusion"].shape == (2, N)
    # Without the temporal tower the temporal stream stops at the fusion: every weight gets a gradient.
    alone = build_model(cfg(fusion_layer="layer2", fusion_type="sum", temporal_tower=False))
    sum(v.sum() for v in alone(clip(size=32)).values()).backward()
    assert all(p.grad is not None for p in alone.parameters())
    assert count(alone) < count(model) - count(torchvision.models.resnet18().layer4)


def test_options_name_what_cannot_be_built():
    with pytest.raises(ValueError, match="unknown fusion type"):
        Options(fusion_type="product")
    with pytest.raises(ValueError, match="no positions"):
        Options(fusion_type="bilinear", temporal_pool="3d")
    with pytest.raises(ValueError, match="needs both streams"):
        check(ModelConfig(model="fusion", streams="flow", num_classes=N, clip_len=4, snippets=3))
    with pytest.raises(ValueError, match="T >= 1"):
        check(ModelConfig(model="fusion", num_classes=N, clip_len=4))


def test_config_round_trips_through_json():
    from training.models import model_config_from_dict

    c = cfg(fusion_type="max", fusion_layer="layer3", temporal_pool="none", temporal_tower=False)
    assert model_config_from_dict(json.loads(json.dumps(c.to_dict()))) == c
