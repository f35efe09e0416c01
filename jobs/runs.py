"""The run machinery every training task shares (classification in jobs.train, detection in
jobs.detect): optimizer and schedule, the run folder (local or object storage), resume
checks, per-epoch checkpoints, metrics files, and checkpoint evaluation with its provenance.

It sits below both commands, so jobs.train and jobs.detect import it and not each other's
internals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from pipeline import storage
from pipeline.build.manifest import atomic_write_bytes, dump_json
from pipeline.build.tags import opened_name
from pipeline.storage import Location
from training import checkpoint, data, distributed, metrics
from training.config import TrainConfig, amp_dtype
from training.distributed import DistInfo
from training.models import build_model
from training.models.base import channels_last_, param_groups

log = logging.getLogger(__name__)

TRAIN_LOG = "train.log"


# --- composition ---------------------------------------------------------------------------


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (TSN) or AdamW over the trainable parameters; the temporal stream's
    at --flow-lr when given (Wang et al.: 0.001 for the spatial, 0.005 for the temporal net)."""
    params = param_groups(model, cfg.lr, cfg.flow_lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Per-step learning-rate schedule after a linear warm-up of cfg.warmup_epochs: cosine decay
    (cfg.lr_schedule "cosine"), or the papers' step schedule ("step": the lr times cfg.lr_gamma
    once each epoch of cfg.lr_steps is done, e.g. steps 3,6 with gamma 0.1: 1e-3, 1e-4 from
    epoch 3 on (0-based), 1e-5 from epoch 6 on).

    Built-in schedulers only: their state dicts are plain data, so checkpoints load with
    weights_only=True.
    """
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    main: torch.optim.lr_scheduler.LRScheduler
    if cfg.lr_schedule == "step":  # milestones count the steps after the warm-up
        main = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[e * steps_per_epoch - warmup for e in cfg.lr_steps], gamma=cfg.lr_gamma
        )
    else:
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    if warmup == 0:
        return main
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, main], milestones=[warmup])


def check_resume(ckpt: dict, cfg: TrainConfig, version: str) -> None:
    """Refuse to resume with another model/clip setup or on another dataset version."""
    saved = ckpt["config"]
    saved = {**saved, "model": {"revision": 1, **saved["model"]}}  # saved before revisions were recorded: 1
    now = cfg.to_dict()
    # Initial weights do not matter once the checkpoint's are loaded; everything else does.
    differ = sorted(
        k for k in now["model"] if k not in ("weights", "flow_weights") and saved["model"].get(k) != now["model"][k]
    )
    differ += [f"data.{k}" for k in ("streams", "clip_len") if saved["data"].get(k) != now["data"][k]]
    if differ:
        raise ValueError(f"cannot resume: the checkpoint was trained with other settings for {differ}")
    if ckpt["dataset_version"] != version:
        raise ValueError(
            f"cannot resume: the checkpoint was trained on dataset version {ckpt['dataset_version']}, "
            f"{cfg.dataset} is version {version}"
        )


def resolve_resume(resume: str | None, output: str) -> Location | None:
    """--resume alone means OUTPUT/last.pt (OUTPUT local or on object storage)."""
    if resume is None:
        return None
    return storage.join(storage.location(output), checkpoint.LAST) if resume == "last" else storage.location(resume)


def _file_logging(path: Path) -> logging.Handler:
    """Copy what the logging configuration lets through (--log-level) to the run's log file."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


@dataclass(frozen=True)
class RunFolder:
    """Where a run's files go.

    `output` is OUTPUT, a local folder or a bucket prefix. Checkpoints are written there
    whole and atomically. Files that grow piecewise (train.log, TensorBoard events) and the
    metrics are written in `local`: OUTPUT itself when it is local; on object storage a
    local staging folder whose files `sync` uploads after every epoch and at the end.
    """

    output: Location
    local: Path

    def sync(self) -> None:
        """Upload the staged files (object storage only; each file whole, as it is now)."""
        if not storage.is_remote(self.output):
            return
        for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
            storage.put_file(path, storage.join(self.output, *path.relative_to(self.local).parts))


def open_run_folder(output: str) -> RunFolder:
    """The run folder of OUTPUT, created (a staging folder too when OUTPUT is remote, holding
    the run's existing train.log so a resumed run appends to it as it does locally)."""
    out = storage.location(output)
    if not storage.is_remote(out):
        local = Path(out)
        local.mkdir(parents=True, exist_ok=True)
        return RunFolder(output=local, local=local)
    local = Path(tempfile.mkdtemp(prefix="flowshard-run-"))
    if storage.isfile(storage.join(out, TRAIN_LOG)):
        (local / TRAIN_LOG).write_bytes(storage.read_bytes(storage.join(out, TRAIN_LOG)))
    return RunFolder(output=out, local=local)


