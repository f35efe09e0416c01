"""The fusion and ST-ResNet families through the real path: a built binding set, the strided
loader, `flowshard train` and `flowshard evaluate`; ImageNet weights that cannot be had offline."""
from __future__ import annotations

import json
import urllib.error

import pytest
import torch
import torchvision
from click.testing import CliRunner

from pipeline.synthetic import sets
from test_clips import flowshard
from training.models import backbones

FAST = ["--arch", "resnet18", "--weights", "none", "--workers", "0", "--device", "cpu", "--no-progress",
        "--crop-size", "32", "--clip-len", "4", "--batch-size", "2", "--no-flip"]


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Every test here runs with one intra-op thread (see conftest.torch_one_thread)."""


@pytest.fixture(scope="module")
def binding(tmp_path_factory):
    """A tiny binding set (1 train + 1 test video per class, 16 frames of 48x48), built with Farneback."""
    root = tmp_path_factory.mktemp("binding")
    cfg = sets.SetConfig(per_class=1, test_per_class=1, num_frames=16, size=(48, 48), object_size=12)
    listing = sets.write_set(root / "set", "binding", cfg, sets.photos())
    flowshard("build", str(listing), str(root / "ds"), "--flow", "farneback", "--resize", "none",
              "--executor", "local", "--no-progress")
    return root / "ds"


@pytest.mark.parametrize("model,flags,outputs", [
    ("fusion", [], {"fusion", "flow"}),  # the paper's network: 3D conv fusion, max over all T
    ("fusion", ["--fusion-type", "conv", "--temporal-pool", "3d", "--fusion-point", "pre-relu"], {"fusion", "flow"}),
    ("fusion", ["--fusion-type", "bilinear", "--temporal-pool", "none", "--no-temporal-tower"], {"fusion"}),
    ("st_resnet", ["--st-connection", "multiplicative"], {"rgb", "flow"}),
])
def test_a_few_training_steps_and_an_evaluation(binding, tmp_path, model, flags, outputs):
    run = tmp_path / "run"
    flowshard("train", str(binding), "--output", str(run), "--model", model, *flags, "--snippets", "3",
              "--strides", "1,3", "--steps-per-epoch", "2", "--epochs", "1", "--eval-every", "0", *FAST)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["model"] == model and cfg["model"]["snippets"] == 3
    assert cfg["data"]["sampler"] == "strided" and cfg["data"]["strides"] == [1, 3]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["train"]["loss"] > 0
    flowshard("evaluate", str(binding), str(run / "last.pt"), "--json", str(tmp_path / "m.json"),
              "--test-clips", "1", "--device", "cpu", "--workers", "0", "--no-progress")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {k for k, v in metrics.items() if isinstance(v, dict) and "video_top1" in v} == outputs | {"fused"}
    assert metrics["fused"]["videos"] == 4 and metrics["fused"]["clips"] == 4 * 2  # one clip per stride


def test_the_model_takes_strided_clips_only(binding, tmp_path):
    from jobs.cli import cli as main

    result = CliRunner().invoke(main, ["train", str(binding), "--output", str(tmp_path / "r"), "--model", "fusion",
                                       "--sampling", "simonyan", "--steps-per-epoch", "1", "--epochs", "1", *FAST])
    assert result.exit_code != 0 and "--sampling strided --snippets 5" in result.output


def test_imagenet_weights_come_from_the_cache_and_offline_say_how_to_go_on(monkeypatch, tmp_path, binding):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ValueError, match="--weights none") as err:
        backbones.load_backbone("resnet18", "imagenet")
    assert str(backbones.imagenet_cache_path("resnet18")) in str(err.value)

    def must_not_download(url, dst, *args, **kwargs):
        raise AssertionError(f"the default weights must not download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", must_not_download)
    with pytest.raises(ValueError, match="--weights imagenet.*--weights none"):
        backbones.load_backbone("resnet18", "auto")
    from jobs.cli import cli as main

    args = ["train", str(binding), "--output", str(tmp_path / "r"), "--model", "st_resnet", "--arch", "resnet18",
            "--steps-per-epoch", "1", "--epochs", "1", "--device", "cpu", "--workers", "0", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "--weights none" in result.output  # the default, not a silent random start
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    path = backbones.imagenet_cache_path("resnet18")
    torch.save(reference.state_dict(), path)
    for weights in ("imagenet", "auto"):  # both read the cached file
        loaded = backbones.load_backbone("resnet18", weights)
        torch.testing.assert_close(loaded.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)


def test_train_help_lists_the_models_and_their_options():
    from jobs.cli import cli

    text = CliRunner().invoke(cli, ["train", "--help"], terminal_width=200).output
    assert "[two_stream|fusion|st_resnet" in text
    for flag in ("--fusion-type [conv3d|sum|max|concat|conv|bilinear]", "--fusion-layer", "--temporal-pool [3d|none]",
                 "--fusion-point [relu|pre-relu]", "--lr-schedule [cosine|step]",
                 "--temporal-tower", "--st-connection [additive|multiplicative|none]", "--flow-weights",
                 "--flow-dropout", "--crop-positions [5|13]", "--max-distort"):
        assert flag in text, flag
    assert "pretrain-flow" in CliRunner().invoke(cli, ["--help"]).output


@pytest.mark.parametrize("model", ["two_stream", "fusion", "st_resnet"])
def test_the_temporal_stream_can_have_its_own_learning_rate(model):
    from training.models import ModelConfig, build_model
    from training.models.base import param_groups

    net = build_model(ModelConfig(model=model, arch="resnet18", num_classes=4, clip_len=4,
                                  snippets=0 if model == "two_stream" else 2))
    spatial, temporal = param_groups(net, 0.001, 0.005)
    assert (spatial["lr"], temporal["lr"]) == (0.001, 0.005)
    ids = {id(p) for p in temporal["params"]}
    flow = net.streams["flow"] if model == "two_stream" else net.flow
    rgb = net.streams["rgb"] if model == "two_stream" else net.rgb
    assert all(id(p) in ids for p in flow.parameters()) and not any(id(p) in ids for p in rgb.parameters())
    assert len(spatial["params"]) + len(temporal["params"]) == len(list(net.parameters()))
    assert len(param_groups(net, 0.001)) == 1  # no --flow-lr: one group
