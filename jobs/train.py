"""Two-stream training and evaluation: what `flowshard train|evaluate` run (jobs.commands.train
turns their options into a TrainConfig; see there for torchrun command lines).

DATASET is a built video dataset (`flowshard build`) or a clip-shard folder (`flowshard
clips`); its dataset.json "kind" says which. Writes DIR/epoch_NNN.pt and DIR/last.pt after
every epoch, DIR/config.json, DIR/train.log, TensorBoard scalars in DIR/tb, evaluation
metrics DIR/eval_epoch_NNN.json with a confusion-matrix PNG, and DIR/train_summary.json.
`python -m jobs.train train ...` is `python -m jobs.cli train ...`.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from jobs.detect import evaluate_detector, train_detector
from jobs.runs import (
    EpochLoop,
    Report,
    RunFolder,
    _headline,
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
from training import checkpoint, data, distributed, engine
from training.config import TrainConfig
from training.detection.metrics import DEFAULT_MATCHING
from training.distributed import DistInfo
from training.models import build_model

log = logging.getLogger(__name__)


def train(cfg: TrainConfig, *, progress: bool = True, report: Report | None = None) -> dict:
    """Run training as configured (one process, or one rank under torchrun or Ray Train); returns
    the summary. `report(metrics, checkpoint file)` hears of every checkpoint (jobs.train_on_ray)."""
    info = distributed.init_distributed(cfg.device)
    try:
        if cfg.data.task == "detect":
            return train_detector(cfg, info, progress, report)
        return _train(cfg, info, progress, report)
    finally:
        distributed.cleanup()


def _train(cfg: TrainConfig, info: DistInfo, progress: bool, report: Report | None = None) -> dict:
    device = torch.device(info.device)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    source = data.open_source(cfg.dataset)
    if source.num_classes != cfg.model.num_classes:
        raise ValueError(f"{cfg.dataset} has {source.num_classes} classes, the model {cfg.model.num_classes}")
    eval_split = resolve_eval_split(cfg, source.splits())
    model = initial_model(cfg)  # reads the initial weights: a missing file fails before any folder or loader
    with run_folder(cfg, info) as run:
        return _run(cfg, info, source, model, device, run, eval_split, progress, report)


def _run(
    cfg,
    info,
    source,
    model,
    device,
    run: RunFolder | None,
    eval_split: str | None,
    progress,
    report: Report | None = None,
) -> dict:
    steps = cfg.steps_per_epoch or data.steps_per_epoch(
        source, cfg.train_split, cfg.data, info.world_size, per=cfg.epoch_size
    )
    state = prepare_run(cfg, info, source, model, device, steps)  # a bad --resume fails before the loaders start
    pin = device.type == "cuda"
    train_loader = data.make_loader(
        source, cfg.train_split, cfg.data, train=True, steps=steps, pin_memory=pin, device=device
    )
    eval_loader = None
    if eval_split is not None:
        eval_loader = data.make_loader(source, eval_split, cfg.data, train=False, pin_memory=pin, device=device)
    model, dtype, step = state.model, state.dtype, state.step
    loop = EpochLoop(state=state, cfg=cfg, info=info, source=source, run=run, steps=steps, report=report)
    writer = _writer(run.local) if run is not None else None
    criterion = torch.nn.CrossEntropyLoss()
    log.info(
        "training %s (%s) on %s (%s, %d classes): %d steps/epoch x %d epochs, %d rank(s), batch %d per rank; "
        "evaluating on %s",
        cfg.model.model,
        cfg.model.arch,
        cfg.dataset,
        source.kind,
        source.num_classes,
        steps,
        cfg.epochs,
        info.world_size,
        cfg.data.batch_size,
        eval_split or "nothing (--eval-every 0)",
    )
    results = None
    stats: dict = {}
    for epoch in range(state.start_epoch, cfg.epochs):
        done = loop.start(train_loader, epoch)
        step, stats = engine.train_one_epoch(
            model,
            criterion,
            state.optimizer,
            state.scheduler,
            train_loader,
            device,
            epoch,
            model_cfg=cfg.model,
            steps=steps,
            step=step,
            scaler=state.scaler,
            amp_dtype=dtype,
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
                model, eval_loader, device, model_cfg=cfg.model, amp_dtype=dtype, progress=progress and info.is_main
            )
            if run is not None:
                write_results(results, run.local / f"eval_epoch_{epoch:03d}.json", source.class_names, writer, step)
        if run is not None:
            if writer is not None:
                writer.flush()
            run.sync()
        loop.reported(epoch, step, stats)
    steps_per_rank = distributed.all_gather_object(step)
    summary = {
        "steps": step,
        "steps_per_rank": steps_per_rank,
        "epochs": cfg.epochs,
        "steps_per_epoch": steps,
        "world_size": info.world_size,
        "train": stats,
        "eval_split": eval_split,
        "eval": _headline(results) if results else None,
        "dataset_version": source.version,
    }
    if run is not None:
        atomic_write_bytes(run.local / "train_summary.json", dump_json(summary))
        if writer is not None:
            writer.close()
    if len(set(steps_per_rank)) != 1:
        raise RuntimeError(f"ranks finished at different steps {steps_per_rank}")
    return summary


def open_checked_source(dataset: str, cfg: TrainConfig):
    """DATASET's DataSource, checked to have the classes the checkpoint's model was trained for."""
    source = data.open_source(dataset)
    if source.num_classes != cfg.model.num_classes:
        raise ValueError(f"{dataset} has {source.num_classes} classes, the checkpoint's model {cfg.model.num_classes}")
    return source


def open_trained(dataset: str, ckpt_path: str):
    """(checkpoint dict, its TrainConfig, DATASET's DataSource, the checkpoint's model on CPU),
    after checking that DATASET has the classes the model was trained for."""
    ckpt = checkpoint.load_checkpoint(ckpt_path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    source = open_checked_source(dataset, cfg)
    # The checkpoint's weights replace any initial ones.
    model = build_model(dataclasses.replace(cfg.model, weights=None, flow_weights=None))
    model.load_state_dict(ckpt["model"])
    return ckpt, cfg, source, model


def evaluate_checkpoint(
    dataset: str,
    ckpt_path: str,
    *,
    split: str,
    device: str,
    batch_size: int | None,
    workers: int | None,
    test_clips: int | None,
    test_crops: int | None,
    progress: bool = True,
    tube_params: dict | None = None,
    matching: str = DEFAULT_MATCHING,
) -> tuple[dict, list[str], dict]:
    """Evaluate a checkpoint on a split of DATASET; returns (results, class names, provenance).

    A detector (`train --task detect`) is scored on every frame (jobs.detect); tube_params
    set its tube linking (training.detection.tubes.TubeConfig), matching its frame and tube
    matching rule (training.detection.metrics.MATCHING_RULES).
    """
    ckpt = checkpoint.load_checkpoint(ckpt_path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    if cfg.data.task == "detect":
        return evaluate_detector(
            dataset,
            ckpt_path,
            ckpt,
            cfg,
            split=split,
            device=device,
            batch_size=batch_size,
            workers=workers,
            tube_params=tube_params or {},
            progress=progress,
            matching=matching,
        )
    source = open_checked_source(dataset, cfg)
    split = pick_split(split, source.splits(), dataset)
    transform = dataclasses.replace(cfg.data.transform, **_given(test_crops=test_crops))
    data_cfg = dataclasses.replace(
        cfg.data, transform=transform, **_given(batch_size=batch_size, workers=workers, test_clips=test_clips)
    )
    results = run_evaluation(
        cfg,
        ckpt,
        source,
        split,
        data_cfg,
        device,
        lambda model, loader, dev, dtype, main: engine.evaluate(
            model, loader, dev, model_cfg=cfg.model, amp_dtype=dtype, progress=progress and main
        ),
    )
    provenance = evaluation_provenance(
        ckpt_path,
        ckpt,
        dataset,
        source,
        split,
        {"test_clips": data_cfg.test_clips, "test_crops": transform.test_crops, "crop_size": transform.crop_size},
    )
    return results, source.class_names, provenance


def _given(**kw) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


if __name__ == "__main__":
    # `python -m jobs.train train ...` runs the flowshard command (commands: jobs.commands.train).
    from jobs.cli import main

    main()
