"""Two-stream training, evaluation and clip derivation: `flowshard clips|train|evaluate`.

Single process (CPU or one GPU):

    flowshard train DATASET --streams both --arch resnet50 --epochs 30 --output runs/ucf101

Several GPUs on one machine (DDP, one process per GPU; the same flags):

    torchrun --standalone --nproc_per_node=8 -m jobs.cli train DATASET --streams both --output runs/ucf101

Several machines (run on each; node 0's address as the rendezvous endpoint):

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=NODE0:29500 \\
        -m jobs.cli train DATASET --output runs/ucf101

`python -m jobs.train train ...` runs the same command without the rest of the CLI.
DATASET is a built video dataset (`flowshard build`) or a clip-shard folder (`flowshard
clips`); its dataset.json "kind" says which. Writes DIR/epoch_NNN.pt and DIR/last.pt after
every epoch, DIR/config.json, DIR/train.log, TensorBoard scalars in DIR/tb, evaluation
metrics DIR/eval_epoch_NNN.json with a confusion-matrix PNG, and DIR/train_summary.json.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from jobs.model_options import FamilyCommand, model_options, model_takes_snippets, resolve_defaults
from jobs.parsing import parse_numbers, parse_params, parse_size
from jobs.runs import (RunFolder, _headline, _writer, evaluation_provenance, pick_split, prepare_run,
                       resolve_eval_split, run_evaluation, run_folder, save_epoch, write_results)
from pipeline.build.manifest import atomic_write_bytes, dump_json

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.distributed import DistInfo

# torch and the training modules are imported inside the functions that use them, so
# registering these commands keeps `flowshard build --help` fast.

log = logging.getLogger(__name__)
def train(cfg: TrainConfig, *, progress: bool = True) -> dict:
    """Run training as configured (one process, or one rank under torchrun); returns the summary."""
    from training import distributed

    info = distributed.init_distributed(cfg.device)
    try:
        if cfg.data.task == "detect":
            from jobs.detect import train_detector

            return train_detector(cfg, info, progress)
        return _train(cfg, info, progress)
    finally:
        distributed.cleanup()


def _train(cfg: TrainConfig, info: DistInfo, progress: bool) -> dict:
    import torch

    from training import data

    device = torch.device(info.device)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    source = data.open_source(cfg.dataset)
    if source.num_classes != cfg.model.num_classes:
        raise ValueError(f"{cfg.dataset} has {source.num_classes} classes, the model {cfg.model.num_classes}")
    eval_split = resolve_eval_split(cfg, source.splits())
    with run_folder(cfg, info) as run:
        return _run(cfg, info, source, device, run, eval_split, progress)


def _run(cfg, info, source, device, run: RunFolder | None, eval_split: str | None, progress) -> dict:
    import torch

    from training import data, distributed, engine

    steps = cfg.steps_per_epoch or data.steps_per_epoch(source, cfg.train_split, cfg.data, info.world_size,
                                                        per=cfg.epoch_size)
    pin = device.type == "cuda"
    train_loader = data.make_loader(source, cfg.train_split, cfg.data, train=True, steps=steps, pin_memory=pin,
                                    device=device)
    eval_loader = None
    if eval_split is not None:
        eval_loader = data.make_loader(source, eval_split, cfg.data, train=False, pin_memory=pin, device=device)
    state = prepare_run(cfg, info, source, device, steps)
    model, dtype, step = state.model, state.dtype, state.step
    writer = _writer(run.local) if run is not None else None
    criterion = torch.nn.CrossEntropyLoss()
    log.info("training %s (%s) on %s (%s, %d classes): %d steps/epoch x %d epochs, %d rank(s), batch %d per rank; "
             "evaluating on %s", cfg.model.model, cfg.model.arch, cfg.dataset, source.kind, source.num_classes, steps,
             cfg.epochs, info.world_size, cfg.data.batch_size, eval_split or "nothing (--eval-every 0)")
    results, stats = None, {}
    for epoch in range(state.start_epoch, cfg.epochs):
        train_loader.set_epoch(epoch)
        step, stats = engine.train_one_epoch(
            model, criterion, state.optimizer, state.scheduler, train_loader, device, epoch, model_cfg=cfg.model,
            steps=steps, step=step, scaler=state.scaler, amp_dtype=dtype, clip_grad=cfg.clip_grad, writer=writer,
            log_every=cfg.log_every, progress=progress and info.is_main)
        save_epoch(state, cfg, source, run, epoch, step, stats)
        last = epoch == cfg.epochs - 1
        if eval_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
            results = engine.evaluate(model, eval_loader, device, model_cfg=cfg.model, amp_dtype=dtype,
                                      progress=progress and info.is_main)
            if run is not None:
                write_results(results, run.local / f"eval_epoch_{epoch:03d}.json", source.class_names, writer, step)
        if run is not None:
            if writer is not None:
                writer.flush()
            run.sync()
    steps_per_rank = distributed.all_gather_object(step)
    summary = {"steps": step, "steps_per_rank": steps_per_rank, "epochs": cfg.epochs, "steps_per_epoch": steps,
               "world_size": info.world_size, "train": stats, "eval_split": eval_split,
               "eval": _headline(results) if results else None, "dataset_version": source.version}
    if run is not None:
        atomic_write_bytes(run.local / "train_summary.json", dump_json(summary))
        if writer is not None:
            writer.close()
    if len(set(steps_per_rank)) != 1:
        raise RuntimeError(f"ranks finished at different steps {steps_per_rank}")
    return summary


def open_checked_source(dataset: str, cfg: TrainConfig):
    """DATASET's DataSource, checked to have the classes the checkpoint's model was trained for."""
    from training import data

    source = data.open_source(dataset)
    if source.num_classes != cfg.model.num_classes:
        raise ValueError(f"{dataset} has {source.num_classes} classes, the checkpoint's model {cfg.model.num_classes}")
    return source


def open_trained(dataset: str, ckpt_path: str):
    """(checkpoint dict, its TrainConfig, DATASET's DataSource, the checkpoint's model on CPU),
    after checking that DATASET has the classes the model was trained for."""
    from training import checkpoint
    from training.config import TrainConfig
    from training.models import build_model

    ckpt = checkpoint.load_checkpoint(ckpt_path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    source = open_checked_source(dataset, cfg)
    # The checkpoint's weights replace any initial ones.
    model = build_model(dataclasses.replace(cfg.model, weights=None, flow_weights=None))
    model.load_state_dict(ckpt["model"])
    return ckpt, cfg, source, model


def evaluate_checkpoint(dataset: str, ckpt_path: str, *, split: str, device: str, batch_size: int | None,
                        workers: int | None, test_clips: int | None, test_crops: int | None,
                        progress: bool = True, tube_params: dict | None = None) -> tuple[dict, list[str], dict]:
    """Evaluate a checkpoint on a split of DATASET; returns (results, class names, provenance).

    A detector (`train --task detect`) is scored on every frame (jobs.detect); tube_params
    set its tube linking (training.detection.tubes.TubeConfig).
    """
    from training import checkpoint, engine
    from training.config import TrainConfig

    ckpt = checkpoint.load_checkpoint(ckpt_path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    if cfg.data.task == "detect":
        from jobs.detect import evaluate_detector

        return evaluate_detector(dataset, ckpt_path, ckpt, cfg, split=split, device=device, batch_size=batch_size,
                                 workers=workers, tube_params=tube_params or {}, progress=progress)
    source = open_checked_source(dataset, cfg)
    split = pick_split(split, source.splits(), dataset)
    transform = dataclasses.replace(cfg.data.transform, **_given(test_crops=test_crops))
    data_cfg = dataclasses.replace(cfg.data, transform=transform,
                                   **_given(batch_size=batch_size, workers=workers, test_clips=test_clips))
    results = run_evaluation(cfg, ckpt, source, split, data_cfg, device, lambda model, loader, dev, dtype, main:
                             engine.evaluate(model, loader, dev, model_cfg=cfg.model, amp_dtype=dtype,
                                             progress=progress and main))
    provenance = evaluation_provenance(ckpt_path, ckpt, dataset, source, split,
                                       {"test_clips": data_cfg.test_clips, "test_crops": transform.test_crops,
                                        "crop_size": transform.crop_size})
    return results, source.class_names, provenance


def _given(**kw) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


# --- click commands (registered by jobs.cli) --------------------------------------------------

def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _floats(text: str) -> tuple[float, ...]:
    return parse_numbers(text, float)


@click.command("train", cls=FamilyCommand)  # adds --model and the families' options
@click.argument("dataset")
@click.option("--output", "-o", required=True, help="Run folder: checkpoints (*.pt), logs, TensorBoard.")
@click.option("--task", default="classify", show_default=True, type=click.Choice(["classify", "detect"]),
              help="detect: a two-stream region detector on a dataset built with --boxes (model 'detection').")
@click.option("--streams", default=None, metavar="rgb|flow|both|rgb,flow,warped",
              help="Streams to train: one, both (rgb,flow), or a comma list of rgb, flow and warped (warped flow "
                   "of a --flow-warp build, TSN's third modality). Default: the model's (two_stream: both).")
@click.option("--arch", default="resnet50", show_default=True,
              type=click.Choice(["resnet18", "resnet34", "resnet50", "resnet101", "vgg16"]),
              help="Stream backbone (vgg16: two_stream and fusion only, Simonyan & Zisserman's very deep streams).")
@click.option("--weights", default="auto", show_default=True,
              help="Initial weights of both streams: 'auto' (ImageNet weights from torchvision's cache, an error "
                   "when absent), 'imagenet' (the same, downloaded into the cache when missing), a local "
                   "torchvision state-dict file, or 'none' (random).")
@click.option("--flow-weights", default=None,
              help="A pre-trained temporal stream (a checkpoint of `flowshard train PRETRAIN --streams flow`, "
                   "see `flowshard pretrain-flow`, or a state-dict file) for the temporal stream.")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True, help="Per rank.")
@click.option("--lr", type=float, default=0.001, show_default=True)
@click.option("--flow-lr", type=float, default=None,
              help="The temporal stream's learning rate (default: --lr). Wang et al.: --lr 0.001 --flow-lr 0.005.")
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(["sgd", "adamw"]))
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--warmup-epochs", type=float, default=0.0, show_default=True)
@click.option("--lr-schedule", default="cosine", show_default=True, type=click.Choice(["cosine", "step"]),
              help="cosine: per-step cosine decay; step: --lr times --lr-gamma after each epoch of --lr-steps "
                   "(the papers' schedule).")
@click.option("--lr-steps", default=None, metavar="E1,E2,...",
              help="--lr-schedule step: the epochs after which the lr drops, e.g. 3,6.")
@click.option("--lr-gamma", type=float, default=0.1, show_default=True,
              help="--lr-schedule step: the factor of each drop.")
@click.option("--clip-grad", type=float, default=40.0, show_default=True, help="Gradient-norm clip (0: off).")
@click.option("--clip-len", type=int, default=None,
              help="Flow fields per snippet (L). Default: the clip shards' L, a --clips dataset's L, else 10.")
@click.option("--rgb-frames", type=int, default=None, help="RGB frames per snippet (F). Default: the model's (1).")
@click.option("--frame-stride", type=int, default=None, help="Stored frames between a snippet's RGB frames (1).")
@click.option("--sampling", default=None, type=click.Choice(["simonyan", "tsn", "strided"]),
              help="Snippets per item: simonyan 1, tsn --segments, strided --snippets --strides. Default: the model's.")
@click.option("--segments", type=int, default=None,
              help="TSN segments (K snippets, one per segment). Default: the model's (3; siamese 8).")
@click.option("--snippets", type=int, default=None, help="Snippets per clip with --sampling strided (T).")
@click.option("--strides", default=None,
              help="Frames between strided snippets, e.g. 1,5,10 (one drawn per clip: multi-timescale).")
@click.option("--crop-size", type=int, default=None, help="Default: the model's (224).")
@click.option("--flip/--no-flip", default=True, show_default=True)
@click.option("--crop-scales", default="1,0.875,0.75,0.66", show_default=True,
              help="Training crop sides, as fractions of the short side (multi-scale cropping; 1: whole frame).")
@click.option("--max-distort", type=int, default=1, show_default=True,
              help="Scale steps a crop's width and height may differ (Wang et al.: 3, any pair).")
@click.option("--crop-positions", type=click.Choice(["5", "13"]), default="13", show_default=True,
              help="Crop offsets: 5 = corners + centre (Wang et al.'s corner cropping), 13 = TSN's.")
@click.option("--test-clips", type=int, default=25, show_default=True,
              help="Test clips per video sample (per stride with --sampling strided).")
@click.option("--test-crops", type=click.Choice(["1", "10"]), default="1", show_default=True)
@click.option("--fusion", default="late", show_default=True, type=click.Choice(["late", "conv"]),
              help="two_stream: late score fusion or a conv layer on the last maps.")
@click.option("--fusion-weights", default=None,
              help="Late fusion weights rgb,flow[,warped]. Default: TSN's 1,1.5, or 1,1,0.5 with warped.")
@click.option("--flow-mean-subtract", is_flag=True, default=False,
              help="Subtract each flow (and warped) field's mean vector from the input (Simonyan & Zisserman).")
@click.option("--fusion-kernel", type=click.Choice(["1", "3"]), default="1", show_default=True)
@click.option("--dropout", type=float, default=None,
              help="Before the classifier: spatial stream and fused heads. Default: the model's (0.5; fusion 0.85).")
@click.option("--flow-dropout", type=float, default=None,
              help="The temporal stream's dropout (default: --dropout). Wang et al.: --dropout 0.8 --flow-dropout 0.9.")
@click.option("--partial-bn/--no-partial-bn", default=False, show_default=True)
@click.option("--workers", type=int, default=4, show_default=True, help="Loader processes per rank (0: none).")
@click.option("--shuffle-buffer", type=int, default=500, show_default=True)
@click.option("--verify", default="stream", show_default=True, type=click.Choice(["stream", "open", "off"]))
@click.option("--gpu-decode/--no-gpu-decode", default=False, show_default=True,
              help="Decode the JPEGs (nvJPEG, batched) and crop/flip/normalize on --device; loader processes only read.")
@click.option("--device", default=None, type=click.Choice(["cpu", "cuda"]), help="Default: cuda when available.")
@click.option("--amp", default="auto", show_default=True, type=click.Choice(["auto", "bf16", "fp16", "off"]))
@click.option("--channels-last/--no-channels-last", default=True, show_default=True)
@click.option("--steps-per-epoch", type=int, default=0, show_default=True, help="0: one pass (see --epoch-size).")
@click.option("--epoch-size", default="samples", show_default=True, type=click.Choice(["samples", "videos"]),
              help="An epoch: one pass over the samples, or one item per video (clip shards: epochs walk through "
                   "the stored clips).")
@click.option("--train-split", default="train", show_default=True)
@click.option("--eval-split", default="auto", show_default=True,
              help="Split evaluated after epochs; auto: test, else val (Kinetics). Missing: an error.")
@click.option("--eval-every", type=int, default=1, show_default=True, help="Evaluate every N epochs (0: never).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", default=None, is_flag=False, flag_value="last",
              help="Resume from a checkpoint (--resume alone: OUTPUT/last.pt).")
@click.option("--log-every", type=int, default=10, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def train_command(dataset: str, output: str, progress: bool, **o) -> None:
    """Train a two-stream network on DATASET (a built dataset or clip shards)."""
    from training import data

    try:
        source = data.open_source(dataset)
        o["clip_len"] = o["clip_len"] or default_clip_len(source.info or {})
        num_classes = source.num_classes
        if o["task"] == "detect":
            from jobs.detect import action_names

            o["model"] = "detection"
            num_classes = len(action_names(source.info or {}, dataset)) + 1  # and background
        cfg = make_train_config(dataset, output, num_classes, resolve_defaults(o))
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        summary = train(cfg, progress=progress)
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


def make_train_config(dataset: str, output: str, num_classes: int, o: dict) -> TrainConfig:
    """Options (unset data flags already resolved, `resolve_defaults`) -> a validated
    TrainConfig (ValueError naming the bad value)."""
    from training.config import TrainConfig
    from training.data import DataConfig
    from training.models import ModelConfig
    from training.transforms import TransformConfig

    transform = TransformConfig(crop_size=o["crop_size"], scales=_floats(o["crop_scales"]), max_distort=o["max_distort"],
                                crop_positions=int(o["crop_positions"]), flip=o["flip"],
                                test_crops=int(o["test_crops"]))
    strides = parse_numbers(o["strides"], int)
    ordered = model_takes_snippets(o["model"])
    # An ordered-snippet model reads T = --snippets strided snippets, or one per TSN segment.
    snippets = (o["segments"] if o["sampling"] == "tsn" else o["snippets"]) if ordered else 0
    data_cfg = DataConfig(streams=o["streams"], clip_len=o["clip_len"], rgb_frames=o["rgb_frames"],
                          frame_stride=o["frame_stride"], sampler=o["sampling"], segments=o["segments"],
                          snippets=o["snippets"], strides=strides, test_clips=o["test_clips"], ordered=ordered,
                          transform=transform,
                          batch_size=o["batch_size"], workers=o["workers"], shuffle_buffer=o["shuffle_buffer"],
                          seed=o["seed"], verify=o["verify"], gpu_decode=o.get("gpu_decode", False),
                          flow_mean_subtract=o.get("flow_mean_subtract", False), task=o.get("task", "classify"))
    weights = _floats(o["fusion_weights"]) if o.get("fusion_weights") else None  # None: the streams' defaults
    initial = None if o["weights"] in (None, "none") else o["weights"]
    model_cfg = ModelConfig(model=o["model"], arch=o["arch"], streams=o["streams"], num_classes=num_classes,
                            clip_len=o["clip_len"], rgb_frames=o["rgb_frames"],
                            snippets=snippets,
                            weights=initial, flow_weights=o["flow_weights"], dropout=o["dropout"],
                            flow_dropout=o["flow_dropout"],
                            partial_bn=o["partial_bn"],
                            fusion=o["fusion"], fusion_weights=weights, fusion_kernel=int(o["fusion_kernel"]),
                            options=model_options(o["model"], o))
    return TrainConfig(dataset=str(dataset), output=str(output), data=data_cfg, model=model_cfg, epochs=o["epochs"],
                       lr=o["lr"], flow_lr=o["flow_lr"], optimizer=o["optimizer"], momentum=o["momentum"], weight_decay=o["weight_decay"],
                       warmup_epochs=o["warmup_epochs"], clip_grad=o["clip_grad"],
                       lr_schedule=o.get("lr_schedule", "cosine"), lr_gamma=o.get("lr_gamma", 0.1),
                       lr_steps=parse_numbers(o["lr_steps"], int) if o.get("lr_steps") else (),
                       device=o["device"] or _default_device(), amp=o["amp"], channels_last=o["channels_last"],
                       steps_per_epoch=o["steps_per_epoch"], epoch_size=o["epoch_size"], eval_every=o["eval_every"],
                       train_split=o["train_split"], eval_split=o["eval_split"], seed=o["seed"],
                       resume=o["resume"], log_every=o["log_every"])


@click.command("evaluate")
@click.argument("dataset")
@click.argument("checkpoint_path", metavar="CHECKPOINT")
@click.option("--json", "json_path", default=None, help="Also write the metrics JSON here (keys rgb, flow, fused).")
@click.option("--split", default="auto", show_default=True, help="auto: test, else val.")
@click.option("--test-clips", type=int, default=None, help="Test clips per video sample (default: as trained).")
@click.option("--test-crops", type=click.Choice(["1", "10"]), default=None, help="1 (centre) or 10 crops.")
@click.option("--batch-size", type=int, default=None)
@click.option("--workers", type=int, default=None)
@click.option("--device", default=None, type=click.Choice(["cpu", "cuda"]), help="Default: cuda when available.")
@click.option("--tube-param", multiple=True, metavar="KEY=VALUE",
              help="Detectors: tube linking setting, repeatable (overlap_weight, candidates, max_tubes, trim, "
                   "threshold, penalty, min_frames; training.detection.tubes.TubeConfig).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def evaluate_command(dataset: str, checkpoint_path: str, json_path: str | None, split: str, test_clips: int | None,
                     test_crops: str | None, batch_size: int | None, workers: int | None, device: str | None,
                     tube_param: tuple[str, ...], progress: bool) -> None:
    """Score CHECKPOINT on DATASET's test clips: clip and video accuracy per stream and fused
    (a detector: frame-mAP, video-mAP and accuracy on every frame)."""
    try:
        results, names, provenance = evaluate_checkpoint(
            dataset, checkpoint_path, split=split, device=device or _default_device(), batch_size=batch_size,
            workers=workers, test_clips=test_clips, test_crops=int(test_crops) if test_crops else None,
            progress=progress, tube_params=parse_params(tube_param))
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
    lines = [f"{'STREAM':<8} {'CLIP TOP-1':>10} {'VIDEO TOP-1':>11} {'VIDEO TOP-5':>11} {'MEAN CLASS':>10} {'VIDEOS':>6}"]
    for name, r in results.items():
        cells = [f"{r[k]:.4f}" for k in keys] if r else ["-"] * 4
        lines.append(f"{name:<8} {cells[0]:>10} {cells[1]:>11} {cells[2]:>11} {cells[3]:>10} "
                     f"{(r or {}).get('videos', '-'):>6}")
    return lines


@click.command("clips")
@click.argument("dataset")
@click.argument("output", metavar="OUT")
@click.option("--clip-len", type=int, default=10, show_default=True, help="Flow fields per snippet (L; 0: RGB only).")
@click.option("--rgb-frames", type=int, default=1, show_default=True, help="RGB frames per snippet (F).")
@click.option("--frame-stride", type=int, default=1, show_default=True, help="Stored frames between them.")
@click.option("--snippets", type=int, default=1, show_default=True, help="Snippets per clip (T).")
@click.option("--strides", default="1", show_default=True,
              help="Frames between the snippets of a clip; several (1,5,10) cut one clip set per stride.")
@click.option("--per-video", type=int, default=5, show_default=True, help="Clips per video sample (and stride).")
@click.option("--sampling", default="uniform", show_default=True, type=click.Choice(["uniform", "random"]))
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds random clips and the clip shuffle.")
@click.option("--shard-samples", type=int, default=1000, show_default=True, help="Maximum clips per tar.")
@click.option("--shard-size", default="256MiB", show_default=True, help="Maximum tar size (e.g. 256MiB, 1GB).")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check parent shard hashes first.")
@click.option("--overwrite", is_flag=True, help="Replace clip shards already in OUT.")
def clips_command(dataset: str, output: str, strides: str, shard_size: str, overwrite: bool, **o) -> None:
    """Cut clip shards (snippets of frames + stacked flow fields, bytes copied) from a built DATASET into OUT."""
    from pipeline.clips import ClipsConfig, derive_clips

    try:
        cfg = ClipsConfig(strides=parse_numbers(strides, int), shard_bytes=parse_size(shard_size), **o)
        info = derive_clips(dataset, output, cfg, overwrite=overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    c = info["counts"]
    click.echo(f"{output}: {sum(c['clips'].values())} clips of {sum(c['videos'].values())} videos "
               f"({c['clips']}), {sum(c['shards'].values())} shard(s), {c['bytes'] / 1e6:.1f} MB; "
               f"version {info['version']}")


@click.group()
def main() -> None:
    """flowshard clips|train|evaluate (the same commands as in `flowshard`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


main.add_command(clips_command)
main.add_command(train_command)
main.add_command(evaluate_command)

if __name__ == "__main__":
    main()
