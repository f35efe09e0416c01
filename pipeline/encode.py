"""The on-disk sample schema: member names, metadata and the codecs of frames and flow.

This module is the only place that knows how a sample is laid out in a shard; readers
refuse a schema version they do not know. docs/FORMAT.md documents it for users.

A video sample (key K) holds:
    K.json              metadata (see `video_meta`)
    K.rgb.NNNNNN.jpg    RGB frame number NNNNNN of this sample (position, not global index)
    K.flow.NNNNNN.jpg   flow field NNNNNN: one grayscale JPEG of shape (2H, W), the
                        quantized x component on top and y below
    K.warped.NNNNNN.jpg schema 3 (--flow-warp) only: the warped flow of the same pair as
                        flow field NNNNNN (camera motion removed), same codec
A clip sample (key K) holds:
    K.json              metadata (label, video id, frame positions)
    K.rgb.jpg           the RGB frame at the clip's centre
    K.flow.fstk         its L flow fields, stacked in time: a FlowStack container of the
                        stored per-field JPEG bytes, copied without re-encoding
    K.warped.fstk       schema 3 only: its L warped fields, likewise
A clip sample of several frames or snippets (schema 2) holds instead:
    K.rgb.stk           its distinct RGB frames in time order, a FlowStack container of
                        their stored JPEG bytes (absent when no frame is stored)
    K.flow.fstk         its distinct flow fields in time order (absent with clip_len 0)
    K.warped.fstk       schema 3 only: the warped fields of the same pairs, likewise
    and its json's "snippets" lists, per snippet, positions into the stacks
Every member is decodable on its own, so one frame or one field never needs the rest.

Schema versions: each sample is written with the lowest version that describes it, and a
reader of version N reads every version up to N. 2 adds the snippet clip layout; 3 adds the
warped members, the warp settings (meta "warp") and each field's camera motion
(flow_fields[i]["camera"]). A sample without warped flow is written exactly as before, so
datasets built without --flow-warp keep their version ids and stored shards (ids hash
SCHEMA_VERSION, the base schema, and the settings, which name the warp when it is on).
Data with warped flow says 3, so a reader that does not know warped flow refuses it instead
of silently dropping the third modality.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg

from pipeline.flow.quantize import dequantize, quantize_inplace

# SCHEMA_VERSION names the code that makes the bytes, not only their layout: version ids, unit
# stems (tar names) and media keys (which stored samples a build may copy) all hash it. The rule,
# enforced by tests/test_golden_bytes.py: when this code writes other bytes for the same inputs,
# settings and tools (a member, a metadata key or value, JPEG or quantization, tar headers), the
# same change bumps SCHEMA_VERSION (to a number no schema used yet; add it to KNOWN_SCHEMAS) and
# rewrites the golden table. A bump means recomputing: every id, stem and media key changes, so a
# resume, an incremental build or `pipeline.build.reuse` never copies bytes of the older code into
# a version of the newer one (and a version never mixes the two). A change that leaves the bytes
# alone (speed, logging, a new setting that is off by default) does not bump it.
SCHEMA_VERSION = 1  # the base schema; what dataset and shard ids hash
# Clip samples of several frames or snippets (their json maps snippets to stacked members).
SNIPPETS_SCHEMA_VERSION = 2
# Samples with warped flow members (--flow-warp), of any layout.
WARPED_SCHEMA_VERSION = 3
KNOWN_SCHEMAS = (1, 2, 3)

META = "json"
RGB_CLIP = "rgb.jpg"
RGB_STACK = "rgb.stk"
FLOW_STACK = "flow.fstk"
WARPED_STACK = "warped.fstk"
_RGB_RE = re.compile(r"^rgb\.(\d{6})\.jpg$")
_FLOW_RE = re.compile(r"^flow\.(\d{6})\.jpg$")
_WARPED_RE = re.compile(r"^warped\.(\d{6})\.jpg$")
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


def warped_member(i: int) -> str:
    """Member name (without key) of the warped flow field at position i."""
    return f"warped.{i:06d}.jpg"


def schema_version(warped: bool, snippets: bool = False) -> int:
    """The lowest schema that describes a sample: 3 with warped flow, else 2 for a snippet
    clip layout, else 1."""
    if warped:
        return WARPED_SCHEMA_VERSION
    return SNIPPETS_SCHEMA_VERSION if snippets else SCHEMA_VERSION


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


def encode_planes(y: np.ndarray, u: np.ndarray, v: np.ndarray, quality: int = 90) -> bytes:
    """Full-range BT.601 YUV 4:2:0 planes (what the decoder gives) -> JPEG bytes (baseline).

    The planes are JPEG's own colour space, so libjpeg-turbo encodes them as they are: no RGB
    conversion and no chroma downsampling, the same picture `encode_rgb` gives of their RGB.
    """
    try:
        return simplejpeg.encode_jpeg_yuv_planes(y, u, v, int(quality))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"JPEG encoding failed for planes of shape {y.shape}: {exc}") from exc


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
    return _encode_plane(np.concatenate([q[..., 0], q[..., 1]], axis=0), quality)


def _encode_plane(plane: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", plane, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for a flow plane of shape {plane.shape}")
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
    """Float flow (H, W, 2) in pixels -> quantized flow member bytes.

    Quantized straight into the (2H, W) plane: one float copy, no uint8 (H, W, 2) in between.
    """
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    h = flow.shape[0]
    plane = np.empty((2 * h, flow.shape[1]), np.float32)
    plane[:h], plane[h:] = flow[..., 0], flow[..., 1]
    return _encode_plane(quantize_inplace(plane, bound), quality)


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
    return [data[offsets[i] : offsets[i + 1]] for i in wanted]


# --- samples ----------------------------------------------------------------------------


def to_sample(key: str, meta: dict, frames: list[bytes], flows: list[bytes], warped: list[bytes] | None = None) -> dict:
    """Build a webdataset sample dict for a video sample (member order is fixed by the writer).

    warped: the warped flow members, one per flow field (schema 2), or None.
    """
    check_key(key)
    if warped is not None and len(warped) != len(flows):
        raise ValueError(f"{key}: {len(warped)} warped fields for {len(flows)} flow fields")
    sample = {"__key__": key, META: dump_meta(meta)}
    sample.update({rgb_member(i): b for i, b in enumerate(frames)})
    sample.update({flow_member(i): b for i, b in enumerate(flows)})
    sample.update({warped_member(i): b for i, b in enumerate(warped or [])})
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
    """A decoded video sample: frames (T,H,W,3) uint8 RGB, flow (F,H,W,2) float32 px, meta,
    and warped (F,H,W,2) float32 px when the sample holds warped flow (else None)."""

    frames: np.ndarray
    flow: np.ndarray
    meta: dict
    warped: np.ndarray | None = None


def member_positions(members: Mapping[str, bytes]) -> tuple[list[int], list[int]]:
    """The sorted frame and flow positions present among a sample's member names."""
    rgb = sorted(int(m.group(1)) for m in map(_RGB_RE.match, members) if m)
    flow = sorted(int(m.group(1)) for m in map(_FLOW_RE.match, members) if m)
    return rgb, flow


