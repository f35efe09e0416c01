"""The on-disk sample schema: member names, metadata and the codecs of frames and flow.

This module is the only place that knows how a sample is laid out in a shard; readers
refuse a schema version they do not know. docs/FORMAT.md documents it for users.

A video sample (key K) holds:
    K.json              metadata (see `video_meta`)
    K.rgb.NNNNNN.jpg    RGB frame number NNNNNN of this sample (position, not global index)
    K.flow.NNNNNN.jpg   flow field NNNNNN: one grayscale JPEG of shape (2H, W), the
                        quantized x component on top and y below
A clip sample (key K) holds:
    K.json              metadata (label, video id, frame positions)
    K.rgb.jpg           the RGB frame at the clip's centre
    K.flow.fstk         its L flow fields, stacked in time: a FlowStack container of the
                        stored per-field JPEG bytes, copied without re-encoding
A clip sample of several frames or snippets (schema 2) holds instead:
    K.rgb.stk           its distinct RGB frames in time order, a FlowStack container of
                        their stored JPEG bytes (absent when no frame is stored)
    K.flow.fstk         its distinct flow fields in time order (absent with clip_len 0)
    and its json's "snippets" lists, per snippet, positions into both stacks
Every member is decodable on its own, so one frame or one field never needs the rest.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Mapping

import cv2
import numpy as np

from pipeline.flow import dequantize, quantize

SCHEMA_VERSION = 1
# Clip samples of several frames or snippets (their json maps snippets to stacked members);
# every other sample is still written as schema 1.
SNIPPETS_SCHEMA_VERSION = 2
KNOWN_SCHEMAS = (1, 2)

META = "json"
RGB_CLIP = "rgb.jpg"
RGB_STACK = "rgb.stk"
FLOW_STACK = "flow.fstk"
_RGB_RE = re.compile(r"^rgb\.(\d{6})\.jpg$")
_FLOW_RE = re.compile(r"^flow\.(\d{6})\.jpg$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")

STACK_MAGIC = b"FSTK"
STACK_VERSION = 1


class SchemaError(ValueError):
    """A sample does not follow the schema (unknown version, missing or bad member)."""


def rgb_member(i: int) -> str:
    """Member name (without key) of RGB frame position i."""
    return f"rgb.{i:06d}.jpg"


def flow_member(i: int) -> str:
    """Member name (without key) of flow field position i."""
    return f"flow.{i:06d}.jpg"


def check_key(key: str) -> str:
    """Return `key` if it is a safe sample key, else raise naming it."""
    if not _KEY_RE.match(key or ""):
        raise SchemaError(f"invalid sample key {key!r}: only [A-Za-z0-9_-] are allowed")
    return key


# --- codecs -----------------------------------------------------------------------------

def encode_rgb(frame: np.ndarray, quality: int = 90) -> bytes:
    """RGB uint8 (H, W, 3) -> JPEG bytes (4:2:0, baseline, deterministic)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for a frame of shape {frame.shape}")
    return buf.tobytes()


