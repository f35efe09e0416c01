"""Model families, all reading the same shards through training.data.

One module per family, one explicit factory: `FAMILIES` maps a `--model` name to its
module, which provides `check(cfg)` (raise ValueError on a setting it cannot build),
`build(cfg) -> VideoClassifier`, and optionally `Options` (its frozen config dataclass,
`ModelConfig.options`), `OPTIONS` (its command-line options, training.models.option_spec)
with `options_from_cli(values) -> Options`, `INPUT` or `input_defaults(values)` (the data
defaults the CLI uses when a flag is not given), `ORDERED_SNIPPETS` (its network takes
a clip's snippets together, in time order) and `REVISION` with `REVISION_NOTE` (bumped when
the family's computation changes, 1 when absent: checkpoints of another revision are
refused, never run through the new network). jobs.model_options builds `flowshard train`'s
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


def revision(name: str) -> int:
    """The model revision family `name` builds today (its module's REVISION, else 1)."""
    return int(getattr(family(name), "REVISION", 1))


def check_revision(name: str, made_for: int) -> None:
    """Raise ValueError when a config (a checkpoint's) was made for another revision of family `name`."""
    current = revision(name)
    if made_for != current:
        note = getattr(family(name), "REVISION_NOTE", "")
        raise ValueError(
            f"this checkpoint's {name!r} model is revision {made_for}, and this flowshard builds "
            f"revision {current}{f' ({note})' if note else ''}: its weights would not compute what "
            f"they were trained for. Retrain it, or evaluate it with the flowshard release that "
            f"trained it"
        )


def check(cfg: ModelConfig) -> None:
    """Validate `cfg` for its family (options included, and its revision when recorded) without building anything."""
    fam = family(cfg.model)
    if cfg.revision is not None:
        check_revision(cfg.model, cfg.revision)
    options_cls = getattr(fam, "Options", None)
    if cfg.options is not None and (options_cls is None or not isinstance(cfg.options, options_cls)):
        raise ValueError(
            f"model {cfg.model!r} takes {options_cls.__name__ if options_cls else 'no'} options, "
            f"got {type(cfg.options).__name__}"
        )
    fam.check(cfg)


def build_model(cfg: ModelConfig) -> VideoClassifier:
    """The network of `cfg`, built by its family's factory."""
    check(cfg)
    return family(cfg.model).build(cfg)


def model_config_from_dict(d: dict) -> ModelConfig:
    """The inverse of ModelConfig.to_dict (checkpoints store plain JSON types).

    A dict without "revision" was saved before revisions were recorded: revision 1 (None: the
    current one). A revision the family no longer builds is refused here, before its options
    are read.
    """
    d = {"revision": 1, **d}
    if d["revision"] is not None:
        check_revision(d.get("model", "two_stream"), d["revision"])
    d["fusion_weights"] = tuple(d["fusion_weights"]) if d.get("fusion_weights") is not None else None
    options_cls = getattr(family(d.get("model", "two_stream")), "Options", None)
    d["options"] = options_from_dict(options_cls, d.get("options")) if options_cls else None
    return ModelConfig(**d)


__all__ = [
    "ARCHS",
    "FAMILIES",
    "ModelConfig",
    "VideoClassifier",
    "build_model",
    "check",
    "check_revision",
    "cross_modality_conv",
    "family",
    "load_backbone",
    "model_config_from_dict",
    "revision",
]
