"""`flowshard train|evaluate|features`: options -> a TrainConfig, and the commands that run
the training, evaluation and feature extraction of jobs.train and jobs.features.

Single process (CPU or one GPU):

    flowshard train DATASET --streams both --arch resnet50 --epochs 30 --output runs/ucf101

Several GPUs on one machine (DDP, one process per GPU; the same flags):

    torchrun --standalone --nproc_per_node=8 -m jobs.cli train DATASET --streams both --output runs/ucf101

Several machines (run on each; node 0's address as the rendezvous endpoint):

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=NODE0:29500 \\
        -m jobs.cli train DATASET --output runs/ucf101
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import torch

from jobs.detect import action_names
from jobs.features import CLIP_EVERY, extract_features
from jobs.model_options import FamilyCommand, model_options, model_takes_snippets, resolve_defaults
from jobs.parsing import parse_numbers, parse_params
from jobs.runs import write_results
from jobs.train import evaluate_checkpoint, train
from jobs.train_flags import layer
from jobs.train_on_ray import run_command
from pipeline.snippets import SAMPLERS
from training import data
from training.config import AMP_MODES, DEVICES, EPOCH_SIZES, LR_SCHEDULES, OPTIMIZERS, TrainConfig
from training.data import TASKS, VERIFY_MODES, DataConfig
from training.data.config import ON_CORRUPT
from training.detection.metrics import DEFAULT_MATCHING, MATCHING_RULES
from training.distributed import cpu_share
from training.models import ModelConfig
from training.models.backbones import ARCHS
from training.models.two_stream import FUSION_KERNELS, FUSIONS
from training.streams import STREAM_CHOICES, STREAMS
from training.transforms import CROP_POSITIONS, TEST_CROPS, TransformConfig

STREAMS_METAVAR = f"{'|'.join(STREAM_CHOICES)}|{','.join(STREAMS)}"


def _names(values) -> list[str]:
    """Choice names of numeric choices (click compares the text given)."""
    return [str(v) for v in values]


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _floats(text: str) -> tuple[float, ...]:
    return parse_numbers(text, float)


@click.command("train", cls=FamilyCommand)  # adds --model and the families' options
@click.argument("dataset")
@click.option("--output", "-o", required=True, help="Run folder: checkpoints (*.pt), logs, TensorBoard.")
@click.option(
    "--task",
    default="classify",
    show_default=True,
    type=click.Choice(TASKS),
    help="detect: a two-stream region detector on a dataset built with --boxes (model 'detection').",
)
@click.option(
    "--streams",
    default=None,
    metavar=STREAMS_METAVAR,
    help="Streams to train: one, both (rgb,flow), or a comma list of rgb, flow and warped (warped flow "
    "of a --flow-warp build, TSN's third modality). Default: the model's (two_stream: both).",
)
@click.option(
    "--arch",
    default="resnet50",
    show_default=True,
    type=click.Choice(list(ARCHS)),
    help="Stream backbone (vgg16: two_stream and fusion only, Simonyan & Zisserman's very deep streams).",
)
@click.option(
    "--weights",
    default="auto",
    show_default=True,
    help="Initial weights of both streams: 'auto' (ImageNet weights from torchvision's cache, an error "
    "when absent), 'imagenet' (the same, downloaded into the cache when missing), a local "
    "torchvision state-dict file, or 'none' (random).",
)
@click.option(
    "--flow-weights",
    default=None,
    help="A pre-trained temporal stream (a checkpoint of `flowshard train PRETRAIN --streams flow`, "
    "see `flowshard pretrain-flow`, or a state-dict file) for the temporal stream.",
)
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True, help="Per rank.")
@click.option("--lr", type=float, default=0.001, show_default=True)
@click.option(
    "--flow-lr",
    type=float,
    default=None,
    help="The temporal stream's learning rate (default: --lr). Wang et al.: --lr 0.001 --flow-lr 0.005.",
)
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(OPTIMIZERS))
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--warmup-epochs", type=float, default=0.0, show_default=True)
@click.option(
    "--lr-schedule",
    default="cosine",
    show_default=True,
    type=click.Choice(LR_SCHEDULES),
    help="cosine: per-step cosine decay; step: --lr times --lr-gamma after each epoch of --lr-steps "
    "(the papers' schedule).",
)
@click.option(
    "--lr-steps",
    default=None,
    metavar="E1,E2,...",
    help="--lr-schedule step: the epochs after which the lr drops, e.g. 3,6.",
)
@click.option(
    "--lr-gamma", type=float, default=0.1, show_default=True, help="--lr-schedule step: the factor of each drop."
)
@click.option("--clip-grad", type=float, default=40.0, show_default=True, help="Gradient-norm clip (0: off).")
@click.option(
    "--clip-len",
    type=int,
    default=None,
    help="Flow fields per snippet (L). Default: the clip shards' L, a --clips dataset's L, else 10.",
)
@click.option("--rgb-frames", type=int, default=None, help="RGB frames per snippet (F). Default: the model's (1).")
@click.option("--frame-stride", type=int, default=None, help="Stored frames between a snippet's RGB frames (1).")
@click.option(
    "--sampling",
    default=None,
    type=click.Choice(SAMPLERS),
    help="Snippets per item: simonyan 1, tsn --segments, strided --snippets --strides. Default: the model's.",
)
@click.option(
    "--segments",
    type=int,
    default=None,
    help="TSN segments (K snippets, one per segment). Default: the model's (3; siamese 8).",
)
@click.option("--snippets", type=int, default=None, help="Snippets per clip with --sampling strided (T).")
@click.option(
    "--strides",
    default=None,
    help="Frames between strided snippets, e.g. 1,5,10 (one drawn per clip: multi-timescale).",
)
@click.option("--crop-size", type=int, default=None, help="Default: the model's (224).")
@click.option("--flip/--no-flip", default=True, show_default=True)
@click.option(
    "--crop-scales",
    default="1,0.875,0.75,0.66",
    show_default=True,
    help="Training crop sides, as fractions of the short side (multi-scale cropping; 1: whole frame).",
)
@click.option(
    "--max-distort",
    type=int,
    default=1,
    show_default=True,
    help="Scale steps a crop's width and height may differ (Wang et al.: 3, any pair).",
)
@click.option(
    "--crop-positions",
    type=click.Choice(_names(CROP_POSITIONS)),
    default="13",
    show_default=True,
    help="Crop offsets: 5 = corners + centre (Wang et al.'s corner cropping), 13 = TSN's.",
)
@click.option(
    "--test-clips",
    type=int,
    default=25,
    show_default=True,
    help="Test clips per video sample (per stride with --sampling strided).",
)
@click.option("--test-crops", type=click.Choice(_names(TEST_CROPS)), default="1", show_default=True)
@click.option(
    "--fusion",
    default="late",
    show_default=True,
    type=click.Choice(FUSIONS),
    help="two_stream: late score fusion or a conv layer on the last maps.",
)
@click.option(
    "--fusion-weights",
    default=None,
    help="Late fusion weights rgb,flow[,warped]. Default: TSN's 1,1.5, or 1,1,0.5 with warped.",
)
@click.option(
    "--flow-mean-subtract",
    is_flag=True,
    default=False,
    help="Subtract each flow (and warped) field's mean vector from the input (Simonyan & Zisserman).",
)
@click.option("--fusion-kernel", type=click.Choice(_names(FUSION_KERNELS)), default="1", show_default=True)
@click.option(
    "--dropout",
    type=float,
    default=None,
    help="Before the classifier: spatial stream and fused heads. Default: the model's (0.5; fusion 0.85).",
)
@click.option(
    "--flow-dropout",
    type=float,
    default=None,
    help="The temporal stream's dropout (default: --dropout). Wang et al.: --dropout 0.8 --flow-dropout 0.9.",
)
@click.option("--partial-bn/--no-partial-bn", default=False, show_default=True)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Loader processes per rank (0: none). Default: this rank's share of the machine's CPUs "
    "(recorded in the run's config).",
)
@click.option("--shuffle-buffer", type=int, default=500, show_default=True)
@click.option("--verify", default="stream", show_default=True, type=click.Choice(VERIFY_MODES))
@click.option(
    "--gpu-decode/--no-gpu-decode",
    default=False,
    show_default=True,
    help="Decode the JPEGs (nvJPEG, batched) and crop/flip/normalize on --device; loader processes only read.",
)
@click.option("--device", default=None, type=click.Choice(DEVICES), help="Default: cuda when available.")
@click.option("--amp", default="auto", show_default=True, type=click.Choice(AMP_MODES))
@click.option("--channels-last/--no-channels-last", default=True, show_default=True)
@click.option("--steps-per-epoch", type=int, default=0, show_default=True, help="0: one pass (see --epoch-size).")
@click.option(
    "--epoch-size",
    default="samples",
    show_default=True,
    type=click.Choice(EPOCH_SIZES),
    help="An epoch: one pass over the samples, or one item per video (clip shards: epochs walk through "
    "the stored clips).",
)
@click.option("--train-split", default="train", show_default=True)
@click.option(
    "--eval-split",
    default="auto",
    show_default=True,
    help="Split evaluated after epochs; auto: test, else val (Kinetics). Missing: an error.",
)
@click.option("--eval-every", type=int, default=1, show_default=True, help="Evaluate every N epochs (0: never).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--resume",
    default=None,
    is_flag=False,
    flag_value="last",
    help="Resume from a checkpoint (--resume alone: OUTPUT/last.pt).",
)
@click.option("--log-every", type=int, default=10, show_default=True)
@click.option(
    "--checkpoint-every-steps",
    type=int,
    default=0,
    show_default=True,
    help="Also write last.pt every N steps inside an epoch; a resumed run goes on mid-epoch (0: epoch ends).",
)
@click.option(
    "--keep-epochs",
    type=int,
    default=0,
    show_default=True,
    help="Keep the newest N epoch_NNN.pt of the run, removing older ones as epochs end (0: keep every "
    "one); last.pt always stays.",
)
@click.option(
    "--on-corrupt",
    default="error",
    show_default=True,
    type=click.Choice(ON_CORRUPT),
    help="A sample whose bytes miss its manifest hash: stop naming shard and key, or skip it (logged, counted).",
)
@click.option(
    "--ray-workers",
    default=None,
    metavar="N|MIN-MAX",
    help="Train on Ray Train with N workers (MIN-MAX: elastic; jobs.train_on_ray).",
)
@click.option("--ray-gpus-per-worker", type=float, default=0.0, show_default=True, help="With --ray-workers.")
@click.option(
    "--address",
    default=None,
    help="With --ray-workers: the Ray cluster (auto, ray://HEAD:10001); default: a local Ray.",
)
@click.option(
    "--max-failures",
    type=int,
    default=0,
    show_default=True,
    help="With --ray-workers: worker-group restarts from the last checkpoint before the run fails.",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option(
    "--recipe",
    default=None,
    metavar="NAME",
    help="A paper's setting by name (`flowshard recipes` lists them); flags given here override it.",
)
@click.option(
    "--config",
    default=None,
    metavar="FILE",
    help="Flags from a run's config.json (or a YAML/JSON mapping of flags), over --recipe; flags given "
    "here override them.",
)
def train_command(dataset: str, output: str, progress: bool, recipe: str | None, config: str | None, **o) -> None:
    """Train a two-stream network on DATASET (a built dataset or clip shards)."""
    # Where the run goes (Ray Train's workers), not what it trains: not part of the run's config.
    ray_args = {k: o.pop(k) for k in ("ray_workers", "ray_gpus_per_worker", "address", "max_failures")}
    try:
        prov = layer(click.get_current_context(), o, recipe, config)
        o = dict(prov.options)
        source = data.open_source(dataset)
        o["clip_len"] = o["clip_len"] or default_clip_len(source.info or {})
        num_classes = source.num_classes
        if o["task"] == "detect":
            o["model"] = "detection"
            num_classes = len(action_names(source.info or {}, dataset)) + 1  # and background
        resolved = resolve_defaults(o)
        cfg = make_train_config(dataset, output, num_classes, resolved, command=prov.record(resolved))
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        summary = run_command(cfg, **ray_args) if ray_args["ray_workers"] else train(cfg, progress=progress)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    if distributed_rank() == 0:
        click.echo(json.dumps({"steps": summary["steps"], "eval": summary["eval"]}))


def default_clip_len(info: dict) -> int:
    """L stored in the dataset: clip shards' clip_len, or a `--clips` build's, else 10 (the papers')."""
    if info.get("kind") == "clips":
        return int(info["clip_len"])
    sample = (info.get("config") or {}).get("sample") or {}
    return int(sample["clip_len"]) if sample.get("mode") == "clips" else 10


def distributed_rank() -> int:
    """This process's rank under torchrun (0 without it)."""
    return int(os.environ.get("RANK", "0"))


def make_train_config(dataset: str, output: str, num_classes: int, o: dict, command: dict | None = None) -> TrainConfig:
    """Options (unset data flags already resolved, `resolve_defaults`) -> a validated
    TrainConfig (ValueError naming the bad value). Loader workers left unset take this
    rank's share of the CPUs, and the config records the number used; `command` is the
    record of the flags and their sources (jobs.train_flags)."""
    transform = TransformConfig(
        crop_size=o["crop_size"],
        scales=_floats(o["crop_scales"]),
        max_distort=o["max_distort"],
        crop_positions=int(o["crop_positions"]),
        flip=o["flip"],
        test_crops=int(o["test_crops"]),
    )
    strides = parse_numbers(o["strides"], int)
    ordered = model_takes_snippets(o["model"])
    # An ordered-snippet model reads T = --snippets strided snippets, or one per TSN segment.
    snippets = (o["segments"] if o["sampling"] == "tsn" else o["snippets"]) if ordered else 0
    workers = cpu_share() if o["workers"] is None else o["workers"]
    data_cfg = DataConfig(
        streams=o["streams"],
        clip_len=o["clip_len"],
        rgb_frames=o["rgb_frames"],
        frame_stride=o["frame_stride"],
        sampler=o["sampling"],
        segments=o["segments"],
        snippets=o["snippets"],
        strides=strides,
        test_clips=o["test_clips"],
        ordered=ordered,
        transform=transform,
        batch_size=o["batch_size"],
        workers=workers,
        shuffle_buffer=o["shuffle_buffer"],
        seed=o["seed"],
        verify=o["verify"],
        on_corrupt=o.get("on_corrupt", "error"),
        gpu_decode=o.get("gpu_decode", False),
        flow_mean_subtract=o.get("flow_mean_subtract", False),
        task=o.get("task", "classify"),
    )
    weights = _floats(o["fusion_weights"]) if o.get("fusion_weights") else None  # None: the streams' defaults
    initial = None if o["weights"] in (None, "none") else o["weights"]
    model_cfg = ModelConfig(
        model=o["model"],
        arch=o["arch"],
        streams=o["streams"],
        num_classes=num_classes,
        clip_len=o["clip_len"],
        rgb_frames=o["rgb_frames"],
        snippets=snippets,
        weights=initial,
        flow_weights=o["flow_weights"],
        dropout=o["dropout"],
        flow_dropout=o["flow_dropout"],
        partial_bn=o["partial_bn"],
        fusion=o["fusion"],
        fusion_weights=weights,
        fusion_kernel=int(o["fusion_kernel"]),
        options=model_options(o["model"], o),
    )
    return TrainConfig(
        dataset=str(dataset),
        output=str(output),
        data=data_cfg,
        model=model_cfg,
        epochs=o["epochs"],
        lr=o["lr"],
        flow_lr=o["flow_lr"],
        optimizer=o["optimizer"],
        momentum=o["momentum"],
        weight_decay=o["weight_decay"],
        warmup_epochs=o["warmup_epochs"],
        clip_grad=o["clip_grad"],
        device=o["device"] or _default_device(),
        amp=o["amp"],
        channels_last=o["channels_last"],
        steps_per_epoch=o["steps_per_epoch"],
        epoch_size=o["epoch_size"],
        eval_every=o["eval_every"],
        train_split=o["train_split"],
        eval_split=o["eval_split"],
        seed=o["seed"],
        resume=o["resume"],
        log_every=o["log_every"],
        command=command,
        checkpoint_every_steps=o.get("checkpoint_every_steps", 0),
        keep_epochs=o.get("keep_epochs", 0),
        lr_schedule=o.get("lr_schedule", "cosine"),
        lr_gamma=o.get("lr_gamma", 0.1),
        lr_steps=parse_numbers(o["lr_steps"], int) if o.get("lr_steps") else (),
    )


@click.command("evaluate")
@click.argument("dataset")
@click.argument("checkpoint_path", metavar="CHECKPOINT")
@click.option("--json", "json_path", default=None, help="Also write the metrics JSON here (keys rgb, flow, fused).")
@click.option("--split", default="auto", show_default=True, help="auto: test, else val.")
@click.option("--test-clips", type=int, default=None, help="Test clips per video sample (default: as trained).")
@click.option("--test-crops", type=click.Choice(_names(TEST_CROPS)), default=None, help="1 (centre) or 10 crops.")
@click.option("--batch-size", type=int, default=None)
@click.option(
    "--workers", type=int, default=None, help="Loader processes per rank. Default: this rank's share of the CPUs."
)
@click.option("--device", default=None, type=click.Choice(DEVICES), help="Default: cuda when available.")
@click.option(
    "--tube-param",
    multiple=True,
    metavar="KEY=VALUE",
    help="Detectors: tube linking setting, repeatable (overlap_weight, candidates, max_tubes, trim, "
    "threshold, penalty, min_frames; training.detection.tubes.TubeConfig).",
)
@click.option(
    "--det-matching",
    type=click.Choice(MATCHING_RULES),
    default=DEFAULT_MATCHING,
    show_default=True,
    help="Detectors: how detections meet ground truth: voc (the VOC devkit: the best-overlap ground truth, "
    "a false positive if it is taken) or best_unmatched (ACT's code: the best one not yet taken).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def evaluate_command(
    dataset: str,
    checkpoint_path: str,
    json_path: str | None,
    split: str,
    test_clips: int | None,
    test_crops: str | None,
    batch_size: int | None,
    workers: int | None,
    device: str | None,
    tube_param: tuple[str, ...],
    det_matching: str,
    progress: bool,
) -> None:
    """Score CHECKPOINT on DATASET's test clips: clip and video accuracy per stream and fused
    (a detector: frame-mAP, video-mAP and accuracy on every frame)."""
    try:
        results, names, provenance = evaluate_checkpoint(
            dataset,
            checkpoint_path,
            split=split,
            device=device or _default_device(),
            batch_size=batch_size,
            workers=cpu_share() if workers is None else workers,
            test_clips=test_clips,
            test_crops=int(test_crops) if test_crops else None,
            progress=progress,
            tube_params=parse_params(tube_param),
            matching=det_matching,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if distributed_rank() == 0:
        for line in results_table(results):
            click.echo(line)
        if json_path:
            write_results(results, Path(json_path), names, extra=provenance)
            click.echo(f"metrics -> {json_path}")


def results_table(results: dict) -> list[str]:
    """The headline metrics as text lines, one per stream ("-" for a stream the model lacks)."""
    keys = ("clip_top1", "video_top1", "video_top5", "mean_class_accuracy")
    lines = [
        f"{'STREAM':<8} {'CLIP TOP-1':>10} {'VIDEO TOP-1':>11} {'VIDEO TOP-5':>11} {'MEAN CLASS':>10} {'VIDEOS':>6}"
    ]
    for name, r in results.items():
        cells = [f"{r[k]:.4f}" for k in keys] if r else ["-"] * 4
        lines.append(
            f"{name:<8} {cells[0]:>10} {cells[1]:>11} {cells[2]:>11} {cells[3]:>10} {(r or {}).get('videos', '-'):>6}"
        )
    return lines


@click.command("features")
@click.argument("dataset")
@click.argument("checkpoint_path", metavar="CHECKPOINT")
@click.argument("output", metavar="OUT.parquet")
@click.option("--split", "splits", multiple=True, help="Splits to extract (repeatable). Default: every split.")
@click.option(
    "--clip-every",
    type=int,
    default=CLIP_EVERY,
    show_default=True,
    help="A clip every N frames over the whole video (8: the C3D paper's 16-frame clips overlapping by 8; "
    "16: the authors' demo, non-overlapping); 0: --test-clips evenly spaced clips.",
)
@click.option(
    "--test-clips", type=int, default=None, help="With --clip-every 0: clips per video sample (default: as trained)."
)
@click.option("--batch-size", type=int, default=None)
@click.option("--workers", type=int, default=None, help="Loader processes. Default: this machine's CPUs.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(DEVICES))
@click.option("--l2/--no-l2", default=True, show_default=True, help="L2-normalise each video's mean feature.")
def features_command(
    dataset: str,
    checkpoint_path: str,
    output: str,
    splits: tuple[str, ...],
    clip_every: int,
    test_clips: int | None,
    batch_size: int | None,
    workers: int | None,
    device: str,
    l2: bool,
) -> None:
    """Per-video features (C3D: fc6, averaged over each video's clips) of CHECKPOINT on DATASET, to OUT.parquet."""
    try:
        rows = extract_features(
            dataset,
            checkpoint_path,
            output,
            splits=splits,
            device=device,
            clip_every=clip_every,
            test_clips=test_clips,
            batch_size=batch_size,
            workers=cpu_share() if workers is None else workers,
            l2=l2,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    dim = len(rows[0]["feature"]) if rows else 0
    click.echo(f"{output}: {len(rows)} videos, {dim}-d features")
