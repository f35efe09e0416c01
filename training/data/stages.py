"""The per-sample stages: pick clips, shuffle, decode, transform, collate.

Safety. Members are decoded only by flowshard's own decoders (json through
encode.load_meta, RGB through encode.decode_rgb, flow fields as their stored (2H, W)
planes by `encode.decode_flow_plane`, FlowStack through encode.unpack_stack); any other member is
dropped undecoded, nothing is unpickled.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pipeline import encode
from pipeline import snippets as snip  # `snippets` is also a DataConfig field
from pipeline.snippets import Clip
from training import streams as stream_spec
from training.data.config import DataConfig
from training.data.shards import EpochState, SampleError, batches_done, worker_info
from training.detection import data as detection
from training.mean_flow import subtract_mean_flow
from training.transforms import FieldPlanes, eval_views, train_views

log = logging.getLogger(__name__)


# The members flowshard decodes and the functions that decode them; nothing else is decoded.
DECODERS = {"rgb": encode.decode_rgb, "flow": encode.decode_flow_plane, "warped": encode.decode_flow_plane}


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
    return {
        "__key__": sample["__key__"],
        "__shard__": sample.get("__shard__", ""),
        "video_id": meta["video_id"],
        "label": int(meta["label_id"]),
        "clip": clip,
    }


def _clip_item(sample: dict, meta: dict, plan: PickPlan) -> dict:
    """A clip sample is one item: its stored snippets (centred subsets when shorter ones are asked for)."""
    cfg = plan.cfg
    if plan.train and cfg.sampler == "tsn":
        raise ValueError(f"{_where(sample)}: tsn sampling needs video samples; a clip sample holds its stored snippets")
    item = _item(sample, meta, int(meta.get("clip_index", 0)))
    stored = _stored_snippets(meta)
    want = cfg.clip_spec.length
    if plan.train and len(stored) != want:
        raise ValueError(
            f"{_where(sample)}: the clip holds {len(stored)} snippet(s), the sampler asks for {want} "
            f"(clip shards made with --snippets {len(stored)} train with --sampling "
            f"{'strided' if len(stored) > 1 else 'simonyan'} --snippets {len(stored)})"
        )
    clip = tuple(
        snip.Snippet(
            frames=snip.centred(s.frames, cfg.rgb_frames, "RGB frames"),
            fields=snip.centred(s.fields, cfg.clip_len) if stream_spec.uses_fields(cfg.streams) else (),
        )
        for s in stored
    )
    if cfg.uses_rgb:
        frames = (
            [sample[encode.RGB_CLIP]] if encode.RGB_CLIP in sample else encode.unpack_stack(sample[encode.RGB_STACK])
        )
        item["rgb"] = [[frames[f] for f in s.frames] for s in clip]
    else:
        item["rgb"] = None
    for name, member, use in (
        ("flow", encode.FLOW_STACK, cfg.uses_flow),
        ("warped", encode.WARPED_STACK, cfg.uses_warped),
    ):
        if use and member not in sample:
            raise encode.SchemaError(
                f"{_where(sample)}: no {member} member (warped flow needs a dataset built with --flow-warp)"
            )
        fields = encode.unpack_stack(sample[member]) if use else None
        item[name] = [[fields[f] for f in s.fields] for s in clip] if fields is not None else None
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
        item["rgb"] = [[sample[encode.rgb_member(f)] for f in s.frames] for s in clip] if cfg.uses_rgb else None
        item["flow"] = [[sample[encode.flow_member(f)] for f in s.fields] for s in clip] if cfg.uses_flow else None
        item["warped"] = (
            [[sample[encode.warped_member(f)] for f in s.fields] for s in clip] if cfg.uses_warped else None
        )
    except KeyError as exc:
        raise encode.SchemaError(
            f"{_where(sample)}: member {exc} named by its metadata is missing"
            + (" (warped flow needs a dataset built with --flow-warp)" if "warped" in str(exc) else "")
        ) from exc
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
    rank, _, worker, _ = worker_info(state)
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


def skip_done(src: Iterable[dict], batch_size: int, state: EpochState) -> Iterator[dict]:
    """Stage: drop the items of the batches this stream gave before a step checkpoint (a
    resumed run), so the epoch goes on where it stopped: nothing used twice, nothing skipped.

    Everything before this stage is seeded by (seed, epoch, stream), so the stream
    re-creates its order and the dropped items are the ones already trained on; they are
    dropped before decoding.
    """
    _, _, worker, workers = worker_info(state)
    drop = batches_done(state.done, worker, workers) * batch_size
    for i, item in enumerate(src):
        if i >= drop:
            yield item


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
            item["rgb"], views = train_views(item["rgb"], fields, cfg.transform, rng)
        else:
            item["rgb"], views = eval_views(item["rgb"], fields, cfg.transform)
        # views is None exactly when there are no field streams (names empty)
        for name, part in zip(names, np.split(views, len(names), axis=2) if views is not None else (), strict=True):
            item[name] = subtract_mean_flow(part) if cfg.flow_mean_subtract else part
        yield item


def joint_fields(item: dict) -> tuple[list | None, list[str]]:
    """The flow and warped stacks of each snippet as one stack (warped channels after flow's),
    so both get the same crop and flip (x stays on even channels), and the names in order."""
    names = [n for n in stream_spec.FIELD_STREAMS if item.get(n) is not None]
    if len(names) < 2:
        return (item[names[0]] if names else None), names
    return [FieldPlanes(f.planes + w.planes) for f, w in zip(item["flow"], item["warped"], strict=True)], names


def collate(items: list[dict]) -> dict:
    """Items -> a batch: {"rgb": (B, V, K, 3F, S, S), "flow": (B, V, K, 2L, S, S), "label": (B,), ...}.

    V: views (crops), K: snippets in time order, F frames and L fields per snippet.
    """
    batch = {
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "video_id": [it["video_id"] for it in items],
        "clip": [it["clip"] for it in items],
        "key": [it["__key__"] for it in items],
    }
    for name in stream_spec.STREAMS:
        if items[0].get(name) is not None:
            batch[name] = torch.from_numpy(np.stack([it[name] for it in items]))
    return batch
