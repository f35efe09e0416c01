"""What every model family shares: the model config, the batch layout and score fusion.

A batch holds, per stream, a tensor (B, V, K, C, S, S): B items, V views of each (crops
at test time, 1 in training), K snippets in time order (pipeline.snippets), C channels
(3F for F RGB frames, 2L for L flow or warped-flow fields, stacked in time order) and S x S
pixels. A model's forward takes {"rgb": ..., "flow": ..., "warped": ...} (the streams it reads,
training.streams) and returns
logits per output, one row per item: {"rgb": (B, N), "flow": (B, N), "fused": (B, N), ...}.
`VideoClassifier.loss_keys` says which outputs the loss sums and `scores` turns logits
into class probabilities, with "fused" as the model's final prediction.

The base's forward owns the consensus: it flattens the batch into units (one per view and
snippet, or one per view for a family whose network takes the K snippets of a clip
together, `ordered_snippets`), the family scores each unit (`score_units`) and the base
averages the units of each item once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from training import streams as stream_spec


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """What network to build (`model` names its family, training.models.FAMILIES).

    weights: None, "auto" (torchvision's cached ImageNet weights), "imagenet" (downloaded
    when not cached) or a local file. dropout is the spatial stream's
    (and a fused head's), flow_dropout the temporal stream's (None: the same); Wang et al.
    use 0.8 and 0.9. rgb_frames (F) and snippets
    (K, 0: any number, averaged) are the input the network is built for; `options` holds
    the family's own frozen config (None: its defaults). fusion, fusion_weights and
    fusion_kernel are the two-stream family's late/conv fusion settings; fusion_weights
    also weighs the rgb, flow (and warped) scores of any model that fuses late: two
    numbers (rgb, flow), three with a warped stream (rgb, flow, warped); None: TSN's.
    revision: the family's model revision the config was made for (its module's REVISION;
    training.models.revision), recorded in checkpoints so that a network whose computation
    changed refuses the old weights; None: the current one (a TrainConfig records it).
    """

    model: str = "two_stream"
    arch: str = "resnet50"
    streams: str = "both"
    num_classes: int
    clip_len: int = 10
    rgb_frames: int = 1
    snippets: int = 0
    in_channels_flow: int | None = None  # defaults to 2 * clip_len; checked when given
    weights: str | None = None
    flow_weights: str | None = None  # a pre-trained temporal stream (checkpoint or state dict)
    dropout: float = 0.5
    flow_dropout: float | None = None
    partial_bn: bool = False
    fusion: str = "late"
    fusion_weights: tuple[float, ...] | None = None  # rgb, flow[, warped]; None: training.streams defaults
    fusion_kernel: int = 1
    options: Any = None
    revision: int | None = None

    def __post_init__(self) -> None:
        if self.revision is not None and self.revision < 1:
            raise ValueError(f"revision must be >= 1, got {self.revision}")
        names = stream_spec.stream_names(self.streams)  # ValueError naming a bad setting
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if stream_spec.uses_fields(self.streams) and self.clip_len < 1:
            raise ValueError(f"the flow stream needs clip_len >= 1, got {self.clip_len}")
        if self.in_channels_flow is not None and self.in_channels_flow != 2 * self.clip_len:
            raise ValueError(
                f"the temporal stream takes 2 * clip_len = {2 * self.clip_len} channels "
                f"(x and y per field), got in_channels_flow={self.in_channels_flow}"
            )
        if self.rgb_frames < 1 or self.snippets < 0:
            raise ValueError(f"rgb_frames must be >= 1 and snippets >= 0, got {self.rgb_frames}, {self.snippets}")
        for name, p in (("dropout", self.dropout), ("flow_dropout", self.flow_dropout)):
            if p is not None and not 0 <= p < 1:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        weights = self.fusion_weights
        if weights is None:
            weights = (1.0, 1.0, 0.5) if "warped" in names else (1.0, 1.5)
            object.__setattr__(self, "fusion_weights", weights)
        want = 3 if "warped" in names else 2
        w = tuple(weights)
        if len(w) != want or min(w) < 0 or sum(w) <= 0:
            raise ValueError(
                f"fusion_weights must be {want} non-negative numbers (rgb, flow"
                f"{', warped' if want == 3 else ''}), got {self.fusion_weights}"
            )

    def stream_dropout(self, stream: str) -> float:
        """The dropout before `stream`'s classifier."""
        if stream in stream_spec.FIELD_STREAMS and self.flow_dropout is not None:
            return self.flow_dropout
        return self.dropout

    @property
    def stream_names(self) -> tuple[str, ...]:
        return stream_spec.stream_names(self.streams)

    @property
    def settled_fusion_weights(self) -> tuple[float, ...]:
        """fusion_weights as __post_init__ settled them (the field reads None only before it)."""
        if self.fusion_weights is None:
            raise ValueError("fusion_weights is None: this ModelConfig bypassed __post_init__")
        return self.fusion_weights

    def to_dict(self) -> dict:
        """Plain JSON types; the family options become a dict."""
        d = dataclasses.asdict(self)
        d["fusion_weights"] = list(self.settled_fusion_weights)
        return d


def options_from_dict(cls, values: dict | None):
    """A family options dataclass from its JSON dict (lists become tuples)."""
    if values is None:
        return None
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def check_input(x: torch.Tensor, name: str) -> None:
    """Raise ValueError unless `x` has the batch layout (B, V, K, C, H, W)."""
    if x.dim() != 6:
        raise ValueError(f"{name} input must be (B, V, K, C, H, W), got shape {tuple(x.shape)}")


