"""`flowshard train --task detect` and `flowshard evaluate` of a detector: the composition.

    flowshard build videos.csv out/ds --boxes boxes.csv
    flowshard train out/ds --task detect --arch resnet50 --output runs/det
    flowshard evaluate out/ds runs/det/last.pt --json det.json

The detector (training.models.detection) reads the built dataset's video samples through
training.data's pipeline (training.detection.data picks frames with their boxes); the
loop, checkpoints and logs are those of classification (jobs.train), with detection's
losses and metrics (training.detection.engine). Actions are the boxes' labels
(dataset.json "boxes" "label_map"); the model has one more class, background.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from jobs.runs import (
    EpochLoop,
    _writer,
    evaluation_provenance,
    initial_model,
    pick_split,
    prepare_run,
    resolve_eval_split,
    run_evaluation,
    run_folder,
    write_results,
)
from pipeline.build.manifest import atomic_write_bytes, dump_json
from training import data
from training.detection import data as det_data
from training.detection import engine
from training.detection.metrics import DEFAULT_MATCHING
from training.detection.tubes import TubeConfig, tube_config

log = logging.getLogger(__name__)


def action_names(info: dict, dataset: str) -> list[str]:
    """The dataset's box labels in id order; ValueError when it was built without --boxes."""
    boxes = info.get("boxes")
    if not boxes:
        raise ValueError(
            f"{dataset} has no boxes: build it with `flowshard build ... --boxes FILE` to train or evaluate a detector"
        )
    return [n for n, _ in sorted(boxes["label_map"].items(), key=lambda kv: kv[1])]


def train_detector(cfg, info, progress: bool, report=None) -> dict:
    """Train the detector as configured (one process, or one rank under torchrun); returns the summary."""
    device = torch.device(info.device)
    torch.manual_seed(cfg.seed)
    source = data.open_source(cfg.dataset)
    names = action_names(source.info, cfg.dataset)
    if len(names) + 1 != cfg.model.num_classes:
        raise ValueError(f"{cfg.dataset} has {len(names)} actions, the model {cfg.model.num_classes - 1}")
    eval_split = resolve_eval_split(cfg, source.splits())
    model = initial_model(cfg)  # reads the initial weights: a missing file fails before any folder or loader
    with run_folder(cfg, info) as run:
        return _run(cfg, info, source, names, model, device, run, eval_split, progress, report)


