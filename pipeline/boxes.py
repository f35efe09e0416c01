"""Per-frame action boxes (`flowshard build --boxes FILE`): import, match, map, check, store.

Annotation files (`load_boxes`):

    CSV      video,frame,x1,y1,x2,y2,label[,track]: one box per row; `video` names the
             input video (its path as listed, with or without extension, or its key),
             `frame` is the 0-based index of the frame as decoded at the source rate,
             `track` (default 0) groups the boxes of one actor, whose label must not change.
    .pkl     UCF101-24 annotation pickles, in either published layout:
             - ACT-detector/MOC's "UCF101v2-GT.pkl": {"labels": [names], "gttubes":
               {video: {label index: [array (n, 5): 1-based frame, x1, y1, x2, y2]}},
               "nframes": {video: n}, "resolution": {video: (height, width)},
               "train_videos", "test_videos"};
             - the corrected annotations' "pyannot.pkl": {video: {"label", "numf",
               "annotations": [{"label", "sf", "ef", "boxes": array (ef - sf, 4) of x, y, w, h}]}},
               frames sf .. ef - 1 (0-based); the class name is the video's folder.
             Read by `RestrictedUnpickler`: builtin containers and numpy arrays only, so a
             pickle cannot run code.
    folder   J-HMDB puppet masks: <class>/<video>/puppet_mask.mat files whose "part_mask"
             (H, W, T) is nonzero on the actor; frame t's box is the mask's bounding box
             (pixel edges: columns c0..c1 give x1 = c0, x2 = c1 + 1), the label the class folder.

Coordinates are pixels of the source frame as displayed, (x1, y1) the top-left corner and
(x2, y2) the bottom-right one. Each stored frame gets the boxes of the source frame it
shows, scaled to the stored size (`--resize`); with `--fps`, stored frame n shows source
position s = n * source_fps / fps, whose box is interpolated linearly between the
annotated frames around it (a track is present where the nearest source frame is
annotated). Flow fields carry no boxes of their own: with `--step S` the field (t, t + S)
and the stacks centred on frame t are annotated by frame t's boxes. Horizontal flips in
training move a box to x1' = W - x2, x2' = W - x1 (training.detection.data).

Checks make per-video error rows: a box outside the decoded frame (beyond the tolerance,
default 1 px, within which boxes are clipped), an empty box, an annotated frame the video
does not have, or an annotation size that differs from the decoded one.

Boxes go into each sample's metadata (`annotate`: "tracks", and "boxes" on every frame)
and the manifest's "boxes" column; their digest is part of the version id and of the shard
unit's identity (pipeline.build.run), not of the media key: a changed boxes file makes a new
version whose samples are copied from the stored shards with new metadata, no flow recomputed.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib
import io
import json
import logging
import math
import os
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from pipeline import storage
from pipeline.records import Track, VideoBoxes, VideoRef

log = logging.getLogger(__name__)

CSV_COLUMNS = ("video", "frame", "x1", "y1", "x2", "y2", "label")
PUPPET_MASK = "puppet_mask.mat"
DIGITS = 3  # decimals of stored box coordinates (canonical JSON, byte-identical rebuilds)


@dataclass(frozen=True, kw_only=True)
class BoxesConfig:
    """`--boxes FILE` and `--box-tolerance PX`."""

    path: str
    tolerance: float = 1.0

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("boxes: the annotation file path is empty")
        if not math.isfinite(self.tolerance) or self.tolerance < 0:
            raise ValueError(f"box tolerance must be a finite number >= 0, got {self.tolerance}")


@dataclass(frozen=True)
class BoxesFile:
    """An imported annotation file: its format, label names (ids in this order) and videos."""

    path: str
    format: str
    labels: tuple[str, ...]
    videos: dict[str, VideoBoxes]


# --- restricted unpickling -----------------------------------------------------------------

_BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "bytearray", "complex", "slice", "range"})
# numpy's array and scalar reconstructors (the array's dtype and bytes are plain data), and
# _codecs.encode, which protocol 2 pickles written by Python 3 use to spell bytes objects.
_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds builtin containers and numpy arrays, and refuses anything else.

    A pickle names the callables that rebuild its objects; any name outside this list
    (os.system, builtins.eval, a class of some package) is refused before it is imported.
    """

    def find_class(self, module: str, name: str):
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(__import__("builtins"), name)
        if (module, name) in _ALLOWED:
            # numpy 2 keeps numpy.core only as a deprecated alias of numpy._core
            real = module.replace("numpy.core.", "numpy._core.") if hasattr(np, "_core") else module
            return getattr(importlib.import_module(real), name)
        raise pickle.UnpicklingError(
            f"refused to load {module}.{name}: annotation pickles may hold only builtin containers and numpy arrays"
        )


