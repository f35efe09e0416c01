"""Shard reading: the shard list of an epoch (EpochBlocks), opening with streaming sha256
(HashingReader) and tar samples.

Hashes. Each shard's bytes are hashed as they stream through (no second read); when a
shard ends its hash is compared with the manifest and a mismatch raises ShardHashError
naming the shard. The last sample of a shard is held back until its hash is checked.
verify="open" hashes a local file before streaming it instead, so not one sample of a
corrupt shard is used, at the cost of reading it twice; verify="off" skips the check.

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
import os
import random
import tarfile
from collections.abc import Iterable, Iterator

import webdataset as wds

from pipeline import storage
from pipeline.shard import sha256_file
from training.data.sources import ShardSpec


class ShardHashError(ValueError):
    """A shard's bytes do not match the sha256 its dataset's manifest pins."""


class SampleError(ValueError):
    """A sample could not be read; the message names its shard and key."""


class EpochState:
    """The epoch the seeded stages use; set it before each epoch's iter(loader).

    Loader workers are started afresh for every epoch (no persistent workers), so each
    gets a copy of the pipeline holding the epoch set just before. `done`: batches of the
    epoch a resumed run has already trained (a step checkpoint), see worker_info.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.done = 0


def worker_info(state: EpochState | None = None) -> tuple[int, int, int, int]:
    """(rank, world size, loader stream worker, workers) as webdataset's splitters see them.

    After `state.done` batches of an epoch, the DataLoader (which takes batch i from
    worker i % workers) would next take worker done % workers; a resumed loader starts at
    worker 0 again, so worker w plays stream (w + done) % workers: the batches then come in
    the order the uninterrupted run would have taken them.
    """
    rank, world, worker, workers = wds.utils.pytorch_worker_info()
    if state is not None and state.done:
        worker = (worker + state.done) % workers
    return rank, world, worker, workers


def batches_done(done: int, worker: int, workers: int) -> int:
    """Batches stream `worker` of `workers` gave in the first `done` batches of an epoch
    (the DataLoader takes batch i from worker i % workers)."""
    return max(0, (done - worker + workers - 1) // workers)


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
        rank, world, worker, workers = worker_info(self.state)
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
        raise ShardHashError(
            f"shard {name}: sha256 {actual} does not match the manifest's {expected}: "
            "the file is corrupt or was changed after the dataset was built"
        )


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
