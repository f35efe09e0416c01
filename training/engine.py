"""The training loop as plain functions: train_one_epoch and evaluate.

Both take everything they use as arguments (torchvision references style); the caller
(jobs/train.py) owns setup, DDP wrapping, checkpoints and the epoch loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import cast

import numpy as np
import torch
from tqdm import tqdm

from training import distributed, metrics
from training.checkpoint import unwrap
from training.models import ModelConfig, VideoClassifier

log = logging.getLogger(__name__)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision on `device` (bf16 on GPU needs no loss scaling), or a no-op."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def stream_inputs(batch: dict, streams: tuple[str, ...], device: torch.device) -> dict[str, torch.Tensor]:
    """The stream tensors of a batch on `device` (non-blocking from pinned memory)."""
    return {s: batch[s].to(device, non_blocking=True) for s in streams}


def train_one_epoch(
    model,
    criterion,
    optimizer,
    scheduler,
    loader,
    device: torch.device,
    epoch: int,
    *,
    model_cfg: ModelConfig,
    steps: int,
    step: int,
    scaler=None,
    amp_dtype=None,
    clip_grad: float = 0.0,
    writer=None,
    log_every: int = 10,
    progress: bool = True,
    start: int = 0,
    after_step: Callable[[int, int], None] | None = None,
) -> tuple[int, dict]:
    """Train for exactly `steps` batches; returns (global step after the epoch, epoch stats).

    The fixed step count is what keeps DDP ranks in lockstep: every rank runs the same
    number of forward/backward passes whatever its shards hold. `start`: batches of this
    epoch already trained (a run resumed from a step checkpoint; the loader skips them too),
    so `steps - start` are run and the stats cover those. `after_step(step, batches of the
    epoch done)` runs on every rank after each step (step checkpoints).
    """
    model.train()
    net = cast(VideoClassifier, unwrap(model))  # the loop trains the classifier families
    totals = {"loss": 0.0, "samples": 0}
    correct: dict[str, torch.Tensor] = {}  # on device: no sync per step
    began = time.perf_counter()
    for done, (bar, batch) in enumerate(epoch_batches(loader, steps - start, epoch, progress), start + 1):
        labels = batch["label"].to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(stream_inputs(batch, model_cfg.stream_names, device))
        loss = net.training_loss(logits, labels, criterion)  # the model's objective (base: criterion per output)
        value = optimize(loss, model, optimizer, scheduler, scaler, clip_grad, step)
        step += 1
        totals["loss"] += value * len(labels)
        totals["samples"] += len(labels)
        with torch.no_grad():
            for name, s in net.scores({k: v.detach() for k, v in logits.items()}).items():
                correct[name] = correct.get(name, 0) + (s.argmax(1) == labels).sum()
        log_step(bar, writer, value, optimizer, step, log_every)
        if after_step is not None:
            after_step(step, done)
    totals.update({f"top1_{name}": float(c) for name, c in correct.items()})
    stats = _epoch_stats(totals, time.perf_counter() - began, device)
    write_epoch(writer, stats, step)
    return step, stats


def epoch_batches(loader, steps: int, epoch: int, progress: bool) -> Iterator[tuple[tqdm, dict]]:
    """Exactly `steps` batches of `loader`, with the progress bar; RuntimeError if it runs dry."""
    batches = iter(loader)
    bar = tqdm(range(steps), desc=f"epoch {epoch}", disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for i in bar:
            try:
                batch = next(batches)
            except StopIteration:
                raise RuntimeError(f"the training loader ran dry after {i} of {steps} batches") from None
            yield bar, batch
    finally:
        bar.close()


def optimize(loss, model, optimizer, scheduler, scaler, clip_grad: float, step: int) -> float:
    """One optimizer step on `loss`; returns its value (the one host sync per step)."""
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value} at step {step}")
    optimizer.zero_grad(set_to_none=True)
    backward_step(loss, model, optimizer, scaler, clip_grad)
    scheduler.step()
    return value


def log_step(bar, writer, value: float, optimizer, step: int, log_every: int) -> None:
    """The step's loss on the progress bar, and loss and learning rate in TensorBoard every log_every steps."""
    if not bar.disable:
        bar.set_postfix(loss=f"{value:.3f}")
    if writer is not None and step % log_every == 0:
        writer.add_scalar("train/loss", value, step)
        writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)


def write_epoch(writer, stats: dict, step: int) -> None:
    """An epoch's stats in TensorBoard."""
    if writer is not None:
        for key, value in stats.items():
            writer.add_scalar(f"train_epoch/{key}", value, step)


def backward_step(loss, model, optimizer, scaler, clip_grad: float) -> None:
    """Backward pass and optimizer step, with loss scaling (fp16) and gradient-norm clipping."""
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        if clip_grad:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
        return
    loss.backward()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()


def _epoch_stats(totals: dict, seconds: float, device: torch.device) -> dict:
    """Mean loss and top-1 per output over the epoch, averaged across ranks."""
    n = max(1, totals["samples"])
    stats = {"loss": totals["loss"] / n, "clips_per_s": totals["samples"] / max(seconds, 1e-9)}
    for key in [k for k in totals if k.startswith("top1_")]:
        stats[key] = totals[key] / n
    return {k: distributed.all_reduce_mean(v, str(device)) for k, v in stats.items()}


@torch.no_grad()
def evaluate(
    model, loader, device: torch.device, *, model_cfg: ModelConfig, amp_dtype=None, progress: bool = True
) -> dict:
    """Scores of every test clip (views averaged), gathered from all ranks, then metrics.

    Returns {"rgb", "flow", "fused"} -> metrics.summarize (None for an absent stream).
    Uses the unwrapped model: ranks hold different numbers of clips, and DDP's forward
    would wait for the others.
    """
    net = cast(VideoClassifier, unwrap(model))  # evaluated through its own `scores`
    net.eval()
    scores: dict[str, list[np.ndarray]] = {}
    labels: list[np.ndarray] = []
    videos: list[str] = []
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False, dynamic_ncols=True):
        with autocast(device, amp_dtype):
            logits = net(stream_inputs(batch, model_cfg.stream_names, device))
        for name, s in net.scores(logits).items():
            scores.setdefault(name, []).append(s.float().cpu().numpy())
        labels.append(batch["label"].numpy())
        videos.extend(batch["video_id"])
    local = (
        {k: np.concatenate(v) for k, v in scores.items()},
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        videos,
    )
    # Ranks are our own processes; all_gather_object pickles only what this function built.
    gathered = distributed.all_gather_object(local)
    names = sorted({k for part in gathered for k in part[0]})
    all_scores = {k: np.concatenate([p[0][k] for p in gathered if k in p[0]]) for k in names}
    all_labels = np.concatenate([p[1] for p in gathered])
    all_videos = [v for p in gathered for v in p[2]]
    if len(all_labels) == 0:
        raise ValueError("evaluation saw no clips: the split is empty or every sample was skipped")
    return metrics.summarize_outputs(all_scores, all_labels, all_videos, model_cfg.num_classes)
