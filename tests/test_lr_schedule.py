"""The learning-rate schedules: the papers' step schedule (lr times gamma after given epochs),
after an optional warm-up, beside the cosine default; settings checked; state through a checkpoint."""
from __future__ import annotations

import io
import itertools
import json

import pytest
import torch
from click.testing import CliRunner

from jobs.runs import make_scheduler
from training.config import TrainConfig
from training.data import DataConfig
from training.models import ModelConfig
from training.transforms import TransformConfig


def train_config(**kw) -> TrainConfig:
    data = DataConfig(streams="rgb", clip_len=2, workers=0, transform=TransformConfig(crop_size=32))
    model = ModelConfig(arch="resnet18", streams="rgb", num_classes=3, clip_len=2)
    return TrainConfig(dataset="d", output="o", data=data, model=model, device="cpu", lr=1e-3, **kw)


def lrs(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The lr of every optimizer step of the run."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_step_schedule_divides_the_lr_after_the_given_epochs():
    cfg = train_config(epochs=6, lr_schedule="step", lr_steps=(2, 4), lr_gamma=0.1)
    got = lrs(cfg, steps_per_epoch=3)
    expect = [1e-3] * 6 + [1e-4] * 6 + [1e-5] * 6
    assert got == pytest.approx(expect, rel=1e-6)


def test_step_schedule_after_a_warm_up():
    cfg = train_config(epochs=4, lr_schedule="step", lr_steps=(2,), lr_gamma=0.5, warmup_epochs=1.0)
    got = lrs(cfg, steps_per_epoch=4)
    assert got[0] == pytest.approx(1e-5) and got[1] < got[2] < got[3] < 1e-3  # linear warm-up
    assert got[4:8] == pytest.approx([1e-3] * 4) and got[8:] == pytest.approx([5e-4] * 8)


def test_cosine_stays_the_default():
    cfg = train_config(epochs=2)
    assert cfg.lr_schedule == "cosine" and cfg.lr_steps == ()
    got = lrs(cfg, steps_per_epoch=4)
    assert got[0] == pytest.approx(1e-3) and all(a > b for a, b in itertools.pairwise(got))


@pytest.mark.parametrize("kw,match", [
    ({"lr_schedule": "poly"}, "unknown lr schedule"),
    ({"lr_schedule": "step"}, "lr_steps must be"),
    ({"lr_schedule": "step", "lr_steps": (4, 2)}, "lr_steps must be"),
    ({"lr_schedule": "step", "lr_steps": (6,)}, "lr_steps must be"),
    ({"lr_schedule": "step", "lr_steps": (2,), "lr_gamma": 1.5}, "lr_gamma"),
    ({"lr_steps": (2,)}, "belong to the step schedule"),
])
def test_bad_schedules_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        train_config(epochs=6, **kw)


def test_step_schedule_round_trips_through_config_and_checkpoint_state():
    cfg = train_config(epochs=6, lr_schedule="step", lr_steps=(2, 4))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = make_scheduler(optimizer, cfg, 3)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    buf = io.BytesIO()
    torch.save(scheduler.state_dict(), buf)
    buf.seek(0)
    again = make_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr), cfg, 3)
    again.load_state_dict(torch.load(buf, weights_only=True))  # plain data: weights_only loading takes it
    assert again.get_last_lr() == pytest.approx([1e-4])


def test_the_train_command_passes_the_step_schedule_on(monkeypatch):
    import jobs.commands.train
    from training import data

    fake = data.DataSource(kind="videos", label_map={"a": 0, "b": 1}, shards=(), info={})
    monkeypatch.setattr(data, "open_source", lambda _spec: fake)
    seen = {}

    def train(cfg, progress):  # records the config instead of training
        seen["cfg"] = cfg
        return {"steps": 0, "eval": None}

    monkeypatch.setattr(jobs.commands.train, "train", train)
    args = ["DS", "--output", "run", "--arch", "resnet18", "--weights", "none", "--device", "cpu", "--epochs", "6"]
    result = CliRunner().invoke(jobs.commands.train.train_command, [*args, "--lr-schedule", "step", "--lr-steps", "2,4",
                                                           "--lr-gamma", "0.5"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.lr_schedule, cfg.lr_steps, cfg.lr_gamma) == ("step", (2, 4), 0.5)
    result = CliRunner().invoke(jobs.commands.train.train_command, args)
    assert (seen["cfg"].lr_schedule, seen["cfg"].lr_steps) == ("cosine", ())
    result = CliRunner().invoke(jobs.commands.train.train_command, [*args, "--lr-schedule", "step"])
    assert result.exit_code != 0 and "lr_steps must be" in result.output
