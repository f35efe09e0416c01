"""Streaming training data: one WebDataset pipeline from shard files to batches.

    shard list -> split by node -> split by worker -> open + hash -> tar samples
      -> pick clips (pipeline.snippets; keeps only the chosen members' bytes) -> shuffle buffer
      -> decode the chosen frames and flow fields -> transforms -> batches

The pipeline is the list in `build_pipeline`; each stage is a small iterator function.

Sources. A dataset folder (a built video dataset, kind "videos", or derived clip shards,
kind "clips"), local or on object storage (s3://bucket/prefix), optionally with "@VERSION",
pins its exact shards and their sha256 in shards.parquet; a list of shard URLs is read as
given, without hashes. Remote shards are streamed through fsspec file objects
(`pipeline.storage.open_read`: sequential range requests, retried), never a shell pipe. Each sample says what it is in its json: "clip"
samples (the fast path: one RGB frame and one stacked member of L flow fields) or "video"
samples (every frame and field of a video, dense or built with --clips; clips are sampled
here, which TSN's segments need).

Hashes. Each shard's bytes are hashed as they stream through (no second read); when a
shard ends its hash is compared with the manifest and a mismatch raises ShardHashError
naming the shard. The last sample of a shard is held back until its hash is checked.
verify="open" hashes a local file before streaming it instead, so not one sample of a
corrupt shard is used, at the cost of reading it twice; verify="off" skips the check.

Safety. Members are decoded only by flowshard's own decoders (json through
encode.load_meta, RGB through encode.decode_rgb, flow fields as their stored (2H, W)
planes by `encode.decode_flow_plane`, FlowStack through encode.unpack_stack); any other member is
dropped undecoded, nothing is unpickled.

Epochs and DDP. Training on a manifest reads one endless sequence of samples: cycles,
each every sample of every shard in a seeded shard order. Every stream (a rank's loader
worker) uses, per epoch, one block of it: stream g of G takes block epoch * G + g, of
ceil(steps / workers) batches (EpochBlocks). So the streams of an epoch read adjacent,
disjoint blocks and, over epochs, walk the whole sequence: every sample is used once per
cycle, shard tails as often as heads (bench/loader_visits.py), and every rank runs the same
number of steps, so DDP never waits for a rank that has finished (uneven shards cannot
hang it). A block that starts inside a shard reads the samples before it without using
them, so each shard a stream reads to its end is hashed whole. The shuffle buffer empties
at each block's end. A bare URL list (no sample counts) draws shards with replacement
instead. Evaluation reads each shard once, split across ranks and workers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tarfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import webdataset as wds

from pipeline import encode, storage
from pipeline.build.manifest import DATASET_JSON, SHARD_DIR, SHARDS, read_info, read_rows
from pipeline.shard import sha256_file
from pipeline.storage import Location
from pipeline import snippets as snip  # `snippets` is also a DataConfig field
from pipeline.snippets import Clip, ClipSpec, SnippetShape
from training import streams as stream_spec
from training.detection import data as detection
from training.mean_flow import subtract_mean_flow
from training.transforms import FieldPlanes, TransformConfig, eval_views, train_views
from training import gpu_decode

log = logging.getLogger(__name__)

VERIFY_MODES = ("stream", "open", "off")
TASKS = ("classify", "detect")  # detect: frames with their boxes (training.detection.data)

# The members flowshard decodes and the functions that decode them; nothing else is decoded.
DECODERS = {"rgb": encode.decode_rgb, "flow": encode.decode_flow_plane, "warped": encode.decode_flow_plane}


class ShardHashError(ValueError):
    """A shard's bytes do not match the sha256 its dataset's manifest pins."""


class SampleError(ValueError):
    """A sample could not be read; the message names its shard and key."""


# --- sources ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardSpec:
    """One shard to read: where it is and, from a manifest, its split, size and hash."""

    name: str
    url: str
    split: str = ""
    samples: int = 0
    sha256: str | None = None


@dataclass(frozen=True)
class DataSource:
    """The shards of a dataset folder (or URL list) and what training needs to know of it."""

    kind: str
    label_map: dict[str, int]
    shards: tuple[ShardSpec, ...]
    root: Location | None = None
    version: str = ""
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.label_map)

    @property
    def class_names(self) -> list[str]:
        return [name for name, _ in sorted(self.label_map.items(), key=lambda kv: kv[1])]

    def splits(self) -> list[str]:
        return sorted({s.split for s in self.shards})

    def split_shards(self, split: str) -> list[ShardSpec]:
        shards = [s for s in self.shards if s.split == split or self.kind == "urls"]
        if not shards:
            raise ValueError(f"no shards of split {split!r} in {self.root or 'the URL list'}; "
                             f"splits present: {self.splits()}")
        return shards

    def num_samples(self, split: str) -> int:
        return sum(s.samples for s in self.split_shards(split))

    def num_videos(self, split: str) -> int:
        """Videos of a split: the counts dataset.json records, else its samples."""
        counts = self.info.get("counts") or {}
        by_split = counts.get("videos") if self.kind == "clips" else counts.get("splits")
        if isinstance(by_split, dict) and split in by_split:
            return int(by_split[split])
        return self.num_samples(split)


def open_source(spec: str | Path) -> DataSource:
    """A dataset folder: its kind, labels, version and the shards its manifest pins.

    "OUTPUT@VERSION" picks a version (pipeline.dataset.resolve_dataset); the version's own
    folder (pipeline.build.versions.version_dir) holds its dataset.json and manifests, and the
    shard files are in OUTPUT/shards/. Clip-shard folders (kind "clips") hold one version.
    """
    from pipeline.dataset import Dataset, resolve_dataset
    from pipeline.build.versions import version_dir

    root, vid = resolve_dataset(spec)
    folder = version_dir(root, vid) if vid else root
    info = read_info(folder)
    if info.get("kind") == "clips":
        rows = read_rows(storage.join(folder, SHARDS))
        shards = tuple(ShardSpec(name=r["name"], url=str(storage.join(root, SHARD_DIR, r["name"])), split=r["split"],
                                 samples=int(r["samples"]), sha256=r["sha256"]) for r in rows)
        return DataSource(kind="clips", label_map=dict(info["label_map"]), shards=shards, root=root,
                          version=_dataset_version(folder), info=info)
    ds = Dataset(root, vid or None)
    if ds.info.get("kind", "videos") != "videos":
        raise ValueError(f"{spec}: dataset kind {ds.info.get('kind')!r} is neither 'videos' nor 'clips'")
    shards = tuple(ShardSpec(name=s.name, url=str(s.path), split=s.split, samples=int(s.samples), sha256=s.sha256)
                   for s in ds.shards())
    return DataSource(kind="videos", label_map=dict(ds.label_map), shards=shards, root=ds.root,
                      version=_dataset_version(ds.folder), info=ds.info)


def _dataset_version(folder: Location) -> str:
    """training.checkpoint.dataset_version, for a local or remote folder: the dataset.json
    "version", else the sha256 of dataset.json."""
    data = storage.read_bytes(storage.join(folder, DATASET_JSON))
    version = json.loads(data).get("version")
    return str(version) if version else hashlib.sha256(data).hexdigest()


def url_source(urls: Iterable[str], *, label_map: dict[str, int]) -> DataSource:
    """Shards given as URLs or paths (brace patterns expanded); no hashes to check."""
    expanded = [u for pattern in urls for u in wds.shardlists.expand_urls(pattern)]
    if not expanded:
        raise ValueError("the URL list is empty")
    shards = tuple(ShardSpec(name=u.rsplit("/", 1)[-1], url=u) for u in expanded)
    return DataSource(kind="urls", label_map=dict(label_map), shards=shards)


# --- config -------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """What the loader reads and how it samples, augments and batches.

    An item is a clip of K snippets (pipeline.snippets): K = 1 (simonyan), `segments`
    (tsn) or `snippets` (strided, `strides` apart); each snippet holds `rgb_frames` RGB
    frames `frame_stride` apart and `clip_len` flow fields.
    """

    streams: str = "both"
    clip_len: int = snip.DEFAULT_CLIP_LEN
    rgb_frames: int = 1
    frame_stride: int = 1
    sampler: str = "simonyan"
    segments: int = snip.DEFAULT_SEGMENTS
    snippets: int = 1
    strides: tuple[int, ...] = (1,)
    test_clips: int = snip.DEFAULT_TEST_CLIPS
    ordered: bool = False  # tsn: the model reads the K snippets as one ordered clip (ClipSpec.ordered)
    flow_mean_subtract: bool = False  # Simonyan & Zisserman: each field of a flow/warped input loses its mean
    transform: TransformConfig = TransformConfig()
    batch_size: int = 32
    workers: int = 4
    shuffle_buffer: int = 500
    seed: int = 0
    verify: str = "stream"
    gpu_decode: bool = False  # decode JPEGs and augment on the training device (training.gpu_decode)
    task: str = "classify"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {TASKS}")
        if self.task == "detect" and self.gpu_decode:
            raise ValueError("--gpu-decode serves classification; detection decodes on the CPU loader")
        stream_spec.stream_names(self.streams)  # ValueError naming a bad setting
        if stream_spec.uses_fields(self.streams) and self.clip_len < 1:
            raise ValueError(f"the flow stream needs clip_len >= 1, got {self.clip_len}")
        self.shape  # validates rgb_frames and frame_stride
        self.clip_spec  # validates the sampler and its counts
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"unknown verify mode {self.verify!r}; choose one of {VERIFY_MODES}")

    @property
    def uses_rgb(self) -> bool:
        return "rgb" in stream_spec.stream_names(self.streams)

    @property
    def uses_flow(self) -> bool:
        return "flow" in stream_spec.stream_names(self.streams)

    @property
    def uses_warped(self) -> bool:
        return "warped" in stream_spec.stream_names(self.streams)

    @property
    def shape(self) -> SnippetShape:
        """One snippet: L fields when a flow or warped stream is read (0 otherwise) and F frames."""
        return SnippetShape(clip_len=self.clip_len if stream_spec.uses_fields(self.streams) else 0,
                            rgb_frames=self.rgb_frames, frame_stride=self.frame_stride)

    @property
    def clip_spec(self) -> ClipSpec:
        return ClipSpec(sampler=self.sampler, segments=self.segments, snippets=self.snippets,
                        strides=tuple(self.strides), test_clips=self.test_clips, ordered=self.ordered)


class EpochState:
    """The epoch the seeded stages use; set it before each epoch's iter(loader).

    Loader workers are started afresh for every epoch (no persistent workers), so each
    gets a copy of the pipeline holding the epoch set just before.
    """

    def __init__(self) -> None:
        self.epoch = 0


def _worker_info() -> tuple[int, int, int, int]:
    """(rank, world size, loader worker, workers) as webdataset's splitters see them."""
    return wds.utils.pytorch_worker_info()