def average_units(x: torch.Tensor, group: torch.Size) -> torch.Tensor:
    """(B * V [* K], ...) per-unit outputs -> (B, ...): the mean over each item's views (and snippets)."""
    return x.unflatten(0, group).mean(tuple(range(1, len(group))))


class VideoClassifier(nn.Module):
    """Base of every family: the consensus over views and snippets, which logits the loss
    sums and how they become class scores.

    A family implements `score_units` (and `unit_features` for a feature extractor); forward
    and features average its per-unit outputs over each item's views, and over its snippets
    unless `ordered_snippets` (the family's network takes the K snippets of a clip together).
    """

    ordered_snippets: bool = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg

    @property
    def input_streams(self) -> tuple[str, ...]:
        """The streams of the batch the network reads."""
        return self.cfg.stream_names

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{stream: (B, V, K, C, H, W)} -> {output: (B, ...)} logits, averaged over views (and snippets)."""
        units, group = self.units(batch)
        return {name: average_units(x, group) for name, x in self.score_units(units).items()}

    def units(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Size]:
        """The batch as units, {stream: (B*V*K, C, H, W)} (ordered snippets: (B*V, K, C, H, W)),
        and the leading sizes they were flattened from, (B, V, K) or (B, V)."""
        for name in self.input_streams:
            check_input(batch[name], name)
        group = batch[self.input_streams[0]].shape[: 2 if self.ordered_snippets else 3]
        return {name: batch[name].flatten(0, len(group) - 1) for name in self.input_streams}, group

    def score_units(self, units: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logits per output for each unit of `units` (see `units`): {output: (units, ...)}."""
        raise NotImplementedError(f"model {self.cfg.model!r} does not score units")

    @property
    def loss_keys(self) -> tuple[str, ...]:
        """The outputs of forward that the training loss sums (default: all of them)."""
        return self.output_keys

    @property
    def output_keys(self) -> tuple[str, ...]:
        return self.cfg.stream_names

    def training_loss(self, logits: dict[str, torch.Tensor], labels: torch.Tensor, criterion) -> torch.Tensor:
        """The loss the training loop minimises (training.engine.train_one_epoch calls it once per
        step with forward's outputs): by default `criterion` (cross-entropy) summed over
        `loss_keys`. A family whose objective is not a classification loss on logits, or that
        chooses latent variables from the labels first (the Siamese model's E-step), overrides it.
        """
        return sum(criterion(logits[o].float(), labels) for o in self.loss_keys)

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-item feature vectors (B, D) for `flowshard features`, averaged like the logits."""
        units, group = self.units(batch)
        return average_units(self.unit_features(units), group)

    def unit_features(self, units: dict[str, torch.Tensor]) -> torch.Tensor:  # noqa: ARG002 (overridden)
        """Feature vectors (units, D) of each unit; feature extractors (C3D's fc6) override it."""
        raise ValueError(f"model {self.cfg.model!r} has no feature extractor")

    def scores(self, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Softmax scores per output, and "fused": the model's own fused output, else late fusion."""
        return late_fusion(
            {name: torch.softmax(x.float(), dim=1) for name, x in logits.items()}, self.cfg.settled_fusion_weights
        )


# Parameter names of the temporal streams in every family (two_stream: streams.flow and
# streams.warped; fusion: flow, flow_head; st_resnet: flow, heads.flow), for their own lr.
TEMPORAL_PREFIXES = ("streams.flow.", "streams.warped.", "flow.", "flow_head.", "heads.flow.")


def param_groups(model: nn.Module, lr: float, flow_lr: float | None = None) -> list[dict]:
    """Trainable parameters as optimizer groups: the temporal streams' at flow_lr (when given
    and the model has them by those names), the rest at lr."""
    temporal: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (temporal if flow_lr is not None and name.startswith(TEMPORAL_PREFIXES) else rest).append(p)
    return [g for g in ({"params": rest, "lr": lr}, {"params": temporal, "lr": flow_lr}) if g["params"]]


def channels_last_(model: nn.Module) -> nn.Module:
    """Put the 2D convolutions' weights in channels-last layout (faster on GPUs with AMP);
    3D ones keep theirs (channels_last is a 4D layout, and Module.to would refuse them)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.to(memory_format=torch.channels_last)
    return model


def late_fusion(scores: dict[str, torch.Tensor], weights: tuple[float, ...]) -> dict[str, torch.Tensor]:
    """`scores` plus "fused": kept when present, else the weighted average of the rgb, flow
    and warped probabilities present (not logits: a stream that is unsure pulls the fused
    score little; weights in training.streams.STREAMS order), else the only output, else
    the mean of all."""
    if "fused" in scores:
        return scores
    present = [s for s in stream_spec.STREAMS[: len(weights)] if s in scores]
    if len(present) >= 2:
        w = {s: weights[stream_spec.STREAMS.index(s)] for s in present}
        # sum() starts from the int 0, so it reads as "Tensor | int"; the terms are tensors
        fused = cast(torch.Tensor, sum(w[s] * scores[s] for s in present) / sum(w.values()))
    else:
        fused = torch.stack(list(scores.values())).mean(0)
    return {**scores, "fused": fused}
