"""Clip shards: training shards of clip samples, cut from a built dataset without new flow.

    flowshard clips DATASET OUT --clip-len 10 --per-video 5 [--sampling uniform|random] [--seed 0]
        [--snippets T --strides 1,5,10] [--rgb-frames F --frame-stride D]

A clip sample is what one training item reads (pipeline.snippets): by default one RGB
frame and the L flow fields centred on it (a Simonyan snippet); with `--snippets T
--strides 1,5,10` T snippets a stride apart, one clip set per stride (Feichtenhofer et
al.'s multi-timescale clips); with `--rgb-frames F` runs of F frames (C3D-style clips;
`--clip-len 0` stores no flow). A dense video sample holds hundreds of frames and fields
of which a step uses a few, so streaming video samples reads ~20x more bytes than it
uses; clip shards read about what they use. Clips are derived by copying stored member
bytes: nothing is decoded or re-encoded. A one-frame, one-snippet clip stores the frame's
JPEG as `rgb.jpg` and its L flow JPEGs packed into one `flow.fstk` (encode.pack_stack);
any other clip stores each distinct frame once in `rgb.stk` and each distinct field once
in `flow.fstk` (overlapping snippets share them), and its json maps snippets to them. A
parent built with --flow-warp gives each clip the warped fields of the same pairs too, as
`warped.fstk` beside `flow.fstk` (schema 3).

Derivation runs in two passes with bounded memory:
  1. index: read each parent shard's tar headers and json members only (tarfile seeks
     past the image data), choose each sample's clips (pipeline.snippets' definition of
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

`--per-video N` counts per video sample and stride: a video longer than the build's --max-frames
is stored as several parts and gives N clips per part.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow as pa

from pipeline import encode, shard, snippets, storage
from pipeline.build import manifest
from pipeline.build.manifest import DATASET_JSON, SHARD_DIR, SHARD_SCHEMA, SHARDS
from pipeline.snippets import SnippetShape  # `snippets` is also a ClipsConfig field
from pipeline.storage import Location

log = logging.getLogger(__name__)

SAMPLINGS = ("uniform", "random")
MAX_PER_VIDEO = 1000  # clip keys end in _cNNN

CLIP_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("video_id", pa.string()),
        ("source", pa.string()),
        ("label", pa.string()),
        ("label_id", pa.int32()),
        ("split", pa.string()),
        ("clip", pa.int32()),
        ("frame", pa.int64()),
        ("flow_from", pa.int64()),
        ("flow_fields", pa.int32()),
        ("snippets", pa.int32()),
        ("stride", pa.int32()),
        ("parent_key", pa.string()),
        ("parent_shard", pa.string()),
        ("shard", pa.string()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
    ]
)


@dataclass(frozen=True, kw_only=True)
class ClipsConfig:
    """How clips are chosen and sharded.

    A clip is `snippets` snippets `stride` frames apart (one clip set per stride in
    `strides`: multi-timescale), each snippet `rgb_frames` frames `frame_stride` apart and
    the `clip_len` flow fields centred on them (pipeline.snippets).
    """

    clip_len: int = 10
    rgb_frames: int = 1
    frame_stride: int = 1
    snippets: int = 1
    strides: tuple[int, ...] = (1,)
    per_video: int = 5  # clips per video sample and stride
    sampling: str = "uniform"
    seed: int = 0
    shard_samples: int = 1000
    shard_bytes: int = 256 << 20
    verify: bool = True  # check each parent shard's sha256 against its manifest first

    def __post_init__(self) -> None:
        snippets.SnippetShape(clip_len=self.clip_len, rgb_frames=self.rgb_frames, frame_stride=self.frame_stride)
        snippets.ClipSpec(sampler="strided", snippets=self.snippets, strides=self.strides)
        if not 1 <= self.per_video * len(self.strides) <= MAX_PER_VIDEO:
            raise ValueError(
                f"per_video x strides must be in [1, {MAX_PER_VIDEO}], got {self.per_video} x {len(self.strides)}"
            )
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {self.sampling!r}; choose one of {SAMPLINGS}")
        if self.shard_samples < 1 or self.shard_bytes < 1 << 16:
            raise ValueError(
                f"shard_samples must be >= 1 and shard_bytes >= 64 KiB, got {self.shard_samples}, {self.shard_bytes}"
            )

    @property
    def shape(self) -> SnippetShape:
        return snippets.SnippetShape(clip_len=self.clip_len, rgb_frames=self.rgb_frames, frame_stride=self.frame_stride)

    @property
    def single(self) -> bool:
        """One frame and one snippet per clip: the compact layout (rgb.jpg + flow.fstk)."""
        return self.rgb_frames == 1 and self.snippets == 1 and self.clip_len > 0

    def output_dict(self) -> dict:
        """Settings that change the output bytes."""
        return {
            "clip_len": self.clip_len,
            "rgb_frames": self.rgb_frames,
            "frame_stride": self.frame_stride,
            "snippets": self.snippets,
            "strides": list(self.strides),
            "per_video": self.per_video,
            "sampling": self.sampling,
            "seed": self.seed,
            "shard_samples": self.shard_samples,
            "shard_bytes": self.shard_bytes,
        }


@dataclass(frozen=True)
class Member:
    """Where a member's bytes lie in a parent shard."""

    path: str
    offset: int
    size: int