# --- stages: shard list, open, tar ----------------------------------------------------------

class ShardList:
    """First stage: the shards of one epoch as {"url", "name", "sha256"} dicts.

    resample=True: an endless draw with replacement (training; every rank and worker
    generates the same sequence and the splitters take disjoint slices of it).
    resample=False: each shard once, in manifest order or shuffled (evaluation).
    """

    def __init__(self, shards: list[ShardSpec], *, resample: bool, shuffle: bool, seed: int, state: EpochState):
        if not shards:
            raise ValueError("no shards to read")
        self.shards, self.resample, self.shuffle, self.seed, self.state = shards, resample, shuffle, seed, state

    def __call__(self) -> Iterator[dict]:
        rng = random.Random(f"shards/{self.seed}/{self.state.epoch}")
        if self.resample:
            while True:
                yield _shard_dict(rng.choice(self.shards))
        order = list(self.shards)
        if self.shuffle:
            rng.shuffle(order)
        for spec in order:
            yield _shard_dict(spec)


def _shard_dict(spec: ShardSpec, skip: int = 0, block_end: int = 0) -> dict:
    return {"url": spec.url, "name": spec.name, "sha256": spec.sha256, "skip": skip, "block_end": block_end}


def cycle_order(shards: list[ShardSpec], seed: int, cycle: int) -> list[ShardSpec]:
    """Cycle `cycle`'s shard order: a seeded permutation of every shard."""
    order = list(shards)
    random.Random(f"cycle/{seed}/{cycle}").shuffle(order)
    return order


