"""Clip shards: training shards of clip samples, cut from a built dataset without new flow.

    flowshard clips DATASET OUT --clip-len 10 --per-video 5 [--sampling uniform|random] [--seed 0]

A clip sample is what a Simonyan/TSN training step reads: one RGB frame and the L flow
fields centred on it. A dense video sample holds hundreds of frames and fields of which
a step uses 11, so streaming video samples reads ~20x more bytes than it uses; clip shards
read about what they use. Clips are derived by copying stored member bytes: the RGB
frame's JPEG becomes `rgb.jpg` and the L flow JPEGs are packed unchanged into one
`flow.fstk` (encode.pack_stack); nothing is decoded or re-encoded. A parent built with
--flow-warp gives each clip its L warped fields too, as `warped.fstk`.

Derivation runs in two passes with bounded memory:
  1. index: read each parent shard's tar headers and json members only (tarfile seeks
     past the image data), choose each sample's clips (training.sampling's definition of
     a clip) and remember where their members' bytes lie (shard, offset, size);
  2. write: per split, shuffle every clip of every video together (seeded), cut the list
     into shards by count and size, and write each shard atomically, reading the member
     bytes at their offsets (pipeline.shard.write_shard).
Splits never share a shard; OUT/manifest.parquet has a row per clip, OUT/shards.parquet
a row per shard with its sha256, and OUT/dataset.json (kind "clips", with the parent's
path, version and dataset.json hash) is written last. The same parent, config and seed
give byte-identical shards. The parent and OUT may be local folders or bucket prefixes
(`pipeline.storage`): remote members are read with range requests, and each clip shard is
uploaded whole once written.

`--per-video N` counts per video sample: a video longer than the build's --max-frames
is stored as several parts and gives N clips per part.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from pipeline import encode, manifest, shard, storage
from pipeline.manifest import DATASET_JSON, SHARD_DIR, SHARD_SCHEMA, SHARDS
from pipeline.storage import Location

log = logging.getLogger(__name__)

SAMPLINGS = ("uniform", "random")
MAX_PER_VIDEO = 1000  # clip keys end in _cNNN

CLIP_SCHEMA = pa.schema([
    ("id", pa.string()), ("video_id", pa.string()), ("source", pa.string()), ("label", pa.string()),
    ("label_id", pa.int32()), ("split", pa.string()), ("clip", pa.int32()), ("frame", pa.int64()),
    ("flow_from", pa.int64()), ("flow_fields", pa.int32()), ("parent_key", pa.string()),
    ("parent_shard", pa.string()), ("shard", pa.string()), ("bytes", pa.int64()), ("sha256", pa.string()),
])


@dataclass(frozen=True, kw_only=True)
class ClipsConfig:
    """How clips are chosen and sharded."""

    clip_len: int = 10
    per_video: int = 5
    sampling: str = "uniform"
    seed: int = 0
    shard_samples: int = 1000
    shard_bytes: int = 256 << 20
    verify: bool = True  # check each parent shard's sha256 against its manifest first

    def __post_init__(self) -> None:
        if self.clip_len < 1:
            raise ValueError(f"clip_len must be >= 1, got {self.clip_len}")
        if not 1 <= self.per_video <= MAX_PER_VIDEO:
            raise ValueError(f"per_video must be in [1, {MAX_PER_VIDEO}], got {self.per_video}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {self.sampling!r}; choose one of {SAMPLINGS}")
        if self.shard_samples < 1 or self.shard_bytes < 1 << 16:
            raise ValueError(f"shard_samples must be >= 1 and shard_bytes >= 64 KiB, got "
                             f"{self.shard_samples}, {self.shard_bytes}")

    def output_dict(self) -> dict:
        """Settings that change the output bytes."""
        return {"clip_len": self.clip_len, "per_video": self.per_video, "sampling": self.sampling,
                "seed": self.seed, "shard_samples": self.shard_samples, "shard_bytes": self.shard_bytes}


@dataclass(frozen=True)
class Member:
    """Where a member's bytes lie in a parent shard."""

    path: str
    offset: int
    size: int