def resolve_eval_split(cfg: TrainConfig, splits: list[str]) -> str | None:
    """The split evaluated during training (None only when --eval-every 0): see pick_split."""
    if not cfg.eval_every:
        return None
    return pick_split(cfg.eval_split, splits, cfg.dataset, hint="or train without evaluation: --eval-every 0")


def pick_split(requested: str, splits: list[str], dataset: str, hint: str = "") -> str:
    """`requested`, or for "auto": test, else val (Kinetics has no test split).

    Evaluation is never skipped silently: a split the dataset lacks is an error naming the
    splits it has.
    """
    if requested != "auto":
        if requested in splits:
            return requested
        raise ValueError(
            f"{dataset} has no split {requested!r} to evaluate (splits: {splits}); name one with "
            f"--eval-split / --split{', ' + hint if hint else ''}"
        )
    for split in ("test", "val", "validation"):
        if split in splits:
            return split
    raise ValueError(
        f"{dataset} has no test or val split to evaluate (splits: {splits}); name one with "
        f"--eval-split / --split{', ' + hint if hint else ''}"
    )


@contextlib.contextmanager
def run_folder(cfg: TrainConfig, info: DistInfo) -> Iterator[RunFolder | None]:
    """Rank 0's RunFolder (None on other ranks), with config.json written and the log copied to
    train.log while the run lasts, then synced."""
    run = open_run_folder(cfg.output) if info.is_main else None
    handler = None
    if run is not None:
        handler = _file_logging(run.local / TRAIN_LOG)
        atomic_write_bytes(run.local / "config.json", dump_json(cfg.to_dict()))
    try:
        yield run
    finally:
        if run is not None and handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
            run.sync()


@dataclass
class RunState:
    """What a training run carries from epoch to epoch (besides its loaders)."""

    model: torch.nn.Module  # on its device, inside DistributedDataParallel when distributed
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None  # autocast
    start_epoch: int
    step: int
    start_batch: int = 0  # batches of start_epoch already trained (resumed from a step checkpoint)


def loader_geometry(cfg: TrainConfig, info: DistInfo, steps: int) -> dict:
    """What fixes each stream's block of an epoch: a step checkpoint resumes inside an epoch
    only with the same values (training.data.shards.EpochBlocks)."""
    return {
        "world_size": info.world_size,
        "workers": cfg.data.workers,
        "batch_size": cfg.data.batch_size,
        "steps": steps,
    }


def resume_point(ckpt: dict, resume: Location, geometry: dict) -> tuple[dict, int, Location | None]:
    """(the checkpoint to restore, batches of the next epoch already trained, where it was read:
    `resume` or the epoch checkpoint it fell back to, None for the very start).

    A step checkpoint taken with another loader geometry (an elastic group that changed
    size, other --workers or --batch-size) cannot go on inside its epoch without using some
    samples twice and skipping others: the run goes back to the epoch's start (the
    epoch_NNN.pt beside it, or the very start for the first epoch), so each epoch is drawn
    by one group.
    """
    position = ckpt.get("position")
    if not position:
        return ckpt, 0, resume
    if {k: position.get(k) for k in geometry} == geometry:
        return ckpt, int(position["epoch_step"]), resume
    epoch = int(ckpt["epoch"])
    log.warning(
        "%s was taken inside epoch %d with loader geometry %s, this run has %s: the epoch restarts from its beginning",
        resume,
        epoch + 1,
        {k: position.get(k) for k in geometry},
        geometry,
    )
    if epoch < 0:
        return {}, 0, None
    at = storage.join(storage.parent(resume), checkpoint.epoch_name(epoch))
    return checkpoint.load_checkpoint(at), 0, at


def initial_model(cfg: TrainConfig) -> torch.nn.Module:
    """The network of `cfg` on the CPU, with its initial weights (--weights, --flow-weights).

    Built before the run folder and the loaders, so a missing weights file is reported before
    any work starts. A resumed run takes every weight from its checkpoint: no initial weights
    to fetch.
    """
    resume = resolve_resume(cfg.resume, cfg.output)
    return build_model(cfg.model if resume is None else dataclasses.replace(cfg.model, weights=None, flow_weights=None))