def block_reads(shards: list[ShardSpec], seed: int, block: int, index: int) -> Iterator[tuple[ShardSpec, int]]:
    """(shard, samples to skip in it) from the start of block `index`, endlessly.

    The training sequence is one endless concatenation of cycles, each cycle every sample
    of every shard in a seeded shard order. Block i is samples [i * block, (i + 1) * block)
    of it; stream g of G (a rank's loader worker) reads block epoch * G + g in each epoch.
    So the streams of an epoch read adjacent, disjoint blocks, and over epochs they walk
    the sequence end to end: every sample is read once per cycle, shard tails as often as
    heads, whatever the number of ranks, workers or shards.
    """
    total = sum(s.samples for s in shards)
    if total < 1:
        raise ValueError("the shards hold no samples: cannot draw training blocks")
    cycle, pos = divmod(index * block, total)
    while True:
        for spec in cycle_order(shards, seed, cycle):
            if pos >= spec.samples:
                pos -= spec.samples
                continue
            yield spec, pos
            pos = 0
        cycle += 1


class EpochBlocks:
    """First stage of training on a manifest: this stream's block of the sample sequence.

    Yields shard dicts {"url", "name", "sha256", "skip", "block_end"}: read `skip` samples
    without using them (they are still hashed), then use samples until the block's last,
    which `block_end` (a 1-based count within this shard, 0: not in this shard) marks so
    the shuffle buffer can flush at the block boundary; reading goes on past it, so a
    stream never runs dry when samples are skipped.
    """

    def __init__(self, shards: list[ShardSpec], *, block: int, seed: int, state: EpochState):
        if not shards:
            raise ValueError("no shards to read")
        if block < 1:
            raise ValueError(f"a training block needs >= 1 sample, got {block}")
        self.shards, self.block, self.seed, self.state = shards, block, seed, state

    def __call__(self) -> Iterator[dict]:
        rank, world, worker, workers = _worker_info()
        streams, stream = world * workers, rank * workers + worker
        left = self.block
        for spec, skip in block_reads(self.shards, self.seed, self.block, self.state.epoch * streams + stream):
            n = spec.samples - skip
            end = left if 0 < left <= n else 0
            left -= n
            yield _shard_dict(spec, skip, end)


