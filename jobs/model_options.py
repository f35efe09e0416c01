"""`--model` and the per-family options of `flowshard train`: flags -> ModelConfig.options.

Each model family (training.models.FAMILIES) may have its own flags; they are declared
here, next to the function that turns them into the family's Options, so the CLI stays
the only place that reads argv. `INPUT_DEFAULTS` gives, per family, the data settings a
flag left unset takes (a C3D clip is 16 frames at 112 pixels, a two-stream snippet one
frame at 224); any flag the user gives wins.

The training modules (and torch) are imported inside the functions, so registering the
commands keeps `flowshard --help` fast.
"""
from __future__ import annotations

import click

# The names of training.models.FAMILIES (a test keeps both lists equal).
MODELS = ("two_stream", "fusion", "st_resnet", "detection", "c3d", "r3d", "r2plus1d", "fstcn", "karpathy", "siamese")

# Settings of flags left unset, for every model; INPUT_DEFAULTS overrides them per family.
BASE_DEFAULTS = {"streams": "both", "rgb_frames": 1, "frame_stride": 1, "sampling": "simonyan", "segments": 3, "snippets": 1,
                 "strides": "1", "crop_size": 224, "dropout": 0.5, "flow_dropout": None}
INPUT_DEFAULTS: dict[str, dict] = {
    "two_stream": {},
    # Feichtenhofer et al.: T = 5 snippets a stride apart, dropout 0.85 (their code).
    "fusion": {"sampling": "strided", "snippets": 5, "strides": "1,5,10", "dropout": 0.85},
    # Feichtenhofer et al. (ST-ResNet): T = 5 snippets a stride apart.
    "st_resnet": {"sampling": "strided", "snippets": 5, "strides": "1,5,10"},
    "detection": {},
    # Tran et al. 2015: 16-frame RGB clips at 112 x 112.
    "c3d": {"streams": "rgb", "rgb_frames": 16, "crop_size": 112},
    # Tran et al. 2018: clips of 16 frames at 112 x 112.
    "r3d": {"streams": "rgb", "rgb_frames": 16, "crop_size": 112},
    "r2plus1d": {"streams": "rgb", "rgb_frames": 16, "crop_size": 112},
    # Sun et al. 2015: T = 16 frames and the dt = 9 after them, 204 x 204.
    "fstcn": {"streams": "rgb", "rgb_frames": 25, "crop_size": 204},
    # Karpathy et al. 2014: 178 x 178 crops (multiresolution); frames per time fusion: KARPATHY_FRAMES.
    "karpathy": {"streams": "rgb", "crop_size": 178},
    # Wang et al. 2016: RGB and flow Siamese networks on T snippets in time order over the
    # whole video (one per TSN segment), which the latent split cuts into precondition and effect.
    "siamese": {"streams": "both", "sampling": "tsn", "segments": 8},
}
# The frames each of Karpathy et al.'s time fusions reads (late: two frames 15 apart).
KARPATHY_FRAMES = {"single": {"rgb_frames": 1}, "early": {"rgb_frames": 10},
                   "late": {"rgb_frames": 2, "frame_stride": 15}, "slow": {"rgb_frames": 10}}

# Flags of single families (each help text names its family).
FAMILY_FLAGS: list = [
    click.option("--fusion-type", default="conv", show_default=True,
                 type=click.Choice(["sum", "max", "concat", "conv", "bilinear"]),
                 help="fusion: how the two streams' maps are fused at --fusion-layer (conv: 1x1 conv "
                      "initialised as their sum)."),
    click.option("--fusion-layer", default="layer4", show_default=True,
                 type=click.Choice(["layer1", "layer2", "layer3", "layer4"]),
                 help="fusion: the ResNet stage after whose last block (before its ReLU) the streams are fused."),
    click.option("--temporal-pool", default="3d", show_default=True, type=click.Choice(["3d", "none"]),
                 help="fusion: 3d = the T snippets' fused maps pooled by 3D conv + 3D max pooling; "
                      "none = each snippet scored alone, scores averaged."),
    click.option("--temporal-tower/--no-temporal-tower", default=True, show_default=True,
                 help="fusion: keep the temporal stream's own tower and classifier (averaged with the fused one)."),
    click.option("--st-connection", default="additive", show_default=True,
                 type=click.Choice(["additive", "multiplicative", "none"]),
                 help="st_resnet: residual connections from the motion into the appearance stream."),
    click.option("--st-temporal-convs/--no-st-temporal-convs", default=True, show_default=True,
                 help="st_resnet: convs of each stage's second unit made 3D over the snippets (centre-slice init)."),
    click.option("--st-temporal-pool", default="max", show_default=True, type=click.Choice(["max", "avg"]),
                 help="st_resnet: pooling over the T snippets before each stream's classifier."),
    click.option("--det-fusion", default="concat", show_default=True, type=click.Choice(["concat", "late"]),
                 help="detection: per-region fusion, concat (fc7 of both streams, the paper's) or late "
                      "(scores averaged with --fusion-weights)."),
    click.option("--det-min-size", type=int, default=0, show_default=True,
                 help="detection: resize frames to this short side (0: as stored)."),
    click.option("--det-max-size", type=int, default=0, show_default=True,
                 help="detection: cap on the long side when resizing (0: none)."),
    click.option("--det-anchor-sizes", default="32,64,128,256,512", show_default=True,
                 help="detection: anchor size per FPN level (5)."),
    click.option("--det-fpn-channels", type=int, default=256, show_default=True, help="detection: FPN width."),
    click.option("--det-head-dim", type=int, default=1024, show_default=True, help="detection: fc6/fc7 width."),
    click.option("--det-proposals", type=int, default=1000, show_default=True,
                 help="detection: RPN proposals per frame and stream at test time (twice that in training)."),
    click.option("--det-roi-batch", type=int, default=512, show_default=True,
                 help="detection: regions sampled per frame for the box losses."),
    click.option("--width-mult", type=float, default=1.0, show_default=True,
                 help="c3d, r3d, r2plus1d, fstcn, karpathy: channel width multiplier of the convolutions "
                      "(1: the paper's)."),
    click.option("--fc-dim", type=int, default=None,
                 help="c3d, fstcn, karpathy: width of the first fully connected layer (default: the paper's, "
                      "4096; fstcn's second is half of it)."),
    click.option("--conv-bn/--no-conv-bn", default=False, show_default=True,
                 help="c3d: batch norm after every convolution (not in the paper)."),
    click.option("--depth", type=click.Choice(["10", "18", "26", "34"]), default="18", show_default=True,
                 help="r3d, r2plus1d: ResNet depth."),
    click.option("--diff-frames", type=int, default=9, show_default=True,
                 help="fstcn: dt, frames between the two of each difference (T = --rgb-frames - dt)."),
    click.option("--time-fusion", default="slow", show_default=True,
                 type=click.Choice(["single", "early", "late", "slow"]),
                 help="karpathy: where the frames meet (sets --rgb-frames 1/10/2/10; late: --frame-stride 15)."),
    click.option("--multires/--no-multires", default=True, show_default=True,
                 help="karpathy: context + fovea streams at half the pixels each (else one full-frame stream)."),
    click.option("--embed-dim", type=int, default=512, show_default=True,
                 help="siamese: size of the precondition and effect embeddings."),
    click.option("--margin", type=float, default=0.5, show_default=True,
                 help="siamese: cosine margin of the contrastive loss for the wrong actions."),
]


