"""Feichtenhofer et al.'s fusion family: the paper's 3D conv fusion as the authors built it (post-ReLU
maps, [0.25 I, 0.75 I] Gaussian init, one max over all T), the 2D fusions with nothing hidden in
the pooling, parameter counts, and VGG-16 streams."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision

from training.models import ModelConfig, build_model, check
from training.models.backbones import run_stage, stage_channels, stem
from training.models.fusion import Fuse, Options, Tower, bilinear, conv3d_fusion_init_, max_over_snippets

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


def gaussian(sigma: float = 1.0) -> torch.Tensor:
    """The normalised 3x3x3 Gaussian of the authors' init (G3 / sum(G3(:)))."""
    x = torch.tensor([-1.0, 0.0, 1.0])
    g = torch.exp(-(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2) / (2 * sigma ** 2))
    return g / g.sum()


COMBOS = [(f, p) for f in ("conv3d", "sum", "max", "concat", "conv") for p in ("3d", "none")] + [("bilinear", "none")]


@pytest.mark.parametrize("fusion_type,pool", COMBOS)
def test_outputs_per_tower_and_fused_is_their_mean(fusion_type, pool):
    model = build_model(cfg(fusion_type=fusion_type, temporal_pool=pool)).eval()
    out = model(clip())
    assert set(out) == {"fusion", "flow"} and all(v.shape == (2, N) for v in out.values())
    s = model.scores(out)
    torch.testing.assert_close(s["fused"], (s["fusion"] + s["flow"]) / 2)
    single = build_model(cfg(fusion_type=fusion_type, temporal_pool=pool, temporal_tower=False)).eval()
    assert set(single(clip())) == {"fusion"}


def test_the_default_is_the_papers_network():
    opt = Options()
    assert (opt.fusion_type, opt.fusion_layer, opt.fusion_point, opt.temporal_pool, opt.temporal_tower) == \
        ("conv3d", "layer4", "relu", "3d", True)
    model = build_model(cfg())
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert len(convs) == 1 and convs[0] is model.fuse.conv  # one 3D conv: the fusion itself
    assert convs[0].in_channels == 1024 and convs[0].out_channels == 512 and convs[0].kernel_size == (3, 3, 3)
    assert convs[0].padding == (1, 1, 1)
    assert model.head.pool_time and model.flow_head.pool_time


def test_fusion_takes_the_rectified_maps():
    a = torch.tensor([-1.0, 2.0, -3.0]).view(1, 3, 1, 1)
    b = torch.tensor([2.0, -1.0, -1.0]).view(1, 3, 1, 1)
    relu = torch.relu
    # After the ReLU (the authors' relu5_3): negative parts of a map never cancel the other stream.
    torch.testing.assert_close(Fuse("sum", 3)(a, b, 1), relu(a) + relu(b))
    assert Fuse("sum", 3)(a, b, 1).flatten().tolist() == [2.0, 2.0, 0.0]
    assert Fuse("sum", 3, "pre-relu")(a, b, 1).flatten().tolist() == [1.0, 1.0, 0.0]  # ReLU(a + b)
    assert Fuse("max", 3)(a, b, 1).flatten().tolist() == [2.0, 2.0, 0.0]
    torch.testing.assert_close(Fuse("conv", 3)(a, b, 1), relu(a) + relu(b))  # [I, I] starts as their sum
    # In the network: the fused map is ReLU(a') + ReLU(b') of the streams' stage outputs before their ReLU.
    torch.manual_seed(3)
    model = build_model(cfg(fusion_type="sum", temporal_pool="none", fusion_layer="layer2")).eval()
    x = clip(size=32)
    seen = {}
    model.fuse.register_forward_hook(lambda _module, inputs, out: seen.update(inputs=inputs, out=out))
    model(x)
    a_pre, b_pre, _ = seen["inputs"]
    assert (a_pre < 0).any() and (b_pre < 0).any()
    expect = stem(model.rgb, x["rgb"].flatten(0, 2))
    expect = run_stage(model.rgb, "layer2", run_stage(model.rgb, "layer1", expect))
    torch.testing.assert_close(torch.relu(a_pre), expect)  # the stage's rectified output
    torch.testing.assert_close(seen["out"], torch.relu(a_pre) + torch.relu(b_pre))