class HashingReader:
    """A read-only stream that hashes and counts the bytes passing through it."""

    def __init__(self, raw, name: str, expected: str | None):
        self.raw, self.name, self.expected = raw, name, expected
        self.hash = hashlib.sha256()
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hash.update(data)
        self.bytes_read += len(data)
        return data

    def finish(self) -> None:
        """Drain what the tar reader left (end-of-archive padding), close, compare hashes."""
        while self.read(1 << 16):
            pass
        self.raw.close()
        check_hash(self.name, self.hash.hexdigest(), self.expected)

    def close(self) -> None:
        self.raw.close()

    def __repr__(self) -> str:
        return f"<shard {self.name}>"


def check_hash(name: str, actual: str, expected: str | None) -> None:
    """Raise ShardHashError naming the shard when a pinned hash does not match."""
    if expected and actual != expected:
        raise ShardHashError(f"shard {name}: sha256 {actual} does not match the manifest's {expected}: "
                             "the file is corrupt or was changed after the dataset was built")


def _open_url(url: str):
    if storage.is_remote(url):
        return storage.open_read(url)  # fsspec: range requests with retries, no subprocess
    if "://" not in url and not url.startswith("pipe:"):
        return open(url, "rb", buffering=1 << 20)
    return wds.gopen.gopen(url)


def open_shards(src: Iterable[dict], verify: str) -> Iterator[dict]:
    """Open each shard as a HashingReader; verify="open" hashes a local or remote file first."""
    for shard in src:
        expected = shard["sha256"] if verify != "off" else None
        url = shard["url"]
        if verify == "open" and expected and (storage.is_remote(url) or os.path.isfile(url)):
            check_hash(shard["name"], sha256_file(url), expected)
            expected = None  # checked already; do not hash it again while streaming
        try:
            raw = _open_url(url)
        except OSError as exc:
            raise SampleError(f"shard {shard['name']}: cannot open {url} ({exc})") from exc
        yield {**shard, "stream": HashingReader(raw, shard["name"], expected)}