@dataclass(frozen=True)
class PlannedClip:
    """One clip to write: its key, metadata bytes and where its frames' and fields' bytes are.

    rgb and flow hold each distinct frame and field once, in time order (snippets that
    overlap share them); the metadata maps snippets to positions in these stacks.
    """

    key: str
    split: str
    meta: bytes
    rgb: tuple[Member, ...]
    flow: tuple[Member, ...]
    single: bool  # the compact layout: rgb.jpg + flow.fstk
    row: dict  # its manifest row, less shard/bytes/sha256
    warped: tuple[Member, ...] = ()  # the warped fields of the same pairs as `flow`, when the parent has them

    def members(self) -> list[tuple[str, int]]:
        """(member extension, size in bytes) of each member this clip's sample holds."""
        out = [(encode.META, len(self.meta))]
        if self.single:
            out.append((encode.RGB_CLIP, self.rgb[0].size))
        elif self.rgb:
            out.append((encode.RGB_STACK, encode.stack_size([m.size for m in self.rgb])))
        if self.flow:
            out.append((encode.FLOW_STACK, encode.stack_size([m.size for m in self.flow])))
        if self.warped:
            out.append((encode.WARPED_STACK, encode.stack_size([m.size for m in self.warped])))
        return out

    def tar_bytes(self) -> int:
        """Its size in a tar: a header per member, data padded to 512, GNU long-name records."""
        total = 0
        for ext, size in self.members():
            name = f"{self.key}.{ext}"
            total += 512 + _pad(size) + (512 + _pad(len(name) + 1) if len(name) >= 100 else 0)
        return total


