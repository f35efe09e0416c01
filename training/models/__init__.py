"""Model families, all reading the same shards through training.data.

One module per family, one explicit factory: `FAMILIES` maps a `--model` name to its
module, which provides `check(cfg)` (raise ValueError on a setting it cannot build),
`build(cfg) -> VideoClassifier`, and optionally `Options` (its frozen config dataclass,
`ModelConfig.options`), `OPTIONS` (its command-line options, training.models.option_spec)
with `options_from_cli(values) -> Options`, `INPUT` or `input_defaults(values)` (the data
defaults the CLI uses when a flag is not given) and `ORDERED_SNIPPETS` (its network takes
a clip's snippets together, in time order). jobs.model_options builds `flowshard train`'s
flags from this table. See training.models.base for the batch layout and outputs every
family shares.
"""
from __future__ import annotations

from types import ModuleType

from training.models import c3d, detection, factorized, fstcn, fusion, karpathy, siamese, st_resnet, two_stream
from training.models.backbones import ARCHS, cross_modality_conv, load_backbone
from training.models.base import ModelConfig, VideoClassifier, options_from_dict

FAMILIES: dict[str, ModuleType] = {
    "two_stream": two_stream,
    "fusion": fusion,
    "st_resnet": st_resnet,
    "detection": detection,  # `train --task detect`: a region detector, not a VideoClassifier
    "c3d": c3d,
    "r3d": factorized,
    "r2plus1d": factorized,
    "fstcn": fstcn,
    "karpathy": karpathy,
    "siamese": siamese,
}


def family(name: str) -> ModuleType:
    """The module of model family `name` (ValueError naming it when unknown)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(FAMILIES)}") from None


def check(cfg: ModelConfig) -> None:
    """Validate `cfg` for its family (options included) without building anything."""
    fam = family(cfg.model)
    options_cls = getattr(fam, "Options", None)
    if cfg.options is not None and (options_cls is None or not isinstance(cfg.options, options_cls)):
        raise ValueError(f"model {cfg.model!r} takes {options_cls.__name__ if options_cls else 'no'} options, "
                         f"got {type(cfg.options).__name__}")
    fam.check(cfg)


def build_model(cfg: ModelConfig) -> VideoClassifier:
    """The network of `cfg`, built by its family's factory."""
    check(cfg)
    return family(cfg.model).build(cfg)


def model_config_from_dict(d: dict) -> ModelConfig:
    """The inverse of ModelConfig.to_dict (checkpoints store plain JSON types)."""
    d = dict(d)
    d["fusion_weights"] = tuple(d["fusion_weights"]) if d.get("fusion_weights") is not None else None
    options_cls = getattr(family(d.get("model", "two_stream")), "Options", None)
    d["options"] = options_from_dict(options_cls, d.get("options")) if options_cls else None
    return ModelConfig(**d)


__all__ = ["ARCHS", "FAMILIES", "ModelConfig", "VideoClassifier", "build_model",
           "check", "cross_modality_conv", "family", "load_backbone", "model_config_from_dict"]