def family_flags(f):
    """Apply every family's flags to a click command."""
    for option in reversed(FAMILY_FLAGS):
        f = option(f)
    return f


def resolve_defaults(o: dict) -> dict:
    """The options with each unset (None) data flag taken from the model's defaults."""
    defaults = {**BASE_DEFAULTS, **INPUT_DEFAULTS.get(o["model"], {})}
    if o.get("sampling") is None and (o.get("snippets") is not None or o.get("strides") is not None):
        defaults["sampling"] = "strided"  # --snippets and --strides describe strided clips
    if o["model"] == "karpathy":
        defaults.update(KARPATHY_FRAMES[o.get("time_fusion") or "slow"])
    return {**o, **{k: v for k, v in defaults.items() if o.get(k) is None}}


def model_options(model: str, o: dict):
    """The family Options the flags describe (None: the family has none)."""
    if model == "two_stream":
        return None
    if model == "fusion":
        from training.models.fusion import Options

        return Options(fusion_type=o["fusion_type"], fusion_layer=o["fusion_layer"],
                       temporal_pool=o["temporal_pool"], temporal_tower=o["temporal_tower"])
    if model == "st_resnet":
        from training.models.st_resnet import Options

        return Options(connection=o["st_connection"], temporal_convs=o["st_temporal_convs"],
                       temporal_pool=o["st_temporal_pool"])
    if model == "detection":
        from jobs.parsing import parse_numbers
        from training.models.detection import Options

        return Options(fusion=o["det_fusion"], min_size=o["det_min_size"], max_size=o["det_max_size"],
                       anchor_sizes=parse_numbers(o["det_anchor_sizes"], int), fpn_channels=o["det_fpn_channels"],
                       head_dim=o["det_head_dim"], proposals=o["det_proposals"], roi_batch=o["det_roi_batch"])
    if model == "c3d":
        from training.models.c3d import Options

        return Options(width_mult=o["width_mult"], fc_dim=o["fc_dim"] or 4096, size=o["crop_size"],
                       batch_norm=o["conv_bn"])
    if model in ("r3d", "r2plus1d"):
        from training.models.factorized import Options

        return Options(depth=int(o["depth"]), width=max(1, round(64 * o["width_mult"])))
    if model == "fstcn":
        from training.models.fstcn import Options

        fc = o["fc_dim"] or 4096
        return Options(frames=o["rgb_frames"] - o["diff_frames"], diff=o["diff_frames"], width_mult=o["width_mult"],
                       fc_dims=(fc, max(1, fc // 2)), size=o["crop_size"])
    if model == "karpathy":
        from training.models.karpathy import Options

        return Options(time_fusion=o["time_fusion"], multires=o["multires"], width_mult=o["width_mult"],
                       fc_dim=o["fc_dim"] or 4096, size=o["crop_size"])
    if model == "siamese":
        from training.models.siamese import Options

        return Options(embed_dim=o["embed_dim"], margin=o["margin"])
    raise click.BadParameter(f"unknown model {model!r}; choose one of {MODELS}")


def model_takes_snippets(model: str) -> bool:
    """Whether the family's network takes clips of a fixed number of snippets in time order
    (its module sets ORDERED_SNIPPETS; then ModelConfig.snippets = --snippets); otherwise it
    averages whatever number of snippets it is given."""
    from training.models import family

    return bool(getattr(family(model), "ORDERED_SNIPPETS", False))