def restricted_load(data: bytes, where: str):
    """Unpickle `data` with RestrictedUnpickler (Python 2 pickles' strings read as latin-1)."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    except (EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


# --- importers ---------------------------------------------------------------------------------


def load_boxes(path: str | Path, tolerance: float = 1.0) -> BoxesFile:
    """Import an annotation file or folder (see the module docstring); ValueError naming it."""
    text = str(path)
    if storage.isdir(text):
        return read_puppet_masks(text, tolerance)
    if not storage.isfile(text):
        raise ValueError(f"--boxes {text}: no such file or folder")
    suffix = os.path.splitext(text)[1].lower()
    if suffix == ".csv":
        return read_csv(text, tolerance)
    if suffix in (".pkl", ".pickle"):
        return read_pickle(text, tolerance)
    if os.path.basename(text) == PUPPET_MASK:
        raise ValueError(f"--boxes {text}: give the folder holding <class>/<video>/{PUPPET_MASK} files")
    raise ValueError(
        f"--boxes {text}: unknown annotation format (expected .csv, a UCF101-24 .pkl, "
        f"or a folder of J-HMDB {PUPPET_MASK} files)"
    )


def _number(value: str, what: str, where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} {value!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{where}: {what} {value!r} is not finite")
    return x


def _whole(value, where: str, what: str = "frame") -> int:
    x = _number(value, what, where)
    if x != int(x) or x < 0:
        raise ValueError(f"{where}: {what} {value!r} must be a whole number >= 0")
    return int(x)


def read_csv(path: str, tolerance: float = 1.0) -> BoxesFile:
    """video,frame,x1,y1,x2,y2,label[,track] rows -> BoxesFile (ValueError naming file and row)."""
    text = storage.read_text(path, errors="strict")
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {','.join(CSV_COLUMNS)}[,track]")
    tracks: dict[tuple[str, int], dict] = {}
    for row_no, row in enumerate(reader, start=2):
        where = f"{path} line {row_no}"
        video, label = (row["video"] or "").strip(), (row["label"] or "").strip()
        if not video or not label:
            raise ValueError(f"{where}: empty video or label")
        track = _whole(row.get("track") or 0, where, "track")
        frame = _whole(row["frame"], where)
        box = tuple(_number(row[c], c, where) for c in ("x1", "y1", "x2", "y2"))
        t = tracks.setdefault((video, track), {"label": label, "boxes": {}})
        if t["label"] != label:
            raise ValueError(f"{where}: track {track} of {video} changes label from {t['label']!r} to {label!r}")
        if frame in t["boxes"]:
            raise ValueError(f"{where}: track {track} of {video} has a second box in frame {frame}")
        t["boxes"][frame] = box
    if not tracks:
        raise ValueError(f"{path}: no boxes")
    raw: dict[str, list] = {}
    for (video, track), t in sorted(tracks.items()):
        raw.setdefault(video, []).append((track, t["label"], t["boxes"]))
    return _boxes_file(path, "csv", raw, {}, tolerance)


def _boxes_file(
    path: str,
    fmt: str,
    raw: dict[str, list],
    sizes: dict[str, tuple[int, int]],
    tolerance: float,
    labels: Iterable[str] | None = None,
) -> BoxesFile:
    """BoxesFile from {video: [(track, label, {frame: box})]}; label ids follow sorted names."""
    names = tuple(sorted(set(labels) if labels is not None else {lab for ts in raw.values() for _, lab, _ in ts}))
    ids = {name: i for i, name in enumerate(names)}
    videos = {}
    for video, tracks in raw.items():
        built = tuple(
            Track(
                track=tr,
                label=lab,
                label_id=ids[lab],
                frames=tuple(sorted(bx)),
                boxes=tuple(_box(bx[f]) for f in sorted(bx)),
            )
            for tr, lab, bx in tracks
        )
        name = normalize_name(video)
        videos[name] = VideoBoxes(
            file=str(path),
            format=fmt,
            video=name,
            tracks=built,
            labels=names,
            size=sizes.get(video),
            tolerance=float(tolerance),
        )
    return BoxesFile(path=str(path), format=fmt, labels=names, videos=videos)


def read_pickle(path: str, tolerance: float = 1.0) -> BoxesFile:
    """A UCF101-24 annotation pickle (ACT-detector or corrected layout) -> BoxesFile."""
    data = restricted_load(storage.read_bytes(path), str(path))
    try:
        if isinstance(data, dict) and "gttubes" in data:
            return _act_layout(path, data, tolerance)
        if isinstance(data, dict) and data and all(isinstance(v, dict) and "annotations" in v for v in data.values()):
            return _corrected_layout(path, data, tolerance)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: malformed UCF101-24 annotations ({type(exc).__name__}: {exc})") from exc
    raise ValueError(
        f"{path}: not a UCF101-24 annotation pickle (expected the 'gttubes' layout of "
        "UCF101v2-GT.pkl or the per-video 'annotations' layout of pyannot.pkl)"
    )


def _box(values) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) as floats; every reader gives four numbers per box."""
    x1, y1, x2, y2 = (float(v) for v in values)
    return x1, y1, x2, y2