def prepare_run(
    cfg: TrainConfig,
    info: DistInfo,
    source,
    model: torch.nn.Module,
    device: torch.device,
    steps: int,
    *,
    find_unused: bool = False,
) -> RunState:
    """`model` (initial_model) on `device` with the optimizer, scheduler and scaler of `cfg`,
    resumed from --resume when given.

    find_unused: DDP looks for parameters a step did not use (a detector's unused heads).
    """
    resume = resolve_resume(cfg.resume, cfg.output)
    model = model.to(device)
    if cfg.channels_last and cfg.data.task == "classify":
        channels_last_(model)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(optimizer, cfg, steps)
    dtype = amp_dtype(cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    start_epoch, step, start_batch = 0, 0, 0
    if resume is not None:
        ckpt = checkpoint.load_checkpoint(resume)
        check_resume(ckpt, cfg, source.version)
        ckpt, start_batch, at = resume_point(ckpt, resume, loader_geometry(cfg, info, steps))
        if ckpt:
            step, done = checkpoint.restore(
                ckpt,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                rank=info.rank,
                world_size=info.world_size,
            )
            start_epoch = done + 1
            log.info("resumed from %s at step %d (epoch %d done, %d batches of the next)", at, step, done, start_batch)
    if info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=find_unused
        )
    return RunState(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        dtype=dtype,
        start_epoch=start_epoch,
        step=step,
        start_batch=start_batch,
    )


def save_epoch(
    state: RunState, cfg: TrainConfig, source, run: RunFolder | None, epoch: int, step: int, stats: dict
) -> None:
    """Log an epoch's stats and write its checkpoint (epoch_NNN.pt and last.pt) from rank 0; with
    --keep-epochs N, the epoch checkpoints before the newest N go."""
    log.info("epoch %d: step %d, %s", epoch, step, json.dumps({k: round(v, 4) for k, v in stats.items()}))
    rng = distributed.all_gather_object(checkpoint.rng_state())  # every rank's, for an exact resume
    if run is not None:
        ckpt = checkpoint.make_checkpoint(
            model=state.model,
            optimizer=state.optimizer,
            scheduler=state.scheduler,
            scaler=state.scaler,
            step=step,
            epoch=epoch,
            config=cfg.to_dict(),
            dataset_version=source.version,
            rng=rng,
            dataset_name=opened_name(cfg.dataset),
        )
        checkpoint.save_checkpoint(ckpt, run.output, names=(checkpoint.epoch_name(epoch), checkpoint.LAST))
        for gone in checkpoint.prune_epochs(run.output, epoch, cfg.keep_epochs):
            log.info("removed %s (--keep-epochs %d)", gone, cfg.keep_epochs)


def save_step(
    state: RunState, cfg: TrainConfig, source, run: RunFolder | None, epoch: int, step: int, position: dict
) -> None:
    """Write a step checkpoint (last.pt only) from rank 0: the state after `position["epoch_step"]`
    batches of `epoch`, which a resumed run (--resume, or a restarted Ray Train group) goes on from."""
    rng = distributed.all_gather_object(checkpoint.rng_state())
    if run is not None:
        ckpt = checkpoint.make_checkpoint(
            model=state.model,
            optimizer=state.optimizer,
            scheduler=state.scheduler,
            scaler=state.scaler,
            step=step,
            epoch=epoch - 1,
            config=cfg.to_dict(),
            dataset_version=source.version,
            rng=rng,
            dataset_name=opened_name(cfg.dataset),
            position=position,
        )
        checkpoint.save_checkpoint(ckpt, run.output, names=(checkpoint.LAST,))


Report = Callable[[dict, "str | None"], None]  # (metrics, checkpoint file saved or None), on every rank