def tar_samples(src: Iterable[dict]) -> Iterator[dict]:
    """Tar members grouped into samples {"__key__", "__url__", "__shard__", ext: bytes}.

    A sample's members are contiguous; the last sample of a shard is yielded only after
    the shard's hash is checked. The first `skip` samples of a shard are read (and hashed)
    but not yielded; the `block_end`-th yielded sample carries "__block_end__".
    """
    for shard in src:
        stream: HashingReader = shard["stream"]
        current = None
        count = 0  # samples of this shard so far
        skip, end = shard.get("skip", 0), shard.get("block_end", 0)
        try:
            for member in wds.tariterators.tar_file_iterator(stream):
                key, ext = _split_name(member["fname"])
                if key is None:
                    continue
                if current is None or current["__key__"] != key:
                    if current is not None and count > skip:
                        yield current
                    count += 1
                    current = {"__key__": key, "__url__": shard["url"], "__shard__": shard["name"]}
                    if count == skip + end and end:
                        current["__block_end__"] = True
                current[ext] = member["data"]
            stream.finish()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise SampleError(f"shard {shard['name']}: cannot read it as a tar ({exc})") from exc
        finally:
            stream.close()  # also when the consumer stops early
        if current is not None and count > skip:
            yield current


def _split_name(fname: str) -> tuple[str | None, str]:
    """Member path -> (sample key, extension), splitting at the first dot of the base name."""
    base = fname.rsplit("/", 1)[-1]
    key, dot, ext = base.partition(".")
    return (key, ext) if dot and key else (None, "")


# --- stages: pick, shuffle, decode, transform, batch ---------------------------------------

@dataclass(frozen=True)
class PickPlan:
    """What the pick stage needs: streams, clip length, sampler and whether it trains."""

    cfg: DataConfig
    train: bool


def _where(sample: dict) -> str:
    return f"shard {sample.get('__shard__', '?')} sample {sample.get('__key__', '?')}"


def pick_items(sample: dict, plan: PickPlan, epoch: int) -> list[dict]:
    """The items a sample gives (its chosen clips), holding only the chosen members' bytes."""
    meta = encode.load_meta(sample[encode.META], _where(sample))
    if plan.cfg.task == "detect":
        return detection.pick_items(sample, meta, plan.cfg, plan.train, epoch, _where(sample))
    kind = meta.get("kind")
    if kind == "clip":
        return [_clip_item(sample, meta, plan)]
    if kind == "video":
        return _video_items(sample, meta, plan, epoch)
    raise encode.SchemaError(f"{_where(sample)}: unknown sample kind {kind!r}")


def _item(sample: dict, meta: dict, clip: int) -> dict:
    return {"__key__": sample["__key__"], "__shard__": sample.get("__shard__", ""), "video_id": meta["video_id"],
            "label": int(meta["label_id"]), "clip": clip}


def _clip_item(sample: dict, meta: dict, plan: PickPlan) -> dict:
    """A clip sample is one item: its stored snippets (centred subsets when shorter ones are asked for)."""
    cfg = plan.cfg
    if plan.train and cfg.sampler == "tsn":
        raise ValueError(f"{_where(sample)}: tsn sampling needs video samples; a clip sample holds its stored snippets")
    item = _item(sample, meta, int(meta.get("clip_index", 0)))
    stored = _stored_snippets(meta)
    want = cfg.clip_spec.length
    if plan.train and len(stored) != want:
        raise ValueError(f"{_where(sample)}: the clip holds {len(stored)} snippet(s), the sampler asks for {want} "
                         f"(clip shards made with --snippets {len(stored)} train with --sampling "
                         f"{'strided' if len(stored) > 1 else 'simonyan'} --snippets {len(stored)})")
    clip = tuple(snip.Snippet(frames=snip.centred(s.frames, cfg.rgb_frames, "RGB frames"),
                              fields=snip.centred(s.fields, cfg.clip_len) if stream_spec.uses_fields(cfg.streams)
                              else ())
                 for s in stored)
    if cfg.uses_rgb:
        frames = ([sample[encode.RGB_CLIP]] if encode.RGB_CLIP in sample
                  else encode.unpack_stack(sample[encode.RGB_STACK]))
        item["rgb"] = [[frames[f] for f in s.frames] for s in clip]
    else:
        item["rgb"] = None
    for name, member, use in (("flow", encode.FLOW_STACK, cfg.uses_flow), ("warped", encode.WARPED_STACK,
                                                                          cfg.uses_warped)):
        if use and member not in sample:
            raise encode.SchemaError(f"{_where(sample)}: no {member} member (warped flow needs a dataset built "
                                     f"with --flow-warp)")
        fields = encode.unpack_stack(sample[member]) if use else None
        item[name] = [[fields[f] for f in s.fields] for s in clip] if use else None
    return item