def _array(x, cols: int, where: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != cols or not np.isfinite(a).all():
        raise ValueError(f"{where}: expected a finite (n, {cols}) array, got shape {a.shape}")
    return a


def _act_layout(path: str, data: dict, tolerance: float) -> BoxesFile:
    labels = [str(x) for x in data.get("labels", [])]
    raw: dict[str, list] = {}
    sizes = {}
    for video, by_label in sorted(data["gttubes"].items()):
        tracks: list[tuple[int, str, dict]] = []
        for label_index, tubes in sorted(by_label.items()):
            if not 0 <= int(label_index) < len(labels):
                raise ValueError(f"{path}: video {video}: label index {label_index} not in its {len(labels)} labels")
            for tube in tubes:
                a = _array(tube, 5, f"{path}: video {video}")
                boxes = {}
                for row in a:  # 1-based frame numbers
                    boxes[_whole(row[0] - 1, f"{path}: video {video}")] = tuple(row[1:5])
                tracks.append((len(tracks), labels[int(label_index)], boxes))
        raw[str(video)] = tracks
        if video in data.get("resolution", {}):
            h, w = data["resolution"][video]
            sizes[str(video)] = (int(w), int(h))
    return _boxes_file(path, "ucf101-24", raw, sizes, tolerance, labels)


def _corrected_layout(path: str, data: dict, tolerance: float) -> BoxesFile:
    raw: dict[str, list] = {}
    label_of: dict[str, int] = {}
    for video, entry in sorted(data.items()):
        name = PurePosixPath(normalize_name(str(video))).parts[0]
        tracks = []
        for n, ann in enumerate(entry["annotations"]):
            where = f"{path}: video {video} annotation {n}"
            if label_of.setdefault(name, int(ann["label"])) != int(ann["label"]):
                raise ValueError(f"{where}: label {ann['label']} but other {name} videos have {label_of[name]}")
            a = _array(ann["boxes"], 4, where)
            sf, ef = int(ann["sf"]), int(ann["ef"])
            if ef - sf != len(a) or sf < 0:
                raise ValueError(f"{where}: frames {sf}..{ef - 1} but {len(a)} boxes")
            boxes = {sf + i: (x, y, x + w, y + h) for i, (x, y, w, h) in enumerate(a)}
            tracks.append((n, name, boxes))
        raw[str(video)] = tracks
    return _boxes_file(path, "ucf101-24-corrected", raw, {}, tolerance)


def mask_boxes(mask: np.ndarray) -> dict[int, tuple[float, float, float, float]]:
    """Per frame t of an (H, W, T) mask, the bounding box of its nonzero pixels (pixel edges)."""
    out = {}
    for t in range(mask.shape[2]):
        ys, xs = np.nonzero(mask[:, :, t])
        if len(xs):
            out[t] = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    return out


def read_puppet_masks(folder: str, tolerance: float = 1.0) -> BoxesFile:
    """J-HMDB: every <class>/<video>/puppet_mask.mat below `folder` -> one track per video."""
    import scipy.io

    files = sorted(Path(folder).rglob(PUPPET_MASK))
    if not files:
        raise ValueError(f"--boxes {folder}: no {PUPPET_MASK} files below it")
    raw, sizes = {}, {}
    for f in files:
        rel = f.parent.relative_to(folder).as_posix()
        if "/" not in rel:
            raise ValueError(f"{f}: expected <class>/<video>/{PUPPET_MASK}")
        try:
            mask = scipy.io.loadmat(str(f))["part_mask"]
        except (KeyError, ValueError, OSError, NotImplementedError) as exc:
            raise ValueError(f"{f}: not a puppet mask file with a 'part_mask' array ({exc})") from exc
        if mask.ndim == 2:
            mask = mask[:, :, None]
        if mask.ndim != 3:
            raise ValueError(f"{f}: 'part_mask' has shape {mask.shape}, expected (H, W, T)")
        label = PurePosixPath(rel).parts[-2]
        raw[rel] = [(0, label, mask_boxes(mask))]
        sizes[rel] = (int(mask.shape[1]), int(mask.shape[0]))
    return _boxes_file(folder, "jhmdb-puppet-masks", raw, sizes, tolerance)


# --- matching annotations to input videos --------------------------------------------------------


def normalize_name(name: str) -> str:
    """A video name as annotation files and lists write it: POSIX separators, no extension."""
    text = str(name).replace("\\", "/").strip()
    while text.startswith("./"):
        text = text[2:]
    stem, dot, ext = text.rpartition(".")
    return stem if dot and stem and "/" not in ext else text


def attach(refs: list[VideoRef], cfg: BoxesConfig | None) -> list[VideoRef]:
    """The refs with the boxes of `cfg.path` attached to the videos they name (unchanged without cfg).

    A video is matched by its source path (with or without extension) or its key, else by
    its file name when that is unique. Raises ValueError when no video matches; annotated
    videos not among the inputs are logged.
    """
    if cfg is None:
        return refs
    loaded = load_boxes(cfg.path, cfg.tolerance)
    matched = match(refs, loaded)
    if not matched:
        example = next(iter(loaded.videos), "")
        raise ValueError(
            f"--boxes {cfg.path}: none of its {len(loaded.videos)} videos (e.g. {example!r}) "
            "matches an input video's path or key"
        )
    unused = len(loaded.videos) - len(set(matched.values()))
    if unused:
        log.warning("%s: %d annotated video(s) are not among the inputs", cfg.path, unused)
    log.info(
        "%s (%s): boxes for %d of %d input videos, %d labels",
        cfg.path,
        loaded.format,
        len(matched),
        len(refs),
        len(loaded.labels),
    )
    return [dataclasses.replace(r, boxes=loaded.videos[matched[r.key]]) if r.key in matched else r for r in refs]


def match(refs: list[VideoRef], loaded: BoxesFile) -> dict[str, str]:
    """ref key -> annotation video name."""
    names = set(loaded.videos)
    by_base: dict[str, list[str]] = {}
    for n in names:
        by_base.setdefault(PurePosixPath(n).name, []).append(n)
    ref_bases: dict[str, int] = {}
    for r in refs:
        base = PurePosixPath(normalize_name(r.source)).name
        ref_bases[base] = ref_bases.get(base, 0) + 1
    out = {}
    for r in refs:
        for cand in (normalize_name(r.source), r.source, r.key):
            if cand in names:
                out[r.key] = cand
                break
        else:
            base = PurePosixPath(normalize_name(r.source)).name
            if len(by_base.get(base, [])) == 1 and ref_bases[base] == 1:
                out[r.key] = by_base[base][0]
    return out


def digest(vb: VideoBoxes | None) -> str:
    """A hash of a video's annotations (and tolerance): part of version ids and unit identities."""
    if vb is None:
        return ""
    tracks = [[t.track, t.label, t.label_id, list(t.frames), [list(b) for b in t.boxes]] for t in vb.tracks]
    blob = json.dumps(
        {"tracks": tracks, "size": vb.size, "tolerance": vb.tolerance, "labels": vb.labels}, sort_keys=True
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dataset_info(refs: Iterable[VideoRef], cfg: BoxesConfig | None) -> dict:
    """dataset.json's "boxes" entry ({} without --boxes): file, format, label map and counts."""
    annotated = [r.boxes for r in refs if r.boxes is not None]
    if cfg is None or not annotated:
        return {}
    first = annotated[0]
    return {
        "boxes": {
            "file": first.file,
            "format": first.format,
            "label_map": {n: i for i, n in enumerate(first.labels)},
            "tolerance": cfg.tolerance,
            "videos": len(annotated),
            "tracks": sum(len(vb.tracks) for vb in annotated),
            "boxes": sum(len(t.frames) for vb in annotated for t in vb.tracks),
        }
    }


# --- checks ---------------------------------------------------------------------------------------


def source_rate(decode_fps: float | None, source_fps: float) -> float:
    """Source frames per stored frame: 1 without --fps (stored frame n is source frame n)."""
    if decode_fps is None:
        return 1.0
    if not source_fps or source_fps <= 0:
        raise ValueError("boxes cannot follow --fps: ffmpeg reported no frame rate for this video")
    return float(source_fps) / float(decode_fps)


def check_frame_size(vb: VideoBoxes | None, width: int, height: int) -> None:
    """ValueError when the annotation's size differs from the decoded one or a box leaves the frame."""
    if vb is None:
        return
    if vb.size is not None and tuple(vb.size) != (width, height):
        raise ValueError(
            f"its boxes are for {vb.size[0]}x{vb.size[1]} frames, the video decodes to {width}x{height} ({_origin(vb)})"
        )
    tol = vb.tolerance
    for t in vb.tracks:
        for f, (x1, y1, x2, y2) in zip(t.frames, t.boxes, strict=True):
            if x2 <= x1 or y2 <= y1:
                raise ValueError(f"empty box {_fmt((x1, y1, x2, y2))} in frame {f} (track {t.track}) ({_origin(vb)})")
            if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
                raise ValueError(
                    f"box {_fmt((x1, y1, x2, y2))} in frame {f} (track {t.track}) is out of the "
                    f"{width}x{height} frame ({_origin(vb)})"
                )


def check_frames(vb: VideoBoxes | None, stored_frames: int, rate: float) -> None:
    """ValueError when an annotated frame is past the video's end.

    The video has `stored_frames` frames at `rate` source frames each: source frames
    0 .. ceil(stored_frames * rate) - 1 exist (with --fps the count is rounded up: one
    frame more is accepted).
    """
    if vb is None:
        return
    limit = stored_frames if rate == 1.0 else math.ceil(stored_frames * rate) + 1
    for t in vb.tracks:
        if t.frames and t.frames[-1] >= limit:
            total = f"{stored_frames} frames" if rate == 1.0 else f"about {limit - 1} source frames"
            raise ValueError(
                f"its boxes name frame {t.frames[-1]} (track {t.track}), but the video has {total} ({_origin(vb)})"
            )


def _origin(vb: VideoBoxes) -> str:
    return f"boxes of {vb.video!r} in {vb.file}"


def _fmt(box) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


# --- stored frames -------------------------------------------------------------------------------


def track_box(t: Track, s: float) -> tuple[float, float, float, float] | None:
    """Track `t`'s box at source position `s` (frames), or None where it is absent.

    Present where the nearest source frame is annotated; between two annotated frames the
    box is interpolated linearly, next to an unannotated one it is the nearest frame's.
    """
    pos = {f: i for i, f in enumerate(t.frames)}
    near = int(math.floor(s + 0.5))
    if near not in pos:
        return None
    lo = int(math.floor(s))
    frac = s - lo
    if frac < 1e-9 or lo not in pos or lo + 1 not in pos:
        return t.boxes[pos[near]]
    a, b = np.asarray(t.boxes[pos[lo]]), np.asarray(t.boxes[pos[lo + 1]])
    return _box((1 - frac) * a + frac * b)


def stored_box(box, source_size: tuple[int, int], size: tuple[int, int]) -> list[float]:
    """A source-frame box clipped to the source frame and scaled to the stored size."""
    sw, sh = source_size
    w, h = size
    x1, y1, x2, y2 = (min(max(v, 0.0), lim) for v, lim in zip(box, (sw, sh, sw, sh), strict=True))
    return [
        round(x1 * w / sw, DIGITS),
        round(y1 * h / sh, DIGITS),
        round(x2 * w / sw, DIGITS),
        round(y2 * h / sh, DIGITS),
    ]


def frame_boxes(vb: VideoBoxes, index: int, rate: float, source_size, size) -> list[list[float]]:
    """Stored frame `index`'s boxes in stored pixels, each [x1, y1, x2, y2, track]."""
    found = [(t.track, track_box(t, index * rate)) for t in vb.tracks]
    return [[*stored_box(b, source_size, size), tr] for tr, b in found if b is not None]


def annotate(meta: dict, vb: VideoBoxes) -> dict:
    """Sample metadata with the video's "tracks" and each frame's "boxes" ([x1, y1, x2, y2, track]).

    Needs the metadata's frames (global indices), size, source_size, source_fps and decode fps.
    """
    rate = source_rate(meta["decode"].get("fps"), meta.get("source_fps", 0.0))
    frames = [
        {**f, "boxes": frame_boxes(vb, f["index"], rate, meta["source_size"], meta["size"])} for f in meta["frames"]
    ]
    tracks = [{"track": t.track, "label": t.label, "label_id": t.label_id} for t in vb.tracks]
    return {**meta, "frames": frames, "tracks": tracks}


def flip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Boxes (n, 4) x1, y1, x2, y2 of a frame mirrored left-right: x1' = W - x2, x2' = W - x1."""
    out = np.array(boxes, dtype=np.float32, copy=True)
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return out


# --- manifest ---------------------------------------------------------------------------------------


def sample_tubes(sample: dict) -> dict | None:
    """{"tracks", "frames": [[index, x1, y1, x2, y2, track], ...]} of a sample's json, None if unannotated."""
    data = sample.get("json", b"")
    if b'"tracks"' not in data:
        return None
    meta = json.loads(data)
    if "tracks" not in meta:
        return None
    return {"tracks": meta["tracks"], "frames": [[f["index"], *b] for f in meta["frames"] for b in f.get("boxes", [])]}


def manifest_value(parts: list[dict | None]) -> str:
    """The manifest's "boxes" cell of a video: JSON of its tracks, each with its boxes in stored
    pixels ({"track", "label", "label_id", "boxes": [[frame index, x1, y1, x2, y2], ...]}); ""
    for a video without annotations."""
    present = [p for p in parts if p is not None]
    if not present:
        return ""
    tracks = []
    for t in present[0]["tracks"]:
        rows = [r[:5] for p in present for r in p["frames"] if r[5] == t["track"]]
        tracks.append({**t, "boxes": rows})
    return json.dumps({"tracks": tracks}, sort_keys=True, separators=(",", ":"))