@dataclass
class EpochLoop:
    """The checkpoints of a training loop: where each epoch starts, step checkpoints every
    cfg.checkpoint_every_steps, epoch checkpoints; `report` (the Ray Train adapter) hears of each."""

    state: RunState
    cfg: TrainConfig
    info: DistInfo
    source: object
    run: RunFolder | None
    steps: int
    report: Report | None = None

    def start(self, loader, epoch: int) -> int:
        """Set `loader` to `epoch`; returns the batches of it already trained (0 unless resumed inside it)."""
        done = self.state.start_batch if epoch == self.state.start_epoch else 0
        loader.set_epoch(epoch, done)
        if done:
            rng = checkpoint.rng_state()  # as restored from the step checkpoint
            loader.after_iter = lambda: checkpoint.set_rng_state(rng)
        return done

    def after_step(self, epoch: int) -> Callable[[int, int], None] | None:
        """The step hook of `epoch` (None without step checkpoints)."""
        every = self.cfg.checkpoint_every_steps
        if not every:
            return None

        def hook(step: int, done: int) -> None:
            if done % every == 0 and done < self.steps:  # the epoch's end writes its own checkpoint
                position = {"epoch_step": done, **loader_geometry(self.cfg, self.info, self.steps)}
                save_step(self.state, self.cfg, self.source, self.run, epoch, step, position)
                if self.report is not None:
                    self.report(self.where(epoch, step, done), checkpoint_name(self.info))

        return hook

    def end(self, epoch: int, step: int, stats: dict) -> None:
        """Write the epoch's checkpoint (epoch_NNN.pt and last.pt)."""
        save_epoch(self.state, self.cfg, self.source, self.run, epoch, step, stats)

    def reported(self, epoch: int, step: int, stats: dict) -> None:
        """Report the epoch's checkpoint, once its metrics and logs are written and synced."""
        if self.report is not None:
            self.report({**self.where(epoch, step, 0), **stats}, checkpoint_name(self.info))

    def where(self, epoch: int, step: int, epoch_step: int) -> dict:
        """What a report says of its checkpoint: its place in the run, and the group that trained it
        (an elastic Ray Train group changes size between restarts)."""
        return {"epoch": epoch, "step": step, "epoch_step": epoch_step, "world_size": self.info.world_size}


def checkpoint_name(info: DistInfo) -> str | None:
    """The file rank 0 just wrote (None on the other ranks, which write nothing)."""
    return checkpoint.LAST if info.is_main else None


def _writer(out: Path):
    return SummaryWriter(log_dir=str(out / "tb"))


def _headline(results: dict) -> dict:
    keys = ("clip_top1", "video_top1", "video_top5", "mean_class_accuracy", "frame_map", "video_map")
    return {name: ({k: r[k] for k in keys if k in r} if r else None) for name, r in results.items()}


def write_results(
    results: dict, path: Path, class_names: list[str], writer=None, step: int = 0, extra: dict | None = None
) -> Path:
    """Metrics JSON ({"rgb", "flow", "fused"} + extra) and the fused confusion-matrix PNG beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, dump_json({**results, **(extra or {})}))
    png = path.with_name(f"{path.stem}_confusion.png")
    metrics.plot_confusion(results["fused"]["confusion"], class_names, png, title=f"fused, {path.stem}")
    if writer is not None:
        for name, r in results.items():
            for key in ("clip_top1", "video_top1", "video_top5", "mean_class_accuracy"):
                if r is not None and not math.isnan(r[key]):
                    writer.add_scalar(f"eval/{name}/{key}", r[key], step)
    log.info("evaluation: %s", json.dumps(_headline(results)))
    return path


def run_evaluation(cfg: TrainConfig, ckpt: dict, source, split: str, data_cfg, device: str, evaluate):
    """evaluate(model, loader, device, amp dtype, is rank 0) with the checkpoint's model rebuilt on
    `device` (this rank's under torchrun) and a loader of the split."""
    info = distributed.init_distributed(device)
    try:
        dev = torch.device(info.device)
        # The checkpoint's weights replace any initial ones.
        model = build_model(dataclasses.replace(cfg.model, weights=None, flow_weights=None))
        model.load_state_dict(ckpt["model"])
        model.to(dev)
        loader = data.make_loader(source, split, data_cfg, train=False, pin_memory=dev.type == "cuda")
        return evaluate(model, loader, dev, amp_dtype(dataclasses.replace(cfg, device=info.device)), info.is_main)
    finally:
        distributed.cleanup()


def evaluation_provenance(ckpt_path: str, ckpt: dict, dataset: str, source, split: str, protocol: dict) -> dict:
    """What an evaluation report says it evaluated: the checkpoint, the dataset version and the protocol."""
    if source.version != ckpt["dataset_version"]:
        log.info(
            "evaluating on dataset version %s; the model was trained on %s", source.version, ckpt["dataset_version"]
        )
    return {
        "checkpoint": {
            "path": str(ckpt_path),
            "step": ckpt["step"],
            "epoch": ckpt["epoch"],
            "dataset_version": ckpt["dataset_version"],
        },
        "dataset": {"path": str(dataset), "kind": source.kind, "version": source.version, "split": split},
        "protocol": protocol,
    }