def test_3d_conv_init_is_a_quarter_appearance_three_quarters_motion_times_a_gaussian():
    fuse = Fuse("conv3d", 8)
    w, g = fuse.conv.weight, gaussian()
    eye = torch.eye(8)[:, :, None, None, None]
    torch.testing.assert_close(w[:, :8], 0.25 * eye * g)
    torch.testing.assert_close(w[:, 8:], 0.75 * eye * g)
    assert fuse.conv.bias.abs().sum() == 0
    # On a static clip of constant maps (away from the zero padding): 0.25 a + 0.75 b.
    a = torch.rand(1, 8, 1, 1).expand(5, 8, 7, 7)
    b = torch.rand(1, 8, 1, 1).expand(5, 8, 7, 7)
    y = fuse(a, b, 5)
    torch.testing.assert_close(y[2, :, 3, 3], 0.25 * a[0, :, 0, 0] + 0.75 * b[0, :, 0, 0])
    with pytest.raises(ValueError, match="not 2 blocks"):
        conv3d_fusion_init_(torch.nn.Conv3d(12, 8, 3))


def test_3d_pooling_is_one_max_over_all_snippets():
    torch.manual_seed(4)
    x = torch.randn(2 * 5, 6, 4, 4)  # 2 clips of T = 5
    torch.testing.assert_close(max_over_snippets(x, 5), x.unflatten(0, (2, 5)).amax(1))
    tower = Tower(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1)), 6, 6, 0.0, True)
    with torch.no_grad():
        tower.fc.weight.copy_(torch.eye(6))
        tower.fc.bias.zero_()
    # A spike in one snippet survives whole: the max over time, then the spatial pooling.
    spike = torch.zeros(5, 6, 4, 4)
    spike[3, 2] = 8.0
    assert tower(spike, 5)[0].tolist() == [0.0, 0.0, 8.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(tower(x, 5), x.unflatten(0, (2, 5)).amax(1).mean((2, 3)))
    # Without 3D pooling each snippet is scored alone and the scores averaged.
    tower.pool_time = False
    torch.testing.assert_close(tower(x, 5), x.mean((2, 3)).unflatten(0, (2, 5)).mean(1))


def test_parameter_counts_follow_the_fusion_layers():
    r18 = count(torchvision.models.resnet18()) - (512 * 1000 + 1000)  # trunk without fc
    flow_conv1 = 64 * 2 * 4 * 49 - 64 * 3 * 49  # conv1 takes 2L = 8 channels
    heads = 2 * (512 * N + N)  # fused tower + temporal tower
    base = 2 * r18 + flow_conv1 + heads
    c = 512
    # 2D fusion, then 3D pooling: exactly that, no 3D conv hidden in the pooling.
    for kind in ("sum", "max"):
        assert count(build_model(cfg(fusion_type=kind, temporal_pool="3d"))) == base
        assert count(build_model(cfg(fusion_type=kind, temporal_pool="none"))) == base
    assert count(build_model(cfg(fusion_type="conv", temporal_pool="3d"))) == base + 2 * c * c + c
    # The paper's 3D conv fusion: one 3x3x3 conv 2C -> C.
    assert count(build_model(cfg(fusion_type="conv3d"))) == base + 27 * 2 * c * c + c
    assert count(build_model(cfg(fusion_type="concat", temporal_pool="3d"))) == base + c * N
    assert count(build_model(cfg(fusion_type="bilinear", temporal_pool="none"))) == base + (c * c - c) * N


def test_resnet50_streams_have_torchvision_sizes():
    model = build_model(cfg(arch="resnet50", clip_len=10, fusion_type="sum", temporal_pool="none",
                            temporal_tower=False))
    assert count(model.rgb) == 23_508_032  # ResNet-50 without its ImageNet classifier
    assert count(model.flow) == 23_508_032 + 64 * 49 * (20 - 3)
    assert stage_channels(model.rgb, "layer4") == 2048 and stage_channels(model.rgb, "layer3") == 1024


def test_temporal_pooling_sees_the_order_of_the_snippets_only_through_the_3d_conv():
    torch.manual_seed(2)
    x = clip(t=4, size=32)
    reverse = {k: v.flip(2) for k, v in x.items()}
    conv3d = build_model(cfg(t=4)).eval()
    with torch.no_grad():
        for w in conv3d.fuse.conv.parameters():  # a conv that is not symmetric in time
            w.add_(0.01 * torch.randn_like(w))
    assert not torch.allclose(conv3d(x)["fusion"], conv3d(reverse)["fusion"], atol=1e-6)
    for pool in ("3d", "none"):  # a max or a mean over time does not see the order
        plain = build_model(cfg(t=4, fusion_type="conv", temporal_pool=pool)).eval()
        torch.testing.assert_close(plain(x)["fusion"], plain(reverse)["fusion"], atol=1e-5, rtol=1e-4)


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


def test_vgg16_streams_at_full_size_fuse_at_relu5_3():
    with torch.device("meta"):
        model = build_model(cfg(arch="vgg16", t=5, clip_len=10))
        reference = torchvision.models.vgg16()
    fc8 = 4096 * 1000 + 1000
    vgg = count(reference) - fc8  # conv1_1 ... fc7: both streams keep their fc6 and fc7
    flow_conv1 = 64 * 9 * (20 - 3)
    fusion = 27 * 1024 * 512 + 512
    assert count(model) == 2 * vgg + flow_conv1 + fusion + 2 * (4096 * N + N)
    assert count(model) > 270_000_000
    x = torch.empty(5, 3, 224, 224, device="meta")
    maps = run_stage(model.rgb, "layer4", run_stage(model.rgb, "layer3", run_stage(
        model.rgb, "layer2", run_stage(model.rgb, "layer1", stem(model.rgb, x)))))
    assert maps.shape == (5, 512, 14, 14)  # conv5_3's maps, before pool5
    out = model({"rgb": torch.empty(1, 1, 5, 3, 224, 224, device="meta"),
                 "flow": torch.empty(1, 1, 5, 20, 224, 224, device="meta")})
    assert {k: tuple(v.shape) for k, v in out.items()} == {"fusion": (1, N), "flow": (1, N)}


def test_vgg16_fusion_trains_two_steps_on_cpu():
    torch.manual_seed(0)
    model = build_model(cfg(arch="vgg16", t=2, clip_len=2))
    before = model.head.top[3].weight[:3, :3].clone()  # fc6 of the fused tower (the spatial stream's)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    labels = torch.tensor([0, 3])
    for _ in range(2):
        out = model(clip(t=2, clip_len=2, size=32))
        loss = model.training_loss(out, labels, torch.nn.functional.cross_entropy)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.head.top[3].weight[:3, :3])
    assert model.fuse.conv.weight.grad is not None and model.flow.features[0].weight.grad.abs().sum() > 0


def test_options_name_what_cannot_be_built():
    with pytest.raises(ValueError, match="unknown fusion type"):
        Options(fusion_type="product")
    with pytest.raises(ValueError, match="unknown fusion point"):
        Options(fusion_point="after")
    with pytest.raises(ValueError, match="no positions"):
        Options(fusion_type="bilinear", temporal_pool="3d")
    with pytest.raises(ValueError, match="needs both streams"):
        check(ModelConfig(model="fusion", streams="flow", num_classes=N, clip_len=4, snippets=3))
    with pytest.raises(ValueError, match="T >= 1"):
        check(ModelConfig(model="fusion", num_classes=N, clip_len=4))
    with pytest.raises(ValueError, match="fc6"):
        check(cfg(arch="vgg16", fusion_type="concat"))


def test_config_round_trips_through_json():
    from training.models import model_config_from_dict

    c = cfg(fusion_type="max", fusion_layer="layer3", fusion_point="pre-relu", temporal_pool="none",
            temporal_tower=False)
    assert model_config_from_dict(json.loads(json.dumps(c.to_dict()))) == c
