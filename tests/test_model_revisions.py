"""Model revisions: a checkpoint records the revision of its family's network, and one made for a
revision whose computation has since changed (fusion, ST-ResNet: revision 2) is refused with a
clear message instead of being run through the new network; unchanged families keep loading."""
from __future__ import annotations

import json

import pytest
import torch

from jobs.runs import check_resume
from training import models
from training.config import TrainConfig
from training.data import DataConfig
from training.models import ModelConfig, build_model, model_config_from_dict
from training.transforms import TransformConfig


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Every test here runs with one intra-op thread (see conftest.torch_one_thread)."""


def train_config(tmp_path, model: str = "fusion") -> TrainConfig:
    snippets = 0 if model == "two_stream" else 3
    data = DataConfig(streams="both", clip_len=2, sampler="strided" if snippets else "simonyan",
                      snippets=max(1, snippets), ordered=bool(snippets), workers=0,
                      transform=TransformConfig(crop_size=32))
    cfg = ModelConfig(model=model, arch="resnet18", num_classes=3, clip_len=2, snippets=snippets)
    return TrainConfig(dataset=str(tmp_path), output=str(tmp_path / "run"), data=data, model=cfg, device="cpu")


def test_the_changed_families_are_at_revision_2_and_the_others_at_1():
    assert {name: models.revision(name) for name in models.FAMILIES} == {
        name: 2 if name in ("fusion", "st_resnet") else 1 for name in models.FAMILIES}


@pytest.mark.parametrize("family", ["fusion", "st_resnet"])
def test_a_checkpoint_config_of_an_earlier_revision_is_refused(tmp_path, family):
    saved = train_config(tmp_path, family).to_dict()
    assert saved["model"]["revision"] == 2  # recorded in every checkpoint's config
    assert TrainConfig.from_dict(json.loads(json.dumps(saved))).model.revision == 2
    del saved["model"]["revision"]  # as written before revisions were recorded: revision 1
    with pytest.raises(ValueError, match=f"'{family}' model is revision 1.*builds revision 2.*Retrain"):
        TrainConfig.from_dict(saved)
    with pytest.raises(ValueError, match="revision 1"):
        model_config_from_dict({**saved["model"], "revision": 1})
    with pytest.raises(ValueError, match="revision 1"):
        build_model(ModelConfig(model=family, arch="resnet18", num_classes=3, clip_len=2, snippets=3, revision=1))


def test_an_old_checkpoint_of_an_unchanged_family_still_loads_and_resumes(tmp_path):
    cfg = train_config(tmp_path, "two_stream")
    saved = cfg.to_dict()
    del saved["model"]["revision"]
    assert TrainConfig.from_dict(saved) == cfg  # revision 1 = the current two_stream
    check_resume({"config": saved, "dataset_version": "v"}, cfg, "v")
    with pytest.raises(ValueError, match="revision"):  # but not a fusion checkpoint under a two_stream run
        check_resume({"config": {**saved, "model": {**saved["model"], "revision": 2}}, "dataset_version": "v"},
                     cfg, "v")


def test_evaluation_refuses_an_old_fusion_checkpoint(tmp_path):
    from training import checkpoint

    cfg = train_config(tmp_path)
    model = build_model(cfg.model)
    config = cfg.to_dict()
    del config["model"]["revision"]
    ckpt = checkpoint.make_checkpoint(model=model, optimizer=None, scheduler=None, scaler=None, step=1, epoch=0,
                                      config=config, dataset_version="v")
    checkpoint.save_checkpoint(ckpt, tmp_path / "run", names=("last.pt",))
    from jobs.train import evaluate_checkpoint

    with pytest.raises(ValueError, match="revision 1"):
        evaluate_checkpoint(str(tmp_path), str(tmp_path / "run" / "last.pt"), split="test", device="cpu",
                            batch_size=None, workers=None, test_clips=None, test_crops=None)


def test_the_release_fixtures_r3d_checkpoint_is_revision_1():
    from pathlib import Path

    ckpt = torch.load(Path(__file__).parent / "fixtures" / "release-0.1" / "run" / "last.pt", map_location="cpu",
                      weights_only=True)
    assert "revision" not in ckpt["config"]["model"] and ckpt["config"]["model"]["model"] == "r3d"
    assert TrainConfig.from_dict(ckpt["config"]).model.revision == 1 == models.revision("r3d")