def decode_rgb(data: bytes) -> np.ndarray:
    """JPEG bytes -> RGB uint8 (H, W, 3)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise SchemaError("an RGB member is not a decodable JPEG")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def encode_flow_q(q: np.ndarray, quality: int = 95) -> bytes:
    """Quantized flow uint8 (H, W, 2) -> one grayscale JPEG of (2H, W): x on top, y below."""
    if q.dtype != np.uint8 or q.ndim != 3 or q.shape[2] != 2:
        raise ValueError(f"quantized flow must be uint8 (H, W, 2), got {q.dtype} {q.shape}")
    plane = np.ascontiguousarray(np.concatenate([q[..., 0], q[..., 1]], axis=0))
    ok, buf = cv2.imencode(".jpg", plane, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for a flow field of shape {q.shape}")
    return buf.tobytes()


def decode_flow_plane(data: bytes) -> np.ndarray:
    """One flow member -> its quantized (2H, W) plane as stored, x over y.

    Readers that want channels first (the trainer) take the plane as it is: x is
    plane[:H], y is plane[H:], with no interleaving copy.
    """
    plane = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if plane is None or plane.shape[0] % 2:
        raise SchemaError("a flow member is not a decodable (2H, W) grayscale JPEG")
    return plane


def decode_flow_q(data: bytes) -> np.ndarray:
    """One flow member -> quantized uint8 (H, W, 2), x then y."""
    plane = decode_flow_plane(data)
    h = plane.shape[0] // 2
    return np.stack([plane[:h], plane[h:]], axis=-1)


def encode_flow(flow: np.ndarray, bound: float, quality: int = 95) -> bytes:
    """Float flow (H, W, 2) in pixels -> quantized flow member bytes."""
    return encode_flow_q(quantize(flow, bound), quality)


def decode_flow(data: bytes, bound: float) -> np.ndarray:
    """Flow member bytes -> float32 (H, W, 2) in pixels."""
    return dequantize(decode_flow_q(data), bound)


def pack_stack(fields: list[bytes]) -> bytes:
    """Stack encoded flow members into one FlowStack container (bytes copied, not re-encoded).

    Layout (little-endian): b"FSTK", u8 version, u32 count, count x u32 lengths, payloads.
    """
    # Stacks hold flow fields (flow.fstk) or RGB frames (rgb.stk): the container is the same.
    head = STACK_MAGIC + struct.pack("<BI", STACK_VERSION, len(fields))
    return head + struct.pack(f"<{len(fields)}I", *map(len, fields)) + b"".join(fields)


def stack_size(lengths: list[int]) -> int:
    """Bytes of a FlowStack container holding members of these lengths."""
    return 9 + 4 * len(lengths) + sum(lengths)


def unpack_stack(data: bytes, select: list[int] | None = None) -> list[bytes]:
    """Split a FlowStack container into its field members (only `select` positions if given)."""
    if data[:4] != STACK_MAGIC or len(data) < 9:
        raise SchemaError("not a FlowStack container (bad magic)")
    version, count = struct.unpack_from("<BI", data, 4)
    if version != STACK_VERSION:
        raise SchemaError(f"unknown FlowStack version {version}")
    lengths = struct.unpack_from(f"<{count}I", data, 9)
    offsets = np.concatenate([[0], np.cumsum(lengths)]) + 9 + 4 * count
    if offsets[-1] != len(data):
        raise SchemaError(f"FlowStack is truncated or padded: {len(data)} bytes, header says {offsets[-1]}")
    wanted = range(count) if select is None else select
    return [data[offsets[i]:offsets[i + 1]] for i in wanted]


# --- samples ----------------------------------------------------------------------------

def to_sample(key: str, meta: dict, frames: list[bytes], flows: list[bytes]) -> dict:
    """Build a webdataset sample dict for a video sample (member order is fixed by the writer)."""
    check_key(key)
    sample = {"__key__": key, META: dump_meta(meta)}
    sample.update({rgb_member(i): b for i, b in enumerate(frames)})
    sample.update({flow_member(i): b for i, b in enumerate(flows)})
    return sample


def dump_meta(meta: dict) -> bytes:
    """Metadata -> canonical JSON bytes (sorted keys, so equal metadata gives equal bytes)."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_meta(data: bytes, where: str = "sample") -> dict:
    """JSON member -> metadata, refusing an unknown schema version."""
    try:
        meta = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{where}: metadata is not valid JSON ({exc})") from exc
    version = meta.get("schema_version") if isinstance(meta, dict) else None
    if version not in KNOWN_SCHEMAS:
        raise SchemaError(f"{where}: unknown schema version {version!r}; this flowshard reads {KNOWN_SCHEMAS}")
    return meta


@dataclass(frozen=True)
class DecodedSample:
    """A decoded video sample: frames (T,H,W,3) uint8 RGB, flow (F,H,W,2) float32 px, meta."""

    frames: np.ndarray
    flow: np.ndarray
    meta: dict


def member_positions(members: Mapping[str, bytes]) -> tuple[list[int], list[int]]:
    """The sorted frame and flow positions present among a sample's member names."""
    rgb = sorted(int(m.group(1)) for m in map(_RGB_RE.match, members) if m)
    flow = sorted(int(m.group(1)) for m in map(_FLOW_RE.match, members) if m)
    return rgb, flow


def from_sample(members: Mapping[str, bytes], where: str = "sample") -> DecodedSample:
    """Decode every member of a video sample, checking counts against the metadata."""
    meta = load_meta(members[META], where)
    rgb, flow = member_positions(members)
    if rgb != list(range(len(meta["frames"]))) or flow != list(range(len(meta["flow_fields"]))):
        raise SchemaError(f"{where}: members do not match metadata ({len(rgb)} frames, {len(flow)} fields present; "
                          f"{len(meta['frames'])} and {len(meta['flow_fields'])} declared)")
    w, h = meta["size"]
    frames = np.stack([decode_rgb(members[rgb_member(i)]) for i in rgb]) if rgb else np.zeros((0, h, w, 3), np.uint8)
    bound = float(meta["flow"]["bound"])
    fl = (np.stack([decode_flow(members[flow_member(i)], bound) for i in flow])
          if flow else np.zeros((0, h, w, 2), np.float32))
    return DecodedSample(frames=frames, flow=fl, meta=meta)