def _stored_snippets(meta: dict) -> Clip:
    """The snippets a clip sample stores, as positions into its rgb and flow stacks.

    Schema 1 clips (one frame, one snippet) list no snippets: frame 0 and every field.
    """
    if "snippets" not in meta:
        return (snip.Snippet(frames=(0,), fields=tuple(range(len(meta["flow_fields"])))),)
    return tuple(snip.Snippet(frames=tuple(s["frames"]), fields=tuple(s["fields"])) for s in meta["snippets"])


def _video_items(sample: dict, meta: dict, plan: PickPlan, epoch: int) -> list[dict]:
    cfg = plan.cfg
    cands = snip.candidates(meta, cfg.shape)
    if len(cands) == 0:
        log.warning("%s: no %s, skipped", _where(sample), "flow fields" if cfg.uses_flow else "frames")
        return []
    if plan.train:
        rng = snip.sample_rng(cfg.seed, epoch, sample["__key__"])
        clips = [snip.train_clip(cands, cfg.clip_spec, rng)]
    else:
        clips = snip.eval_clips(cands, cfg.clip_spec)
    return [_with_members(_item(sample, meta, j), sample, clip, cfg) for j, clip in enumerate(clips)]


def _with_members(item: dict, sample: dict, clip: Clip, cfg: DataConfig) -> dict:
    try:
        item["rgb"] = ([[sample[encode.rgb_member(f)] for f in s.frames] for s in clip] if cfg.uses_rgb else None)
        item["flow"] = ([[sample[encode.flow_member(f)] for f in s.fields] for s in clip] if cfg.uses_flow else None)
        item["warped"] = ([[sample[encode.warped_member(f)] for f in s.fields] for s in clip]
                          if cfg.uses_warped else None)
    except KeyError as exc:
        raise encode.SchemaError(f"{_where(sample)}: member {exc} named by its metadata is missing"
                                 + (" (warped flow needs a dataset built with --flow-warp)" if "warped" in str(exc)
                                    else "")) from exc
    return item


def pick(src: Iterable[dict], plan: PickPlan, state: EpochState) -> Iterator[dict]:
    """Stage: sampling inside the loader; unchosen members are dropped here, undecoded."""
    for sample in src:
        try:
            items = pick_items(sample, plan, state.epoch)
        except (ValueError, KeyError) as exc:
            raise SampleError(f"{_where(sample)}: {exc}") from exc
        if items and sample.get("__block_end__"):
            items[-1]["__block_end__"] = True
        yield from items