def _pad(n: int) -> int:
    return -(-n // 512) * 512


# --- pass 1: index ----------------------------------------------------------------------


def index_shard(path: Location) -> Iterator[tuple[str, dict[str, Member], bytes]]:
    """(sample key, {ext: Member}, json bytes) per sample, reading headers and json only."""
    path = str(path)
    with storage.open_read(path) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
        members: dict[str, Member]
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
                member = tar.extractfile(info)
                if member is None:  # not for a regular file (checked above); a clear error all the same
                    raise shard.ShardError(f"{path}: member {info.name} cannot be read")
                meta = member.read()
        if key is not None:
            yield key, members, meta


def choose(num_starts: int, cfg: ClipsConfig, key: str) -> list[int]:
    """Which starts of a sample to keep (uniformly spaced, or seeded random)."""
    if cfg.sampling == "uniform":
        return snippets.uniform_indices(num_starts, cfg.per_video)
    return snippets.random_indices(num_starts, cfg.per_video, snippets.sample_rng(cfg.seed, 0, key))


def sample_clips(cands: snippets.Candidates, cfg: ClipsConfig, key: str) -> list[tuple[int, snippets.Clip]]:
    """(stride, clip) of each clip cut from a sample: per stride, `per_video` starts."""
    n = len(cands)
    snippets.check_frame_strides(cands, cfg.snippets)
    out = []
    for stride in snippets.fitting_strides(n, cfg.snippets, cfg.strides):
        # One stride keeps the sample key as the seed, so single-scale clips stay as they were.
        seed_key = key if len(cfg.strides) == 1 else f"{key}/s{stride}"
        for start in choose(snippets.strided_starts(n, cfg.snippets, stride), cfg, seed_key):
            positions = snippets.strided_indices(n, cfg.snippets, stride, start)
            out.append((stride, tuple(cands[i] for i in positions)))
    return out


def plan_sample(
    key: str, members: dict[str, Member], meta_bytes: bytes, shard_name: str, cfg: ClipsConfig
) -> list[PlannedClip]:
    """The clips of one video sample, with their metadata and member locations."""
    where = f"{shard_name} sample {key}"
    meta = encode.load_meta(meta_bytes, where)
    if meta.get("kind") != "video":
        raise encode.SchemaError(f"{where}: kind {meta.get('kind')!r}; clips are cut from video samples")
    try:
        cands = snippets.candidates(meta, cfg.shape)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    if len(cands) == 0:
        log.warning("%s: no %s, no clips", where, "flow fields" if cfg.clip_len else "frames")
        return []
    out = []
    for j, (stride, clip) in enumerate(sample_clips(cands, cfg, key)):
        frames = [clip[0].frame] if cfg.single else sorted({f for s in clip for f in s.frames})
        fields = sorted({f for s in clip for f in s.fields})
        try:
            rgb = tuple(members[encode.rgb_member(f)] for f in frames)
            flow = tuple(members[encode.flow_member(f)] for f in fields)
            warped = tuple(members[encode.warped_member(f)] for f in fields) if encode.has_warped(meta) else ()
        except KeyError as exc:
            raise encode.SchemaError(f"{where}: member {exc} named by its metadata is missing") from exc
        cm = clip_meta(key, j, clip, stride, meta, shard_name, cfg)
        out.append(_planned(cm, key, stride, len(clip), rgb, flow, shard_name, cfg, warped))
    return out


def clip_meta(
    key: str, j: int, clip: snippets.Clip, stride: int, meta: dict, shard_name: str, cfg: ClipsConfig
) -> dict:
    """The json of a clip sample.

    The compact layout (one frame, one snippet) keeps schema 1's keys: "frame" and
    "flow_fields". Other clips (schema 2) list every stacked frame and field once, in time
    order, and "snippets" maps each snippet to positions in those stacks.
    """
    out = {
        "schema_version": encode.SCHEMA_VERSION,
        "kind": "clip",
        "key": f"{key}_c{j:03d}",
        "video_id": meta["video_id"],
        "label": meta["label"],
        "label_id": meta["label_id"],
        "split": meta["split"],
        "source": meta.get("source", ""),
        "part": meta.get("part", 0),
        "num_parts": meta.get("num_parts", 1),
        "clip_index": j,
        "clip_len": cfg.clip_len,
        "fps": meta.get("fps"),
        "size": meta["size"],
        "bound": meta["flow"]["bound"],
        "flow": meta["flow"],
        "rgb": meta.get("rgb", {}),
        "parent": {"key": key, "shard": shard_name},
    }
    if encode.has_warped(meta):  # the warped stack holds the same pairs as flow.fstk
        out.update({"warp": meta["warp"], "schema_version": encode.WARPED_SCHEMA_VERSION})
    if cfg.single:
        snip = clip[0]
        frame = meta["frames"][snip.frame]
        out["frame"] = {"position": snip.frame, "index": frame["index"], "pts": frame.get("pts")}
        out["flow_fields"] = [_field(meta, p) for p in snip.fields]
        return out
    frames = sorted({f for s in clip for f in s.frames})
    fields = sorted({f for s in clip for f in s.fields})
    frame_at = {f: i for i, f in enumerate(frames)}
    field_at = {f: i for i, f in enumerate(fields)}
    out.update(
        {
            "schema_version": encode.schema_version(encode.has_warped(meta), snippets=True),
            "rgb_frames": cfg.rgb_frames,
            "frame_stride": cfg.frame_stride,
            "stride": stride,
            "frames": [
                {"position": p, "index": meta["frames"][p]["index"], "pts": meta["frames"][p].get("pts")}
                for p in frames
            ],
            "flow_fields": [_field(meta, p) for p in fields],
            "snippets": [
                {"frames": [frame_at[f] for f in s.frames], "fields": [field_at[f] for f in s.fields]} for s in clip
            ],
        }
    )
    return out


def _field(meta: dict, position: int) -> dict:
    return {"position": position, **meta["flow_fields"][position]}  # from, to (and camera, with warped flow)


def _planned(
    cm: dict, key: str, stride: int, length: int, rgb, flow, shard_name: str, cfg: ClipsConfig, warped=()
) -> PlannedClip:
    first = (
        cm["frame"] if cfg.single else cm["frames"][cm["snippets"][0]["frames"][len(cm["snippets"][0]["frames"]) // 2]]
    )
    row = {
        "id": cm["key"],
        "video_id": cm["video_id"],
        "source": cm["source"],
        "label": cm["label"],
        "label_id": cm["label_id"],
        "split": cm["split"],
        "clip": cm["clip_index"],
        "frame": first["index"],
        "flow_from": cm["flow_fields"][0]["from"] if flow else -1,
        "flow_fields": len(flow),
        "snippets": length,
        "stride": stride,
        "parent_key": key,
        "parent_shard": shard_name,
    }
    return PlannedClip(
        key=cm["key"],
        split=cm["split"],
        meta=encode.dump_meta(cm),
        rgb=rgb,
        flow=flow,
        single=cfg.single,
        row=row,
        warped=warped,
    )


def snippet_length(meta_bytes: bytes, cfg: ClipsConfig) -> tuple[int, int] | None:
    """(what a dense video sample holds, what one snippet needs): flow fields, or frames with
    --clip-len 0; None for a sample built with --clips (its stored clips are cut, not padded)."""
    meta = encode.load_meta(meta_bytes, "sample")
    if meta.get("mode") == "clips":
        return None
    if cfg.clip_len:
        return len(meta.get("flow_fields", [])), cfg.clip_len
    return len(meta.get("frames", [])), cfg.shape.frame_span


def check_lengths(lengths: list[tuple[int, int]], cfg: ClipsConfig) -> None:
    """Log the video samples shorter than a snippet (their clips repeat the last field or frame,
    as TSN pads), and refuse a snippet longer than every sample: its clips would be mostly padding."""
    what = "flow fields" if cfg.clip_len else "frames"
    short = [held for held, need in lengths if held < need]
    if not short:
        return
    need = lengths[0][1]
    if len(short) == len(lengths):
        raise ValueError(
            f"clip_len {cfg.clip_len}, rgb_frames {cfg.rgb_frames}: a snippet of {need} {what} is longer "
            f"than every video sample (the longest holds {max(short)}); choose a shorter --clip-len "
            "or --rgb-frames"
        )
    log.warning(
        "%d of %d video samples hold fewer than the %d %s of a snippet (the shortest %d): their clips repeat "
        "the last %s to fill it (TSN's padding)",
        len(short),
        len(lengths),
        need,
        what,
        min(short),
        what[:-1],
    )


def plan_clips(shards: list, cfg: ClipsConfig) -> list[PlannedClip]:
    """Pass 1 over every parent shard (.name, .path, .sha256; in name order), hashes checked first."""
    planned: list[PlannedClip] = []
    lengths: list[tuple[int, int]] = []
    for entry in sorted(shards, key=lambda e: e.name):
        if cfg.verify and shard.sha256_file(entry.path) != entry.sha256:
            raise shard.ShardError(f"parent shard {entry.name}: sha256 does not match the parent's manifest")
        try:
            for key, members, meta in index_shard(entry.path):
                planned.extend(plan_sample(key, members, meta, entry.name, cfg))
                length = snippet_length(meta, cfg)
                if length is not None and length[0] > 0:  # a sample without any is warned about by plan_sample
                    lengths.append(length)
        except (tarfile.TarError, OSError) as exc:
            raise shard.ShardError(f"parent shard {entry.path}: cannot index it ({exc})") from exc
    check_lengths(lengths, cfg)
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
        self.files: dict[str, IO[bytes]] = {}
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
    """The webdataset sample of a clip: json, the frames' JPEGs (one, or stacked), the fields' JPEGs stacked."""
    sample = {"__key__": clip.key, encode.META: clip.meta}
    if clip.single:
        sample[encode.RGB_CLIP] = reader.read(clip.rgb[0])
    elif clip.rgb:
        sample[encode.RGB_STACK] = encode.pack_stack([reader.read(m) for m in clip.rgb])
    if clip.flow:
        sample[encode.FLOW_STACK] = encode.pack_stack([reader.read(m) for m in clip.flow])
    if clip.warped:
        sample[encode.WARPED_STACK] = encode.pack_stack([reader.read(m) for m in clip.warped])
    return sample


def write_group(group: list[PlannedClip], path: Location, reader: MemberReader, rows: list[dict]) -> shard.ShardRecord:
    """Write one clip shard atomically; appends each clip's manifest row to `rows`."""

    def samples():
        for clip in group:
            sample = clip_sample(clip, reader)
            rows.append(
                {
                    **clip.row,
                    "shard": storage.name(path),
                    "bytes": sum(len(v) for k, v in sample.items() if k != "__key__"),
                    "sha256": shard.sample_sha256(sample),
                }
            )
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
    if storage.exists(storage.join(out, DATASET_JSON)) and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset ({DATASET_JSON}); pass overwrite to replace it")
    planned = plan_clips(parent.shards(), cfg)  # may refuse the settings: before OUT is touched
    if storage.exists(storage.join(out, DATASET_JSON)):
        storage.remove(storage.join(out, DATASET_JSON))  # un-commit first: a crash from here on leaves no valid dataset
    storage.makedirs(storage.join(out, SHARD_DIR))
    rows: list[dict] = []
    shard_rows: list[dict] = []
    reader = MemberReader()
    try:
        for split in sorted({c.split for c in planned}):
            clips = sorted((c for c in planned if c.split == split), key=lambda c: c.key)
            random.Random(f"clips/{cfg.seed}/{split}").shuffle(clips)  # mixes videos and classes
            for n, group in enumerate(pack(clips, cfg)):
                rec = write_group(group, storage.join(out, SHARD_DIR, f"{split}-{n:05d}.tar"), reader, rows)
                shard_rows.append(
                    {"name": rec.name, "split": split, "samples": rec.samples, "bytes": rec.bytes, "sha256": rec.sha256}
                )
    finally:
        reader.close()
    _remove_stale(out, {r["name"] for r in shard_rows})
    info_out = clips_info(parent.root, getattr(parent, "folder", parent.root), info, cfg, rows, shard_rows)
    manifest.write_parquet(storage.join(out, manifest.MANIFEST), sorted(rows, key=lambda r: r["id"]), CLIP_SCHEMA)
    manifest.write_parquet(storage.join(out, SHARDS), sorted(shard_rows, key=lambda r: r["name"]), SHARD_SCHEMA)
    manifest.atomic_write_bytes(storage.join(out, DATASET_JSON), manifest.dump_json(info_out))  # the commit, last
    log.info(
        "%s: %d clips of %d videos in %d shards", out, len(rows), len({r["video_id"] for r in rows}), len(shard_rows)
    )
    return info_out


def _remove_stale(out: Location, keep: set[str]) -> None:
    """Delete tars of an earlier derivation that the new one did not write."""
    for name in storage.list_files(storage.join(out, SHARD_DIR), suffix=".tar"):
        if name not in keep:
            storage.remove(storage.join(out, SHARD_DIR, name))


def clips_info(
    parent: Location, folder: Location, parent_info: dict, cfg: ClipsConfig, rows: list[dict], shard_rows: list[dict]
) -> dict:
    """dataset.json of a clip-shard folder: kind, labels, counts, config, parent record, version.

    parent: the parent's OUTPUT folder; folder: where its (version's) dataset.json is.
    """
    parent_sha = hashlib.sha256(storage.read_bytes(storage.join(folder, DATASET_JSON))).hexdigest()
    path = str(parent) if storage.is_remote(parent) else str(Path(parent).absolute())
    parent_record = {"path": path, "version": parent_info.get("version"), "dataset_json_sha256": parent_sha}
    identity = {
        "schema": encode.SCHEMA_VERSION,
        "config": cfg.output_dict(),
        "parent": parent_info.get("version") or parent_sha,
    }
    splits = sorted({r["split"] for r in shard_rows})
    counts = {
        "clips": {s: sum(r["split"] == s for r in rows) for s in splits},
        "videos": {s: len({r["video_id"] for r in rows if r["split"] == s}) for s in splits},
        "shards": {s: sum(r["split"] == s for r in shard_rows) for s in splits},
        "bytes": sum(r["bytes"] for r in shard_rows),
    }
    warped = "warp" in parent_info.get("config", {})  # its clips carry warped stacks: schema 3
    return {
        "format": "flowshard",
        "kind": "clips",
        "schema_version": encode.schema_version(warped),
        "version": hashlib.sha256(manifest.dump_json(identity)).hexdigest()[:16],
        "label_map": parent_info["label_map"],
        "num_classes": len(parent_info["label_map"]),
        "clip_len": cfg.clip_len,
        "config": cfg.output_dict(),
        "counts": counts,
        "parent": parent_record,
    }
