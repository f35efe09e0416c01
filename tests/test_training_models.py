"""Two-stream models: cross-modality init, shapes, consensus over views, fusion, partial BN."""
from __future__ import annotations

import pytest
import torch
import torchvision

from training import models
from training.models import ModelConfig, build_model, cross_modality_conv



@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Every test here runs with one intra-op thread (see conftest.torch_one_thread)."""

def cfg(**kw) -> ModelConfig:
    base = {"arch": "resnet18", "num_classes": 5, "clip_len": 4}
    return ModelConfig(**{**base, **kw})


def batch(b=2, v=1, size=32, clip_len=4, k=1):
    return {"rgb": torch.randn(b, v, k, 3, size, size), "flow": torch.randn(b, v, k, 2 * clip_len, size, size)}


def test_cross_modality_init_averages_rgb_filters_into_every_flow_channel():
    torch.manual_seed(0)
    rgb_conv = torchvision.models.resnet18(weights=None).conv1
    conv = cross_modality_conv(rgb_conv, 20)
    assert conv.weight.shape == (64, 20, 7, 7)
    mean = rgb_conv.weight.mean(dim=1)
    for c in range(20):
        torch.testing.assert_close(conv.weight[:, c], mean)


def test_temporal_stream_takes_2L_channels_initialised_from_the_rgb_filters(tmp_path):
    # Local weights (the user's own file): the flow stream's conv1 is their channel mean.
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(cfg(weights=str(path), clip_len=10))
    flow_conv = model.streams["flow"].trunk[0]
    assert flow_conv.in_channels == 20
    torch.testing.assert_close(flow_conv.weight[:, 7], reference.conv1.weight.mean(dim=1))
    torch.testing.assert_close(model.streams["rgb"].trunk[0].weight, reference.conv1.weight)
    torch.testing.assert_close(model.streams["flow"].trunk[4][0].conv1.weight, reference.layer1[0].conv1.weight)


def test_in_channels_must_be_twice_the_clip_length():
    with pytest.raises(ValueError, match="2 \\* clip_len = 20"):
        cfg(clip_len=10, in_channels_flow=10)
    with pytest.raises(ValueError, match="neither|existing file"):
        build_model(cfg(weights="/no/such/file.pth"))
    with pytest.raises(ValueError, match="unknown arch"):
        models.check(cfg(arch="vgg11"))
    with pytest.raises(ValueError, match="conv fusion needs both"):
        models.check(cfg(streams="rgb", fusion="conv"))
    with pytest.raises(ValueError, match="unknown model"):
        build_model(cfg(model="no_such_family"))
    with pytest.raises(ValueError, match="one RGB frame"):
        build_model(cfg(rgb_frames=4))


@pytest.mark.parametrize("fusion", ["late", "conv"])
def test_forward_shapes_and_outputs(fusion):
    model = build_model(cfg(fusion=fusion, fusion_kernel=3 if fusion == "conv" else 1)).eval()
    out = model(batch())
    assert set(out) == ({"rgb", "flow", "fused"} if fusion == "conv" else {"rgb", "flow"})
    assert all(v.shape == (2, 5) for v in out.values())
    scores = model.scores(out)
    assert set(scores) == {"rgb", "flow", "fused"}
    torch.testing.assert_close(scores["fused"].sum(1), torch.ones(2))


def test_views_and_snippets_are_averaged_per_item():
    torch.manual_seed(0)
    model = build_model(cfg()).eval()
    x = batch(b=2, v=3, k=2)
    out = model(x)
    single = [model({n: t[:, i:i + 1, j:j + 1] for n, t in x.items()}) for i in range(3) for j in range(2)]
    torch.testing.assert_close(out["flow"], torch.stack([s["flow"] for s in single]).mean(0), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, V, K, C, H, W\)"):
        model({"rgb": torch.randn(2, 1, 3, 32, 32), "flow": torch.randn(2, 1, 8, 32, 32)})


def test_single_stream_model_and_late_fusion_weights():
    model = build_model(cfg(streams="flow")).eval()
    out = model({"flow": torch.randn(2, 1, 1, 8, 32, 32)})
    assert set(out) == {"flow"}
    scores = model.scores(out)
    torch.testing.assert_close(scores["fused"], scores["flow"])
    logits = {"rgb": torch.tensor([[4.0, 0.0]]), "flow": torch.tensor([[0.0, 4.0]])}
    fused = build_model(cfg(num_classes=2)).scores(logits)["fused"]
    assert fused[0, 1] > fused[0, 0]  # flow weighs 1.5, rgb 1
    p = torch.softmax(torch.tensor([4.0, 0.0]), 0)
    torch.testing.assert_close(fused[0], (1.0 * p + 1.5 * p.flip(0)) / 2.5)


def test_partial_bn_keeps_all_but_the_first_batchnorm_frozen():
    model = build_model(cfg(partial_bn=True))
    model.train()
    for stream in model.streams.values():
        bns = [m for m in stream.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns[0].training and bns[0].weight.requires_grad
        assert all(not b.training and not b.weight.requires_grad for b in bns[1:])
    before = model.streams["rgb"].trunk[4][0].bn1.running_mean.clone()
    model(batch())
    torch.testing.assert_close(model.streams["rgb"].trunk[4][0].bn1.running_mean, before)


def test_resnet50_builds_with_2L_channels():
    model = build_model(cfg(arch="resnet50", streams="flow", clip_len=10))
    assert model.streams["flow"].trunk[0].in_channels == 20
    assert model.streams["flow"].feature_dim == 2048


def test_factory_is_an_explicit_dict():
    assert {"resnet18", "resnet50"} <= set(models.ARCHS)
    assert "two_stream" in models.FAMILIES


def test_cli_model_names_are_the_factory_table():
    import click

    from jobs.commands.train import train_command

    option = next(p for p in train_command.get_params(click.Context(train_command)) if p.name == "model")
    assert list(option.type.choices) == list(models.FAMILIES)


def test_model_config_round_trips_through_json_types():
    c = cfg(fusion="conv", fusion_weights=(1.0, 2.0))
    assert models.model_config_from_dict(c.to_dict()) == c


def test_vgg16_streams_at_full_size_keep_fc6_fc7_and_cross_modality_init(tmp_path):
    with torch.device("meta"):
        model = build_model(cfg(arch="vgg16", clip_len=10))
        reference = torchvision.models.vgg16()
    params = {name: sum(p.numel() for p in s.parameters()) for name, s in model.streams.items()}
    fc8 = 4096 * 1000 + 1000
    vgg = sum(p.numel() for p in reference.parameters())
    assert params["rgb"] == vgg - fc8 + 4096 * 5 + 5
    assert params["flow"] == params["rgb"] + 64 * 9 * (20 - 3)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the papers' VGG: no BN
    out = model({"rgb": torch.empty(1, 1, 1, 3, 224, 224, device="meta"),
                 "flow": torch.empty(1, 1, 1, 20, 224, 224, device="meta")})
    assert {k: tuple(v.shape) for k, v in out.items()} == {"rgb": (1, 5), "flow": (1, 5)}
    # ImageNet weights (here a local state dict) reach conv1_1 ... fc7; the flow stream's first conv
    # is their channel mean (cross-modality), and fc8 is new.
    torch.manual_seed(2)
    small = torchvision.models.vgg16()
    path = tmp_path / "vgg16.pth"
    torch.save(small.state_dict(), path)
    net = build_model(cfg(arch="vgg16", clip_len=2, weights=str(path)))
    rgb, flow = net.streams["rgb"], net.streams["flow"]
    torch.testing.assert_close(rgb.trunk[28].weight, small.features[28].weight)  # conv5_3
    torch.testing.assert_close(rgb.top[3].weight, small.classifier[0].weight)  # fc6
    torch.testing.assert_close(flow.top[6].weight, small.classifier[3].weight)  # fc7
    torch.testing.assert_close(flow.trunk[0].weight[:, 3], small.features[0].weight.mean(1))
    assert rgb.fc.weight.shape == (5, 4096)


def test_vgg16_two_stream_trains_two_steps_on_cpu():
    torch.manual_seed(0)
    model = build_model(cfg(arch="vgg16", clip_len=2, fusion="conv"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = model.streams["flow"].trunk[0].weight.detach().clone()
    for _ in range(2):
        out = model(batch(clip_len=2))
        loss = model.training_loss(out, torch.tensor([0, 4]), torch.nn.functional.cross_entropy)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert set(out) == {"rgb", "flow", "fused"} and torch.isfinite(loss)
    assert not torch.equal(before, model.streams["flow"].trunk[0].weight)


def test_families_on_residual_units_refuse_vgg16():
    for name in ("st_resnet", "siamese", "detection"):
        with pytest.raises(ValueError, match="ResNet residual units"):
            models.check(cfg(model=name, arch="vgg16", snippets=4))
