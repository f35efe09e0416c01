"""The configuration of a training run: optimisation and runtime settings, plus the
data (training.data.DataConfig) and model (training.models.ModelConfig) configs they own.

A TrainConfig converts to plain JSON types (`to_dict`) for checkpoints and logs, and back
(`from_dict`), so a checkpoint never stores a Python object that needs unpickling.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from training import models
from training.data import DataConfig
from training.models import ModelConfig
from training.transforms import TransformConfig

OPTIMIZERS = ("sgd", "adamw")
AMP_MODES = ("auto", "bf16", "fp16", "off")
DEVICES = ("cpu", "cuda")
EPOCH_SIZES = ("samples", "videos")
LR_SCHEDULES = ("cosine", "step")  # jobs.runs.make_scheduler


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run. `amp="auto"` is bf16 on CUDA and off on CPU."""

    dataset: str
    output: str
    data: DataConfig
    model: ModelConfig
    epochs: int = 30
    lr: float = 0.001
    flow_lr: float | None = None  # the temporal stream's (None: lr); Wang et al.: 0.001 spatial, 0.005 temporal
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    # "cosine": per-step cosine decay; "step": lr times lr_gamma after each epoch in lr_steps (the papers')
    lr_schedule: str = "cosine"
    lr_steps: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    clip_grad: float = 40.0  # TSN clips the gradient norm at 40 (flow) / 20 (rgb); 0 disables
    device: str = "cuda"
    amp: str = "auto"
    channels_last: bool = True
    steps_per_epoch: int = 0  # 0: one pass over the training samples per epoch
    eval_every: int = 1  # evaluate every N epochs (0: only by `flowshard evaluate`)
    train_split: str = "train"
    eval_split: str = "auto"  # "auto": test, else val (jobs.train.resolve_eval_split)
    epoch_size: str = "samples"  # an epoch is one pass over the samples, or one clip per video
    seed: int = 0
    resume: str | None = None
    log_every: int = 10
    # The flags that made this run and where each came from (jobs.train_flags); None when the
    # config was made without the command. Plain JSON: `flowshard train --config` reads it back.
    command: dict | None = None
    checkpoint_every_steps: int = 0  # also write last.pt every N steps inside an epoch (0: at epoch ends only)
    keep_epochs: int = 0  # keep the newest N epoch_NNN.pt of this run (0: every one); last.pt always stays

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        check_optimizer(self)
        check_lr_schedule(self)
        if self.clip_grad < 0:
            raise ValueError(f"clip_grad must be >= 0, got {self.clip_grad}")
        if self.device.split(":")[0] not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose one of {DEVICES}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"unknown amp mode {self.amp!r}; choose one of {AMP_MODES}")
        if self.epoch_size not in EPOCH_SIZES:
            raise ValueError(f"unknown epoch size {self.epoch_size!r}; choose one of {EPOCH_SIZES}")
        if self.checkpoint_every_steps < 0:
            raise ValueError(f"checkpoint_every_steps must be >= 0, got {self.checkpoint_every_steps}")
        if self.keep_epochs < 0:
            raise ValueError(f"keep_epochs must be >= 0 (0 keeps every epoch checkpoint), got {self.keep_epochs}")
        if self.steps_per_epoch < 0 or self.eval_every < 0 or self.log_every < 1:
            raise ValueError("steps_per_epoch and eval_every must be >= 0 and log_every >= 1")
        if self.model.revision is None:  # checkpoints record the revision the model was built as
            object.__setattr__(
                self, "model", dataclasses.replace(self.model, revision=models.revision(self.model.model))
            )
        if self.model.streams != self.data.streams:
            raise ValueError(f"model streams {self.model.streams!r} and data streams {self.data.streams!r} differ")
        check_model_data(self.model, self.data)

    def to_dict(self) -> dict:
        """Plain JSON types (tuples become lists)."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        data = dict(d.pop("data"))
        data["transform"] = TransformConfig(**_tuples(data["transform"], ("scales",)))
        model = models.model_config_from_dict(d.pop("model"))
        return cls(data=DataConfig(**_tuples(data, ("strides",))), model=model, **_tuples(d, ("lr_steps",)))


def check_optimizer(cfg: TrainConfig) -> None:
    """Raise ValueError naming an optimizer setting that cannot be run (rates, momentum, warm-up)."""
    if cfg.lr <= 0 or (cfg.flow_lr is not None and cfg.flow_lr <= 0):
        raise ValueError(f"lr and flow_lr must be positive, got {cfg.lr}, {cfg.flow_lr}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose one of {OPTIMIZERS}")
    if not 0 <= cfg.momentum < 1 or cfg.weight_decay < 0:
        raise ValueError(f"momentum must be in [0, 1) and weight_decay >= 0, got {cfg.momentum}, {cfg.weight_decay}")
    if cfg.warmup_epochs < 0 or cfg.warmup_epochs >= cfg.epochs:
        raise ValueError(f"warmup_epochs must be in [0, epochs), got {cfg.warmup_epochs}")


def check_lr_schedule(cfg: TrainConfig) -> None:
    """Raise ValueError naming a schedule setting that cannot be run."""
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {cfg.lr_schedule!r}; choose one of {LR_SCHEDULES}")
    steps = tuple(cfg.lr_steps)
    if cfg.lr_schedule == "cosine" and steps:
        raise ValueError(f"lr_steps {steps} belong to the step schedule: use lr_schedule='step'")
    if cfg.lr_schedule == "step":
        if not steps or list(steps) != sorted(set(steps)) or steps[0] <= cfg.warmup_epochs or steps[-1] >= cfg.epochs:
            raise ValueError(
                f"lr_steps must be increasing epochs after the warm-up ({cfg.warmup_epochs}) and "
                f"before the last epoch ({cfg.epochs}), got {steps}"
            )
        if not 0 < cfg.lr_gamma < 1:
            raise ValueError(f"lr_gamma must be in (0, 1), got {cfg.lr_gamma}")


def check_model_data(model: ModelConfig, data: DataConfig) -> None:
    """The loader must give the network the input it is built for (ValueError naming the mismatch)."""
    if (data.task == "detect") != (model.model == "detection"):
        raise ValueError(
            f"task {data.task!r} with model {model.model!r}: --task detect trains the detection "
            "model, and the detection model trains only with --task detect"
        )
    models.check(model)
    if model.clip_len != data.clip_len:
        raise ValueError(
            f"model clip_len {model.clip_len} and data clip_len {data.clip_len} differ: "
            f"the temporal stream takes 2 * clip_len channels"
        )
    if model.rgb_frames != data.rgb_frames:
        raise ValueError(f"model rgb_frames {model.rgb_frames} and data rgb_frames {data.rgb_frames} differ")
    ordered = data.sampler == "strided" or (data.sampler == "tsn" and data.ordered)
    if model.snippets and (not ordered or data.clip_spec.length != model.snippets):
        raise ValueError(
            f"model {model.model!r} takes clips of {model.snippets} snippets in time order: use "
            f"--sampling strided --snippets {model.snippets} or --sampling tsn --segments "
            f"{model.snippets} (got sampler {data.sampler!r} with {data.clip_spec.length})"
        )


def _tuples(d: dict, keys: tuple[str, ...]) -> dict:
    return {k: (tuple(v) if k in keys and v is not None else v) for k, v in d.items()}


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def amp_dtype(cfg: TrainConfig):
    """The autocast dtype of `cfg` (None: full precision)."""
    import torch

    mode = cfg.amp
    if mode == "auto":
        mode = "bf16" if cfg.device.startswith("cuda") else "off"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[mode]
