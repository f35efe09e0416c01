"""Per-sample integrity: each sample is checked against its manifest hash before it is used.

A shard's own sha256 (training.data.shards.HashingReader) is known only once a stream has
read the shard to its end, so a stream's last, partly read shard would go unchecked and
the samples before a mismatch would already be trained on. The manifests pin a hash per
sample too, so each sample is checked on arrival, in every rank and loader worker:

- clip shards (kind "clips"): each clip row's sha256 is pipeline.shard.sample_sha256 of
  the stored sample;
- built video datasets (kind "videos"): each video row's sha256 is the sha256 of its parts'
  sample hashes (hex, concatenated); a video stored whole (one part, key = video id) is
  therefore checked per sample. A video cut into several parts has no per-part hash in the
  manifest: its parts are covered by the shard hash only, and the loader says how many.

A mismatch raises CorruptSampleError naming shard and key (on_corrupt="error"), or is
skipped, logged and counted (on_corrupt="skip"); never silent.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pipeline import storage
from pipeline.build.manifest import MANIFEST, read_rows
from pipeline.shard import sample_sha256
from training.data.config import ON_CORRUPT
from training.data.shards import SampleError
from training.data.sources import DataSource

log = logging.getLogger(__name__)


class CorruptSampleError(SampleError):
    """A sample's bytes do not match the hash its dataset's manifest pins."""


@dataclass(frozen=True)
class SampleHashes:
    """Expected digests (32 raw bytes) by sample key, and how to compute a sample's.

    nested: the manifest holds sha256(hex of the sample hash) (a video row), not the sample
    hash itself (a clip row). unchecked: samples of the split without a per-sample hash.
    """

    digests: dict[str, bytes]
    nested: bool
    unchecked: int = 0

    def digest(self, sample: dict) -> bytes:
        """This sample's digest in the manifest's form."""
        inner = sample_sha256(sample)
        if self.nested:
            return hashlib.sha256(inner.encode()).digest()
        return bytes.fromhex(inner)


def load_sample_hashes(source: DataSource, split: str) -> SampleHashes | None:
    """The per-sample hashes of a split of `source`'s manifest (None for a URL list)."""
    if source.kind == "urls" or source.folder is None:
        return None
    path = storage.join(source.folder, MANIFEST)
    if not storage.isfile(path):
        log.warning("%s: no manifest, so no per-sample hashes: samples are checked by their shard's hash only", path)
        return None
    names = {s.name for s in source.split_shards(split)}
    rows = read_rows(path)
    if source.kind == "clips":
        return SampleHashes(
            digests={r["id"]: bytes.fromhex(r["sha256"]) for r in rows if r["shard"] in names and r["sha256"]},
            nested=False,
        )
    videos = [r for r in rows if r["split"] == split and r["status"] == "ok"]
    whole = {r["id"]: bytes.fromhex(r["sha256"]) for r in videos if r["parts"] == 1 and r["sha256"]}
    unchecked = sum(r["parts"] for r in videos if r["parts"] != 1 or not r["sha256"])
    if unchecked:
        log.warning(
            "%d sample(s) of split %r are parts of long videos without a per-sample hash in the manifest: "
            "they are checked by their shard's hash only",
            unchecked,
            split,
        )
    return SampleHashes(digests=whole, nested=True, unchecked=unchecked)


def check_samples(src: Iterable[dict], hashes: SampleHashes, on_corrupt: str) -> Iterator[dict]:
    """Stage: pass samples whose bytes match the manifest; a mismatch raises CorruptSampleError
    naming shard and key, or (on_corrupt="skip") is logged, counted and skipped.

    A skipped sample's block-end mark moves to the next sample, so the shuffle buffer still
    flushes at the block's end.
    """
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"unknown on_corrupt {on_corrupt!r}; choose one of {ON_CORRUPT}")
    skipped, carry_end = 0, False
    for sample in src:
        expected = hashes.digests.get(sample["__key__"])
        if expected is not None and hashes.digest(sample) != expected:
            message = (
                f"shard {sample.get('__shard__', '?')}: sample {sample['__key__']} does not match the "
                "manifest's sha256: the shard is corrupt or was changed after the dataset was built"
            )
            if on_corrupt == "error":
                raise CorruptSampleError(message)
            skipped += 1
            carry_end = carry_end or bool(sample.get("__block_end__"))
            log.warning("%s; skipped (%d corrupt sample(s) skipped by this stream)", message, skipped)
            continue
        if carry_end:
            sample["__block_end__"], carry_end = True, False
        yield sample