def warped_positions(members: Mapping[str, bytes]) -> list[int]:
    """The sorted warped-field positions present among a sample's member names."""
    return sorted(int(m.group(1)) for m in map(_WARPED_RE.match, members) if m)


def has_warped(meta: dict) -> bool:
    """True when a sample's metadata declares warped flow (schema 2, meta "warp")."""
    return bool(meta.get("warp"))


def check_warped(members: Mapping[str, bytes], meta: dict, where: str) -> list[int]:
    """The warped positions, checked against the metadata: one per flow field when the sample
    declares warped flow (and its schema says 2), none otherwise."""
    got = warped_positions(members)
    want = list(range(len(meta["flow_fields"]))) if has_warped(meta) else []
    if got != want:
        raise SchemaError(f"{where}: {len(got)} warped field member(s) present, the metadata declares {len(want)}")
    if want and meta.get("schema_version") != WARPED_SCHEMA_VERSION:
        raise SchemaError(
            f"{where}: warped flow in a sample of schema {meta.get('schema_version')!r}, not {WARPED_SCHEMA_VERSION}"
        )
    return got


def _decode_fields(members: Mapping[str, bytes], names: list[str], bound: float, h: int, w: int) -> np.ndarray:
    return np.stack([decode_flow(members[n], bound) for n in names]) if names else np.zeros((0, h, w, 2), np.float32)


def from_sample(members: Mapping[str, bytes], where: str = "sample") -> DecodedSample:
    """Decode every member of a video sample, checking counts against the metadata."""
    meta = load_meta(members[META], where)
    rgb, flow = member_positions(members)
    if rgb != list(range(len(meta["frames"]))) or flow != list(range(len(meta["flow_fields"]))):
        raise SchemaError(
            f"{where}: members do not match metadata ({len(rgb)} frames, {len(flow)} fields present; "
            f"{len(meta['frames'])} and {len(meta['flow_fields'])} declared)"
        )
    warped = check_warped(members, meta, where)
    w, h = meta["size"]
    frames = np.stack([decode_rgb(members[rgb_member(i)]) for i in rgb]) if rgb else np.zeros((0, h, w, 3), np.uint8)
    bound = float(meta["flow"]["bound"])
    fl = _decode_fields(members, [flow_member(i) for i in flow], bound, h, w)
    wf = _decode_fields(members, [warped_member(i) for i in warped], bound, h, w) if has_warped(meta) else None
    return DecodedSample(frames=frames, flow=fl, meta=meta, warped=wf)