def shuffle(src: Iterable[dict], bufsize: int, seed: int, state: EpochState) -> Iterator[dict]:
    """Stage: a shuffle buffer seeded per (seed, epoch, rank, worker), flushed at block ends.

    Every item of a stream's block (EpochBlocks) leaves the buffer before any item read
    after the block: the block's samples are what the epoch uses, each exactly once.
    """
    rank, _, worker, _ = _worker_info()
    rng = random.Random(f"shuffle/{seed}/{state.epoch}/{rank}/{worker}")
    buf: list[dict] = []
    for item in src:
        end = item.pop("__block_end__", False)
        buf.append(item)
        if end:
            rng.shuffle(buf)
            yield from buf
            buf.clear()
        elif len(buf) >= bufsize:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def decode_item(item: dict) -> dict:
    """Decode the chosen members: rgb -> (K, F, H, W, 3) uint8, flow (and warped) -> K (2L, H, W)
    FieldPlanes, interleaved.

    Snippets that overlap (strided clips a stride shorter than L apart, runs of frames) name
    the same member more than once; each is decoded once (the pick stage hands the same bytes
    object for the same member) and its planes shared, read-only.
    """
    decoded: dict[tuple[str, int], np.ndarray] = {}

    def once(kind: str, b: bytes) -> np.ndarray:
        key = (kind, id(b))
        if key not in decoded:
            decoded[key] = DECODERS[kind](b)
        return decoded[key]

    if item["rgb"] is not None:
        item["rgb"] = np.stack([np.stack([once("rgb", b) for b in frames]) for frames in item["rgb"]])
    for name in stream_spec.FIELD_STREAMS:
        if item.get(name) is not None:
            item[name] = [FieldPlanes([once(name, b) for b in fields]) for fields in item[name]]
    return item


def decode(src: Iterable[dict]) -> Iterator[dict]:
    """Stage: decode with flowshard's decoders only."""
    for item in src:
        try:
            yield decode_item(item)
        except ValueError as exc:
            raise SampleError(f"shard {item['__shard__']} sample {item['__key__']}: {exc}") from exc


def transform(src: Iterable[dict], cfg: DataConfig, train: bool, state: EpochState) -> Iterator[dict]:
    """Stage: paired crop/flip (train) or centre/10-crop (test), normalization, stacking;
    with flow_mean_subtract, each flow and warped field then loses its mean vector."""
    for item in src:
        if cfg.task == "detect":
            yield detection.transform_item(item, cfg, train, state.epoch)
            continue
        fields, names = joint_fields(item)
        if train:
            rng = snip.sample_rng(cfg.seed, state.epoch, f"{item['__key__']}/{item['clip']}/augment")
            item["rgb"], fields = train_views(item["rgb"], fields, cfg.transform, rng)
        else:
            item["rgb"], fields = eval_views(item["rgb"], fields, cfg.transform)
        for name, part in zip(names, np.split(fields, len(names), axis=2) if names else ()):
            item[name] = subtract_mean_flow(part) if cfg.flow_mean_subtract else part
        yield item


def joint_fields(item: dict) -> tuple[list | None, list[str]]:
    """The flow and warped stacks of each snippet as one stack (warped channels after flow's),
    so both get the same crop and flip (x stays on even channels), and the names in order."""
    names = [n for n in stream_spec.FIELD_STREAMS if item.get(n) is not None]
    if len(names) < 2:
        return (item[names[0]] if names else None), names
    return [FieldPlanes(f.planes + w.planes) for f, w in zip(item["flow"], item["warped"])], names


def collate(items: list[dict]) -> dict:
    """Items -> a batch: {"rgb": (B, V, K, 3F, S, S), "flow": (B, V, K, 2L, S, S), "label": (B,), ...}.

    V: views (crops), K: snippets in time order, F frames and L fields per snippet.
    """
    batch = {"label": torch.tensor([it["label"] for it in items], dtype=torch.long),
             "video_id": [it["video_id"] for it in items], "clip": [it["clip"] for it in items],
             "key": [it["__key__"] for it in items]}
    for name in stream_spec.STREAMS:
        if items[0].get(name) is not None:
            batch[name] = torch.from_numpy(np.stack([it[name] for it in items]))
    return batch


# --- the pipeline ---------------------------------------------------------------------------

def shard_stages(shards: list[ShardSpec], cfg: DataConfig, *, train: bool, state: EpochState,
                 block: int) -> list:
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
        log.warning("shards hold %.0f samples on average and each loader stream uses %d per epoch: about %.0f%% "
                    "more samples are read than used (a block starting inside a shard reads the samples before "
                    "it); smaller shards (flowshard clips --shard-samples) or fewer loader workers read less",
                    mean, block, 100 * mean / 2 / block)