@dataclass(frozen=True)
class PlannedClip:
    """One clip to write: its key, metadata bytes and where its RGB and flow bytes are."""

    key: str
    split: str
    meta: bytes
    rgb: Member
    flow: tuple[Member, ...]
    row: dict  # its manifest row, less shard/bytes/sha256
    warped: tuple[Member, ...] = ()  # the warped fields of the same pairs, when the parent has them

    def tar_bytes(self) -> int:
        """Its size in a tar: a header per member, data padded to 512, GNU long-name records."""
        stacks = [self.flow] + ([self.warped] if self.warped else [])
        sizes = [len(self.meta), self.rgb.size, *(13 + 4 * len(s) + sum(m.size for m in s) for s in stacks)]
        exts = (encode.META, encode.RGB_CLIP, encode.FLOW_STACK) + ((encode.WARPED_STACK,) if self.warped else ())
        names = [f"{self.key}.{ext}" for ext in exts]
        longname = sum(512 + _pad(len(n) + 1) for n in names if len(n) >= 100)
        return sum(512 + _pad(s) for s in sizes) + longname


def _pad(n: int) -> int:
    return -(-n // 512) * 512


# --- pass 1: index ----------------------------------------------------------------------

def index_shard(path: Location) -> Iterator[tuple[str, dict[str, Member], bytes]]:
    """(sample key, {ext: Member}, json bytes) per sample, reading headers and json only."""
    path = str(path)
    with storage.open_read(path) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
        key, members, meta = None, {}, b""
        for info in tar:
            if not info.isfile():
                continue
            k, _, ext = info.name.rsplit("/", 1)[-1].partition(".")
            if k != key:
                if key is not None:
                    yield key, members, meta
                key, members, meta = k, {}, b""
            members[ext] = Member(path, info.offset_data, info.size)
            if ext == encode.META:
                meta = tar.extractfile(info).read()
        if key is not None:
            yield key, members, meta


def choose(num_candidates: int, cfg: ClipsConfig, key: str) -> list[int]:
    """Which candidate clips of a sample to keep (uniformly spaced, or seeded random)."""
    from training import sampling

    if cfg.sampling == "uniform":
        return sampling.uniform_indices(num_candidates, cfg.per_video)
    return sampling.random_indices(num_candidates, cfg.per_video, sampling.sample_rng(cfg.seed, 0, key))


def plan_sample(key: str, members: dict[str, Member], meta_bytes: bytes, shard_name: str,
                cfg: ClipsConfig) -> list[PlannedClip]:
    """The clips of one video sample, with their metadata and member locations."""
    from training import sampling

    where = f"{shard_name} sample {key}"
    meta = encode.load_meta(meta_bytes, where)
    if meta.get("kind") != "video":
        raise encode.SchemaError(f"{where}: kind {meta.get('kind')!r}; clips are cut from video samples")
    try:
        cands = sampling.candidates(meta, cfg.clip_len)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    if len(cands) == 0:
        log.warning("%s: no flow fields, no clips", where)
        return []
    out = []
    for j, i in enumerate(choose(len(cands), cfg, key)):
        clip = cands[i]
        try:
            rgb = members[encode.rgb_member(clip.frame)]
            flow = tuple(members[encode.flow_member(f)] for f in clip.fields)
            warped = tuple(members[encode.warped_member(f)] for f in clip.fields) if encode.has_warped(meta) else ()
        except KeyError as exc:
            raise encode.SchemaError(f"{where}: member {exc} named by its metadata is missing") from exc
        out.append(_planned(key, j, clip, meta, rgb, flow, shard_name, cfg, warped))
    return out


def clip_meta(key: str, j: int, clip, meta: dict, shard_name: str, cfg: ClipsConfig) -> dict:
    """The json of a clip sample."""
    frame = meta["frames"][clip.frame]
    fields = [{"position": p, **meta["flow_fields"][p]} for p in clip.fields]  # from, to (and camera)
    warped = {"warp": meta["warp"]} if encode.has_warped(meta) else {}
    return {
        **warped,
        "schema_version": encode.schema_version(bool(warped)), "kind": "clip", "key": f"{key}_c{j:03d}",
        "video_id": meta["video_id"], "label": meta["label"], "label_id": meta["label_id"], "split": meta["split"],
        "source": meta.get("source", ""), "part": meta.get("part", 0), "num_parts": meta.get("num_parts", 1),
        "clip_index": j, "clip_len": cfg.clip_len, "fps": meta.get("fps"), "size": meta["size"],
        "frame": {"position": clip.frame, "index": frame["index"], "pts": frame.get("pts")},
        "flow_fields": fields, "bound": meta["flow"]["bound"], "flow": meta["flow"], "rgb": meta.get("rgb", {}),
        "parent": {"key": key, "shard": shard_name},
    }


def _planned(key, j, clip, meta, rgb, flow, shard_name, cfg, warped=()) -> PlannedClip:
    cm = clip_meta(key, j, clip, meta, shard_name, cfg)
    row = {"id": cm["key"], "video_id": cm["video_id"], "source": cm["source"], "label": cm["label"],
           "label_id": cm["label_id"], "split": cm["split"], "clip": j, "frame": cm["frame"]["index"],
           "flow_from": cm["flow_fields"][0]["from"], "flow_fields": len(flow), "parent_key": key,
           "parent_shard": shard_name}
    return PlannedClip(key=cm["key"], split=cm["split"], meta=encode.dump_meta(cm), rgb=rgb, flow=flow, row=row,
                       warped=warped)


def plan_clips(shards: list, cfg: ClipsConfig) -> list[PlannedClip]:
    """Pass 1 over every parent shard (.name, .path, .sha256; in name order), hashes checked first."""
    planned: list[PlannedClip] = []
    for entry in sorted(shards, key=lambda e: e.name):
        if cfg.verify and shard.sha256_file(entry.path) != entry.sha256:
            raise shard.ShardError(f"parent shard {entry.name}: sha256 does not match the parent's manifest")
        try:
            for key, members, meta in index_shard(entry.path):
                planned.extend(plan_sample(key, members, meta, entry.name, cfg))
        except (tarfile.TarError, OSError) as exc:
            raise shard.ShardError(f"parent shard {entry.path}: cannot index it ({exc})") from exc
    return planned


# --- pass 2: shuffle, pack, write ---------------------------------------------------------

def pack(clips: list[PlannedClip], cfg: ClipsConfig) -> list[list[PlannedClip]]:
    """Cut clips (already in write order) into shards within the count and size limits."""
    groups: list[list[PlannedClip]] = []
    size = 0
    for clip in clips:
        nbytes = clip.tar_bytes()
        if not groups or len(groups[-1]) >= cfg.shard_samples or (groups[-1] and size + nbytes > cfg.shard_bytes):
            groups.append([])
            size = 0
        groups[-1].append(clip)
        size += nbytes
    return groups


class MemberReader:
    """Reads member bytes at their offsets, keeping parent shards open between reads.

    Local shards are read with pread; remote ones through seekable file objects whose reads
    are range requests (clips of one shard lie close together, so read-ahead serves most).
    """

    def __init__(self, max_open: int = 256):
        self.fds: dict[str, int] = {}
        self.files: dict[str, object] = {}
        self.max_open = max_open

    def read(self, m: Member) -> bytes:
        if storage.is_remote(m.path):
            data = self._read_remote(m)
        else:
            fd = self.fds.get(m.path)
            if fd is None:
                if len(self.fds) >= self.max_open:
                    self.close()
                fd = self.fds[m.path] = os.open(m.path, os.O_RDONLY)
            data = os.pread(fd, m.size, m.offset)
        if len(data) != m.size:
            raise shard.ShardError(f"{m.path}: member at {m.offset} is truncated")
        return data

    def _read_remote(self, m: Member) -> bytes:
        f = self.files.get(m.path)
        if f is None:
            if len(self.files) >= self.max_open:
                self.close()
            f = self.files[m.path] = storage.open_read(m.path)
        f.seek(m.offset)
        return f.read(m.size)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        for f in self.files.values():
            f.close()
        self.fds.clear()
        self.files.clear()


def clip_sample(clip: PlannedClip, reader: MemberReader) -> dict:
    """The webdataset sample of a clip: json, the frame's JPEG, the fields' JPEGs stacked."""
    sample = {"__key__": clip.key, encode.META: clip.meta, encode.RGB_CLIP: reader.read(clip.rgb),
              encode.FLOW_STACK: encode.pack_stack([reader.read(m) for m in clip.flow])}
    if clip.warped:
        sample[encode.WARPED_STACK] = encode.pack_stack([reader.read(m) for m in clip.warped])
    return sample


def write_group(group: list[PlannedClip], path: Location, reader: MemberReader, rows: list[dict]) -> shard.ShardRecord:
    """Write one clip shard atomically; appends each clip's manifest row to `rows`."""
    def samples():
        for clip in group:
            sample = clip_sample(clip, reader)
            rows.append({**clip.row, "shard": storage.name(path), "bytes": sum(len(v) for k, v in sample.items() if k != "__key__"),
                         "sha256": shard.sample_sha256(sample)})
            yield sample

    return shard.write_shard(samples(), path)


def derive_clips(dataset: Location, output: Location, cfg: ClipsConfig, *, overwrite: bool = False) -> dict:
    """Cut clip shards from the built dataset `dataset` ("OUTPUT" or "OUTPUT@VERSION") into `output`.

    Returns the new dataset.json.
    """
    out = storage.location(output)
    info = manifest.read_info(dataset) if storage.isfile(storage.join(dataset, DATASET_JSON)) else {}
    if info.get("kind", "videos") != "videos":
        raise ValueError(f"{dataset}: kind {info.get('kind')!r}; clips are cut from a built video dataset")
    from pipeline import open_dataset

    parent = open_dataset(dataset)
    info = parent.info
    if storage.exists(storage.join(out, DATASET_JSON)):
        if not overwrite:
            raise FileExistsError(f"{out} already holds a dataset ({DATASET_JSON}); pass overwrite to replace it")
        storage.remove(storage.join(out, DATASET_JSON))  # un-commit first: a crash from here on leaves no valid dataset
    storage.makedirs(storage.join(out, SHARD_DIR))
    planned = plan_clips(parent.shards(), cfg)
    rows: list[dict] = []
    shard_rows: list[dict] = []
    reader = MemberReader()
    try:
        for split in sorted({c.split for c in planned}):
            clips = sorted((c for c in planned if c.split == split), key=lambda c: c.key)
            random.Random(f"clips/{cfg.seed}/{split}").shuffle(clips)  # mixes videos and classes
            for n, group in enumerate(pack(clips, cfg)):
                rec = write_group(group, storage.join(out, SHARD_DIR, f"{split}-{n:05d}.tar"), reader, rows)
                shard_rows.append({"name": rec.name, "split": split, "samples": rec.samples, "bytes": rec.bytes,
                                   "sha256": rec.sha256})
    finally:
        reader.close()
    _remove_stale(out, {r["name"] for r in shard_rows})
    info_out = clips_info(parent.root, getattr(parent, "folder", parent.root), info, cfg, rows, shard_rows)
    manifest.write_parquet(storage.join(out, manifest.MANIFEST), sorted(rows, key=lambda r: r["id"]), CLIP_SCHEMA)
    manifest.write_parquet(storage.join(out, SHARDS), sorted(shard_rows, key=lambda r: r["name"]), SHARD_SCHEMA)
    manifest.atomic_write_bytes(storage.join(out, DATASET_JSON), manifest.dump_json(info_out))  # the commit, last
    log.info("%s: %d clips of %d videos in %d shards", out, len(rows), len({r["video_id"] for r in rows}),
             len(shard_rows))
    return info_out


def _remove_stale(out: Location, keep: set[str]) -> None:
    """Delete tars of an earlier derivation that the new one did not write."""
    for name in storage.list_files(storage.join(out, SHARD_DIR), suffix=".tar"):
        if name not in keep:
            storage.remove(storage.join(out, SHARD_DIR, name))


def clips_info(parent: Location, folder: Location, parent_info: dict, cfg: ClipsConfig, rows: list[dict],
               shard_rows: list[dict]) -> dict:
    """dataset.json of a clip-shard folder: kind, labels, counts, config, parent record, version.

    parent: the parent's OUTPUT folder; folder: where its (version's) dataset.json is.
    """
    parent_sha = hashlib.sha256(storage.read_bytes(storage.join(folder, DATASET_JSON))).hexdigest()
    path = str(parent) if storage.is_remote(parent) else str(Path(parent).absolute())
    parent_record = {"path": path, "version": parent_info.get("version"),
                     "dataset_json_sha256": parent_sha}
    identity = {"schema": encode.SCHEMA_VERSION, "config": cfg.output_dict(),
                "parent": parent_info.get("version") or parent_sha}
    splits = sorted({r["split"] for r in shard_rows})
    counts = {"clips": {s: sum(r["split"] == s for r in rows) for s in splits},
              "videos": {s: len({r["video_id"] for r in rows if r["split"] == s}) for s in splits},
              "shards": {s: sum(r["split"] == s for r in shard_rows) for s in splits},
              "bytes": sum(r["bytes"] for r in shard_rows)}
    warped = "warp" in parent_info.get("config", {})
    return {"format": "flowshard", "kind": "clips", "schema_version": encode.schema_version(warped),
            "version": hashlib.sha256(manifest.dump_json(identity)).hexdigest()[:16],
            "label_map": parent_info["label_map"], "num_classes": len(parent_info["label_map"]),
            "clip_len": cfg.clip_len, "config": cfg.output_dict(), "counts": counts, "parent": parent_record}
