"""The pipeline (`build_pipeline`: the shard stages then the sample stages, one visible
list) and the loader that runs it per rank and worker.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import webdataset as wds

from training import gpu_decode
from training.data.config import DataConfig
from training.data.integrity import SampleHashes, check_samples, load_sample_hashes
from training.data.shards import EpochBlocks, EpochState, ShardList, open_shards, tar_samples
from training.data.sources import DataSource, ShardSpec
from training.data.stages import PickPlan, collate, decode, pick, shuffle, skip_done, transform
from training.detection import data as detection

log = logging.getLogger(__name__)


def shard_stages(shards: list[ShardSpec], cfg: DataConfig, *, train: bool, state: EpochState, block: int) -> list:
    """The first stages: which shards (and samples of them) this rank and worker read.

    Training on a manifest (every shard's sample count known): this stream's block of the
    endless sample sequence (EpochBlocks). Training on a bare URL list: shards drawn with
    replacement, split by node and worker. Evaluation: each shard once, split likewise.
    """
    if train and block and all(s.samples > 0 for s in shards):
        _warn_large_shards(shards, block)
        return [EpochBlocks(shards, block=block, seed=cfg.seed, state=state)]
    return [
        ShardList(shards, resample=train, shuffle=train, seed=cfg.seed, state=state),
        # Split by node: each rank takes every world_size-th shard (explicit: the default refuses DDP).
        wds.split_by_node,
        # Split by worker: each loader process takes every num_workers-th of its rank's shards.
        wds.split_by_worker,
    ]


def _warn_large_shards(shards: list[ShardSpec], block: int) -> None:
    """A block that starts inside a shard reads (and hashes) the samples before it unused: on
    average half a shard per stream and epoch. Say so when that is a large part of a block."""
    mean = sum(s.samples for s in shards) / len(shards)
    if mean / 2 > 0.25 * block:
        log.warning(
            "shards hold %.0f samples on average and each loader stream uses %d per epoch: about %.0f%% "
            "more samples are read than used (a block starting inside a shard reads the samples before "
            "it); smaller shards (flowshard clips --shard-samples) or fewer loader workers read less",
            mean,
            block,
            100 * mean / 2 / block,
        )


def build_pipeline(
    shards: list[ShardSpec],
    cfg: DataConfig,
    *,
    train: bool,
    state: EpochState,
    block: int = 0,
    hashes: SampleHashes | None = None,
) -> wds.DataPipeline:
    """The one pipeline, from shard list to batches (see the module docstring).

    `block`: samples each stream (rank x loader worker) uses per training epoch.
    `hashes`: the manifest's per-sample hashes, checked before a sample is used.
    Stages are module functions bound with functools.partial (not lambdas), so the
    pipeline pickles for loader workers started with spawn or forkserver.
    """
    plan = PickPlan(cfg=cfg, train=train)
    stages = [
        # Shards: this rank's and worker's block of the sample sequence (training), or each shard once.
        *shard_stages(shards, cfg, train=train, state=state, block=block),
        # Open: the stream hashes its bytes as they are read (verify="open": hash the file first).
        partial(open_shards, verify=_shard_verify(cfg, hashes)),
        # Tar -> samples: members grouped by key; the hash is checked when each shard ends.
        tar_samples,
        # Check: each sample against its manifest hash, before it is used (cfg.on_corrupt: raise or skip).
        partial(check_samples, hashes=hashes, on_corrupt=cfg.on_corrupt) if hashes else None,
        # Pick: choose clips (Simonyan, TSN segments, strided, test clips); drop other members.
        partial(pick, plan=plan, state=state),
        # Shuffle buffer over picked items (compressed bytes only, so the buffer stays small).
        partial(shuffle, bufsize=cfg.shuffle_buffer, seed=cfg.seed, state=state) if train else None,
        # Resume: drop what this stream gave before a step checkpoint (state.done batches of the epoch).
        partial(skip_done, batch_size=cfg.batch_size, state=state) if train else None,
        # Decode only the chosen frames and flow fields (--gpu-decode: later, on the device).
        None if cfg.gpu_decode else decode,
        # Transforms: paired crop and flip, normalization, interleaved flow stacking.
        None if cfg.gpu_decode else partial(transform, cfg=cfg, train=train, state=state),
        # Batches: training drops the last partial batch so every step has one shape.
        wds.batched(cfg.batch_size, collation_fn=_collation(cfg), partial=not train),
    ]
    return wds.DataPipeline([s for s in stages if s is not None])


def _shard_verify(cfg: DataConfig, hashes: SampleHashes | None) -> str:
    """The shard-level check: as configured, except that skipping corrupt samples (--on-corrupt
    skip) with a per-sample hash for every sample leaves nothing for it to add (every sample
    used was checked) while its mismatch would stop the run the skip was asked to keep going."""
    if hashes is not None and cfg.on_corrupt == "skip" and not hashes.unchecked:
        return "off"
    return cfg.verify


def _collation(cfg: DataConfig):
    """How items become a batch: detection's lists, raw bytes for --gpu-decode, else stacked tensors."""
    if cfg.task == "detect":
        return detection.collate
    return gpu_decode.raw_collate if cfg.gpu_decode else collate


@dataclass
class Loader:
    """A DataLoader over the pipeline, the epoch it draws, and its steps per epoch (training)."""

    loader: torch.utils.data.DataLoader
    state: EpochState
    steps: int | None
    post: gpu_decode.GpuBatchDecoder | None = None  # --gpu-decode: bytes -> tensors on the device
    # Run once right after the next iterator is made. The DataLoader draws its base seed from
    # torch's global generator when an iterator starts: a run resumed inside an epoch restores
    # the generator after that draw, as the uninterrupted run had it (jobs.runs.EpochLoop).
    after_iter: Callable[[], None] | None = None

    def set_epoch(self, epoch: int, done: int = 0) -> None:
        """Draw epoch `epoch`, its first `done` batches already trained (a resumed step checkpoint)."""
        self.state.epoch, self.state.done = int(epoch), int(done)

    def __iter__(self):
        batches = iter(self.loader)
        if self.after_iter is not None:
            self.after_iter, then = None, self.after_iter
            then()
        return gpu_decode.decode_batches(batches, self.post) if self.post else batches


def block_samples(batches: int, cfg: DataConfig) -> int:
    """Samples a loader stream uses per epoch to give `batches` batches.

    A classification sample gives one item; a detection sample gives several frames
    (training.detection.data.items_per_sample), so its block is that many times smaller:
    sized in items, an epoch would read each video several times and the shuffle buffer
    would hand out the same frame twice. A stream whose samples give fewer items (short or
    unannotated videos) reads on past its block (EpochBlocks) rather than run dry.
    """
    per_sample = detection.items_per_sample(cfg) if cfg.task == "detect" else 1
    return math.ceil(batches * cfg.batch_size / per_sample)


def _init_worker(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # one loader process per core already; OpenCV threads would oversubscribe
    torch.set_num_threads(1)


def steps_per_epoch(source: DataSource, split: str, cfg: DataConfig, world_size: int, *, per: str = "samples") -> int:
    """Optimizer steps per epoch, shared by all ranks: one pass over the split's samples
    (per="samples"), or about one item per video (per="videos": on clip shards of N clips
    per video, successive epochs walk through the stored clips, a different one per video
    each epoch on average: per-epoch temporal jitter from stored offsets)."""
    count = source.num_videos(split) if per == "videos" else source.num_samples(split)
    return max(1, count // (cfg.batch_size * world_size))


def make_loader(
    source: DataSource,
    split: str,
    cfg: DataConfig,
    *,
    train: bool,
    steps: int | None = None,
    pin_memory: bool = False,
    device: str | torch.device = "cpu",
) -> Loader:
    """The loader of one split. train=True needs `steps`, the batches each rank takes per epoch.

    With cfg.gpu_decode the batches are decoded and augmented on `device` in this process.
    """
    if train and source.kind == "clips" and cfg.sampler == "tsn":
        raise ValueError("tsn sampling needs video samples: train on the built dataset, not on clip shards")
    state = EpochState()
    if train and (steps is None or steps < 1):
        raise ValueError(f"a training loader needs steps >= 1, got {steps}")
    # Each worker yields its share; the training loop takes exactly `steps` batches.
    per_worker = math.ceil(steps / max(1, cfg.workers)) if train and steps is not None else 0
    hashes = load_sample_hashes(source, split) if cfg.verify != "off" else None
    pipeline = build_pipeline(
        source.split_shards(split), cfg, train=train, state=state, block=block_samples(per_worker, cfg), hashes=hashes
    )
    if train:
        pipeline = pipeline.with_epoch(per_worker)
    loader = torch.utils.data.DataLoader(
        pipeline,
        batch_size=None,
        num_workers=cfg.workers,
        pin_memory=pin_memory,
        worker_init_fn=_init_worker if cfg.workers else None,
        persistent_workers=False,
        prefetch_factor=4 if cfg.workers else None,
    )
    post = gpu_decode.GpuBatchDecoder(cfg, device, train=train, state=state) if cfg.gpu_decode else None
    return Loader(loader=loader, state=state, steps=steps if train else None, post=post)