def build_pipeline(shards: list[ShardSpec], cfg: DataConfig, *, train: bool, state: EpochState,
                   block: int = 0) -> wds.DataPipeline:
    """The one pipeline, from shard list to batches (see the module docstring).

    `block`: samples each stream (rank x loader worker) uses per training epoch.
    Stages are module functions bound with functools.partial (not lambdas), so the
    pipeline pickles for loader workers started with spawn or forkserver.
    """
    plan = PickPlan(cfg=cfg, train=train)
    stages = [
        # Shards: this rank's and worker's block of the sample sequence (training), or each shard once.
        *shard_stages(shards, cfg, train=train, state=state, block=block),
        # Open: the stream hashes its bytes as they are read (verify="open": hash the file first).
        partial(open_shards, verify=cfg.verify),
        # Tar -> samples: members grouped by key; the hash is checked when each shard ends.
        tar_samples,
        # Pick: choose clips (Simonyan, TSN segments, strided, test clips); drop other members.
        partial(pick, plan=plan, state=state),
        # Shuffle buffer over picked items (compressed bytes only, so the buffer stays small).
        partial(shuffle, bufsize=cfg.shuffle_buffer, seed=cfg.seed, state=state) if train else None,
        # Decode only the chosen frames and flow fields (--gpu-decode: later, on the device).
        None if cfg.gpu_decode else decode,
        # Transforms: paired crop and flip, normalization, interleaved flow stacking.
        None if cfg.gpu_decode else partial(transform, cfg=cfg, train=train, state=state),
        # Batches: training drops the last partial batch so every step has one shape.
        wds.batched(cfg.batch_size, collation_fn=_collation(cfg), partial=not train),
    ]
    return wds.DataPipeline([s for s in stages if s is not None])


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

    def set_epoch(self, epoch: int) -> None:
        self.state.epoch = int(epoch)

    def __iter__(self):
        batches = iter(self.loader)
        return gpu_decode.decode_batches(batches, self.post) if self.post else batches


def _init_worker(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # one loader process per core already; OpenCV threads would oversubscribe
    torch.set_num_threads(1)


def steps_per_epoch(source: DataSource, split: str, cfg: DataConfig, world_size: int, *,
                    per: str = "samples") -> int:
    """Optimizer steps per epoch, shared by all ranks: one pass over the split's samples
    (per="samples"), or about one item per video (per="videos": on clip shards of N clips
    per video, successive epochs walk through the stored clips, a different one per video
    each epoch on average: per-epoch temporal jitter from stored offsets)."""
    count = source.num_videos(split) if per == "videos" else source.num_samples(split)
    return max(1, count // (cfg.batch_size * world_size))


def make_loader(source: DataSource, split: str, cfg: DataConfig, *, train: bool, steps: int | None = None,
                pin_memory: bool = False, device: str | torch.device = "cpu") -> Loader:
    """The loader of one split. train=True needs `steps`, the batches each rank takes per epoch.

    With cfg.gpu_decode the batches are decoded and augmented on `device` in this process.
    """
    if train and source.kind == "clips" and cfg.sampler == "tsn":
        raise ValueError("tsn sampling needs video samples: train on the built dataset, not on clip shards")
    state = EpochState()
    if train and (steps is None or steps < 1):
        raise ValueError(f"a training loader needs steps >= 1, got {steps}")
    # Each worker yields its share; the training loop takes exactly `steps` batches.
    per_worker = math.ceil(steps / max(1, cfg.workers)) if train else 0
    pipeline = build_pipeline(source.split_shards(split), cfg, train=train, state=state,
                              block=per_worker * cfg.batch_size)
    if train:
        pipeline = pipeline.with_epoch(per_worker)
    loader = torch.utils.data.DataLoader(
        pipeline, batch_size=None, num_workers=cfg.workers, pin_memory=pin_memory,
        worker_init_fn=_init_worker if cfg.workers else None, persistent_workers=False,
        prefetch_factor=4 if cfg.workers else None)
    post = gpu_decode.GpuBatchDecoder(cfg, device, train=train, state=state) if cfg.gpu_decode else None
    return Loader(loader=loader, state=state, steps=steps if train else None, post=post)
