"""Training on three streams (rgb, flow, warped: TSN's modalities) and mean flow subtraction
(--flow-mean-subtract), on a --flow-warp build of panning-camera videos."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from jobs.cli import cli
from pipeline import encode, open_dataset
from pipeline.synthetic import camera as sc
from tests.helpers import write_list
from training import data, streams
from training.data import shards as data_shards
from training.data import stages as data_stages
from training.transforms import TransformConfig
from training.models import ModelConfig, build_model
from training.models.base import late_fusion

FAST = ["--arch", "resnet18", "--weights", "none", "--workers", "0", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """One intra-op thread (see conftest.torch_one_thread)."""


def invoke(*args):
    res = CliRunner().invoke(cli, [*map(str, args)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two classes (camera panning left or right) x 2 videos of 6 frames at 128x96, --flow-warp."""
    root = tmp_path_factory.mktemp("warped_training")
    rows = []
    for label, pan in (("left", (-2.5, 0.0)), ("right", (2.5, 0.5))):
        for i in range(2):
            name = f"v_{label}_g{i:02d}"
            sc.write_camera_videos(root / label, {name: sc.CameraSceneConfig(width=128, height=96, frames=6,
                                                                            pan=pan, seed=i)})
            rows.append({"path": f"{label}/{name}.mp4", "label": label, "split": "train" if i == 0 else "test"})
    listing = write_list(root / "list.csv", rows)
    invoke("build", listing, root / "ds", "--flow", "dis", "--flow-warp", "--resize", "none", "--executor", "local",
           "--no-progress")
    invoke("clips", root / "ds", root / "clips", "--clip-len", "3", "--per-video", "2")
    return root / "ds", root / "clips"


def test_stream_settings():
    assert streams.stream_names("both") == ("rgb", "flow")
    assert streams.stream_names("warped,rgb,flow") == ("rgb", "flow", "warped")
    for bad in ("rgb,rgb", "depth", "rgb,"):
        with pytest.raises(ValueError, match="unknown streams"):
            streams.stream_names(bad)
    cfg = ModelConfig(arch="resnet18", streams="rgb,flow,warped", num_classes=3, clip_len=2)
    assert cfg.stream_names == ("rgb", "flow", "warped") and cfg.fusion_weights == (1.0, 1.0, 0.5)
    assert ModelConfig(arch="resnet18", num_classes=3).fusion_weights == (1.0, 1.5)
    with pytest.raises(ValueError, match="3 non-negative numbers"):
        ModelConfig(arch="resnet18", streams="rgb,flow,warped", num_classes=3, fusion_weights=(1.0, 1.5))
    with pytest.raises(ValueError, match="conv fusion needs both"):
        build_model(ModelConfig(arch="resnet18", streams="rgb,flow,warped", num_classes=3, fusion="conv"))


def test_late_fusion_over_three_streams():
    s = {"rgb": torch.tensor([[1.0, 0.0]]), "flow": torch.tensor([[0.0, 1.0]]), "warped": torch.tensor([[0.0, 1.0]])}
    fused = late_fusion(s, (1.0, 1.0, 0.5))["fused"]
    assert torch.allclose(fused, torch.tensor([[1 / 2.5, 1.5 / 2.5]]))
    assert torch.allclose(late_fusion({"rgb": s["rgb"], "flow": s["flow"]}, (1.0, 1.5))["fused"],
                          torch.tensor([[0.4, 0.6]]))


def test_warped_stack_gets_the_flow_stack_s_crop_and_flip(built):
    """With warped members replaced by the flow members, both streams must come out equal:
    one crop, one flip (x negated on the same channels) and, with mean subtraction, one mean."""
    ds, _ = built
    sample = open_dataset(ds).raw("right_v_right_g00")[0]
    meta = encode.load_meta(sample[encode.META])
    twin = dict(sample)
    for i in range(len(meta["flow_fields"])):
        twin[encode.warped_member(i)] = sample[encode.flow_member(i)]
    from training.transforms import TransformConfig

    for subtract in (False, True):
        cfg = data.DataConfig(streams="flow,warped", clip_len=3, transform=TransformConfig(crop_size=48),
                              flow_mean_subtract=subtract)
        state = data_shards.EpochState()
        for epoch in range(4):  # different crops and flips
            state.epoch = epoch
            items = list(data_stages.transform(data_stages.decode(data_stages.pick([twin], data_stages.PickPlan(cfg=cfg, train=True), state)),
                                        cfg, True, state))
            (item,) = items
            assert item["flow"].shape == item["warped"].shape == (1, 1, 6, 48, 48)
            assert np.array_equal(item["flow"], item["warped"])
            if subtract:
                assert np.allclose(item["flow"].mean(axis=(-2, -1)), 0, atol=1e-5)


def test_flow_and_warped_differ_where_the_camera_moves(built):
    ds, _ = built
    cfg = data.DataConfig(streams="rgb,flow,warped", clip_len=3, transform=TransformConfig(crop_size=64),
                          batch_size=2, workers=0)
    loader = data.make_loader(data.open_source(ds), "test", cfg, train=False)
    batch = next(iter(loader))
    assert batch["rgb"].shape[3] == 3 and batch["flow"].shape == batch["warped"].shape
    # the pan (2.5 px) is in flow and not in warped flow: mean |x| is much larger in flow
    assert batch["flow"][:, :, :, 0::2].abs().mean() > 3 * batch["warped"][:, :, :, 0::2].abs().mean()


def test_train_three_streams_then_evaluate_prints_a_table(built, tmp_path):
    ds, clips = built
    run = tmp_path / "run"
    out = invoke("train", clips, "--output", run, "--streams", "rgb,flow,warped", "--flow-mean-subtract",
                 "--epochs", "1", "--batch-size", "2", "--crop-size", "32", "--steps-per-epoch", "2",
                 "--eval-every", "0", *FAST)
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 2
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["streams"] == "rgb,flow,warped" and saved["data"]["flow_mean_subtract"] is True
    assert saved["model"]["fusion_weights"] == [1.0, 1.0, 0.5]
    table = invoke("evaluate", ds, run / "last.pt", "--test-clips", "2", "--device", "cpu", "--workers", "0",
                   "--no-progress")
    names = [line.split()[0] for line in table.splitlines() if line.split() and not line.startswith("STREAM")]
    assert names[:4] == ["rgb", "flow", "fused", "warped"]
    assert all(line.split()[-1] == "2" for line in table.splitlines()[1:5])  # two test videos scored
    assert not list(tmp_path.glob("*.json"))  # no JSON unless asked