def _run(cfg, info, source, names, model, device, run, eval_split, progress, report=None) -> dict:
    per_epoch = source.num_samples(cfg.train_split) * det_data.items_per_sample(cfg.data)
    steps = cfg.steps_per_epoch or max(1, per_epoch // (cfg.data.batch_size * info.world_size))
    state = prepare_run(cfg, info, source, model, device, steps, find_unused=True)  # before the loaders start
    pin = device.type == "cuda"
    train_loader = data.make_loader(source, cfg.train_split, cfg.data, train=True, steps=steps, pin_memory=pin)
    eval_loader = None
    if eval_split is not None:
        eval_loader = data.make_loader(source, eval_split, cfg.data, train=False, pin_memory=pin)
    loop = EpochLoop(state=state, cfg=cfg, info=info, source=source, run=run, steps=steps, report=report)
    writer = _writer(run.local) if run is not None else None
    streams = cfg.model.stream_names
    log.info(
        "training a %s detector (%s) on %s: %d actions, %d steps/epoch x %d epochs, batch %d per rank; "
        "evaluating on %s",
        "+".join(streams),
        cfg.model.arch,
        cfg.dataset,
        len(names),
        steps,
        cfg.epochs,
        cfg.data.batch_size,
        eval_split or "nothing (--eval-every 0)",
    )
    results, step = None, state.step
    stats: dict = {}
    for epoch in range(state.start_epoch, cfg.epochs):
        done = loop.start(train_loader, epoch)
        step, stats = engine.train_one_epoch(
            state.model,
            state.optimizer,
            state.scheduler,
            train_loader,
            device,
            epoch,
            streams=streams,
            steps=steps,
            step=step,
            scaler=state.scaler,
            amp_dtype=state.dtype,
            clip_grad=cfg.clip_grad,
            writer=writer,
            log_every=cfg.log_every,
            progress=progress and info.is_main,
            start=done,
            after_step=loop.after_step(epoch),
        )
        loop.end(epoch, step, stats)
        last = epoch == cfg.epochs - 1
        if eval_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
            results = engine.evaluate(
                state.model,
                eval_loader,
                device,
                streams=streams,
                class_names=names,
                tube_cfg=TubeConfig(),
                amp_dtype=state.dtype,
                progress=progress and info.is_main,
            )
            if run is not None:
                write_detection_results(results, run.local / f"eval_epoch_{epoch:03d}.json", names, writer, step)
        if run is not None:
            if writer is not None:
                writer.flush()
            run.sync()
        loop.reported(epoch, step, stats)
    summary = {
        "steps": step,
        "epochs": cfg.epochs,
        "steps_per_epoch": steps,
        "world_size": info.world_size,
        "train": stats,
        "eval_split": eval_split,
        "eval": headline(results) if results else None,
        "dataset_version": source.version,
    }
    if run is not None:
        atomic_write_bytes(run.local / "train_summary.json", dump_json(summary))
        if writer is not None:
            writer.close()
    return summary


def headline(results: dict) -> dict:
    """The numbers a run reports per output: frame-mAP, video-mAP and video top-1."""
    return {name: {k: r[k] for k in ("frame_map", "video_map", "video_top1")} for name, r in results.items()}


def write_detection_results(
    results: dict, path: Path, names: list[str], writer=None, step: int = 0, extra: dict | None = None
) -> Path:
    """The metrics JSON (jobs.runs.write_results: per output, beside its confusion PNG) and mAP scalars."""
    write_results(results, path, names, extra=extra)
    if writer is not None:
        for name, r in results.items():
            writer.add_scalar(f"eval/{name}/frame_map", r["frame_map"], step)
            for iou, value in r["video_map"].items():
                writer.add_scalar(f"eval/{name}/video_map_{iou}", value, step)
    log.info("detection: %s", json.dumps(headline(results)))
    return path


def evaluate_detector(
    dataset: str,
    ckpt_path: str,
    ckpt: dict,
    cfg,
    *,
    split: str,
    device: str,
    batch_size: int | None,
    workers: int | None,
    tube_params: dict,
    progress: bool = True,
    matching: str = DEFAULT_MATCHING,
) -> tuple[dict, list[str], dict]:
    """Evaluate a detector checkpoint on a split of DATASET; returns (results, action names, provenance)."""
    source = data.open_source(dataset)
    names = action_names(source.info, dataset)
    split = pick_split(split, source.splits(), dataset)
    if len(names) + 1 != cfg.model.num_classes:
        raise ValueError(f"{dataset} has {len(names)} actions, the checkpoint's detector {cfg.model.num_classes - 1}")
    tube_cfg = tube_config(tube_params)
    data_cfg = dataclasses.replace(
        cfg.data, **{k: v for k, v in (("batch_size", batch_size), ("workers", workers)) if v is not None}
    )
    results = run_evaluation(
        cfg,
        ckpt,
        source,
        split,
        data_cfg,
        device,
        lambda model, loader, dev, dtype, main: engine.evaluate(
            model,
            loader,
            dev,
            streams=cfg.model.stream_names,
            class_names=names,
            tube_cfg=tube_cfg,
            amp_dtype=dtype,
            progress=progress and main,
            matching=matching,
        ),
    )
    provenance = evaluation_provenance(
        ckpt_path,
        ckpt,
        dataset,
        source,
        split,
        {"task": "detect", "frames": "every frame", "tubes": dataclasses.asdict(tube_cfg), "matching": matching},
    )
    return results, names, provenance
