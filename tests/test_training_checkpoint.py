"""Checkpoints: exact round trip, safe loading (weights_only), atomic writes, dataset version."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from jobs.runs import make_scheduler
from training import checkpoint
from training.config import TrainConfig
from training.data import DataConfig
from training.models import ModelConfig, build_model
from training.transforms import TransformConfig



@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Every test here runs with one intra-op thread (see conftest.torch_one_thread)."""

def train_config(tmp_path, **kw) -> TrainConfig:
    data = DataConfig(streams="both", clip_len=2, batch_size=2, workers=0, transform=TransformConfig(crop_size=32))
    model = ModelConfig(arch="resnet18", streams="both", num_classes=3, clip_len=2)
    return TrainConfig(dataset=str(tmp_path), output=str(tmp_path / "run"), data=data, model=model, epochs=2,
                       device="cpu", **kw)


def one_step(model, optimizer, scheduler):
    x = {"rgb": torch.randn(2, 1, 1, 3, 32, 32), "flow": torch.randn(2, 1, 1, 4, 32, 32)}
    out = model(x)
    loss = sum(torch.nn.functional.cross_entropy(v, torch.tensor([0, 2])) for v in out.values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def test_config_round_trips_through_json(tmp_path):
    cfg = train_config(tmp_path, warmup_epochs=1.0)
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_config_checks_clip_len_against_the_model(tmp_path):
    cfg = train_config(tmp_path)
    with pytest.raises(ValueError, match="clip_len"):
        TrainConfig(**{**cfg.__dict__, "data": DataConfig(clip_len=3, streams="both")})
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        train_config(tmp_path, optimizer="lamb")


def test_round_trip_restores_every_state_exactly(tmp_path):
    torch.manual_seed(0)
    cfg = train_config(tmp_path, warmup_epochs=0.5)
    model = build_model(cfg.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(3):
        one_step(model, optimizer, scheduler)
    (tmp_path / "dataset.json").write_text(json.dumps({"version": "abc123"}))
    ckpt = checkpoint.make_checkpoint(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, step=3,
                                      epoch=0, config=cfg.to_dict(),
                                      dataset_version=checkpoint.dataset_version(tmp_path))
    checkpoint.save_checkpoint(ckpt, tmp_path / "run", names=("epoch_000.pt", "last.pt"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["epoch_000.pt", "last.pt"]  # no temp files

    loaded = checkpoint.load_checkpoint(tmp_path / "run" / "last.pt")
    assert loaded["dataset_version"] == "abc123" and loaded["step"] == 3 and loaded["epoch"] == 0
    assert TrainConfig.from_dict(loaded["config"]) == cfg
    model2 = build_model(cfg.model)
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    scheduler2 = make_scheduler(optimizer2, cfg, steps_per_epoch=4)
    step, epoch = checkpoint.restore(loaded, model=model2, optimizer=optimizer2, scheduler=scheduler2,
                                     scaler=torch.amp.GradScaler("cpu", enabled=False))
    assert (step, epoch) == (3, 0)
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    # Continuing both gives identical weights: the optimizer and scheduler state came back too.
    torch.manual_seed(5)
    one_step(model, optimizer, scheduler)
    torch.manual_seed(5)
    one_step(model2, optimizer2, scheduler2)
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


class Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_loading_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": {}, "config": Payload()}, path)
    with pytest.raises(ValueError, match="not a checkpoint") as err:  # a clean error naming the file
        checkpoint.load_checkpoint(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)  # refused by the weights-only unpickler


def test_config_must_be_plain_json(tmp_path):
    model = torch.nn.Linear(1, 1)
    with pytest.raises(TypeError):
        checkpoint.make_checkpoint(model=model, optimizer=None, scheduler=None, scaler=None, step=0, epoch=0,
                                   config={"path": tmp_path}, dataset_version="x")


def test_dataset_version_falls_back_to_the_hash_of_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text('{"kind": "videos"}')
    import hashlib

    assert checkpoint.dataset_version(tmp_path) == hashlib.sha256(b'{"kind": "videos"}').hexdigest()


def test_resume_point_names_the_epoch_checkpoint_it_falls_back_to(tmp_path):
    """A step checkpoint of another loader geometry (an elastic group that shrank) goes back to
    its epoch's start: the checkpoint restored, and the file it came from, are epoch_NNN.pt."""
    from jobs.runs import resume_point

    model = torch.nn.Linear(1, 1)
    run = tmp_path / "run"

    def save(step, epoch, names, **extra):
        ckpt = checkpoint.make_checkpoint(model=model, optimizer=None, scheduler=None, scaler=None, step=step,
                                          epoch=epoch, config={}, dataset_version="x")
        checkpoint.save_checkpoint({**ckpt, **extra}, run, names=names)

    save(4, 0, ("epoch_000.pt",))
    geometry = {"world_size": 2, "workers": 0, "batch_size": 2, "steps": 4}
    save(6, 0, ("last.pt",), position={**geometry, "epoch_step": 2})
    last = checkpoint.load_checkpoint(run / "last.pt")
    ckpt, start, at = resume_point(last, run / "last.pt", geometry)
    assert (ckpt["step"], start, at) == (6, 2, run / "last.pt")  # same geometry: inside the epoch
    ckpt, start, at = resume_point(last, run / "last.pt", {**geometry, "world_size": 1, "batch_size": 4})
    assert (ckpt["step"], start, str(at)) == (4, 0, str(run / "epoch_000.pt"))
    save(2, -1, ("last.pt",), position={**geometry, "epoch_step": 2})  # inside the first epoch
    first = checkpoint.load_checkpoint(run / "last.pt")
    assert resume_point(first, run / "last.pt", {**geometry, "world_size": 1}) == ({}, 0, None)
