"""Export a built dataset to mmaction2's rawframes layout (`flowshard export DATASET OUT --format rawframes`).

    OUT/
      rawframes/<video_id>/img_00001.jpg ...     RGB frames, 1-based: the stored JPEG bytes, unchanged
      rawframes/<video_id>/flow_x_00001.jpg ...  flow x of the pair (img_k, img_k+step), grey JPEG
      rawframes/<video_id>/flow_y_00001.jpg ...  flow y of the same pair
      rawframes/<video_id>/warp_x_00001.jpg ...  (--flow-warp datasets) warped flow, likewise
      {split}_list_rawframes.txt                 "<video_id> <RGB frames> <label id>" per video
      {split}_list_flow.txt                      "<video_id> <flow fields> <label id>" per video
      label_map.txt                              "<label id> <class name>" per class
      export.json                                bound, step, quantization, counts, source dataset

mmaction2 reads these with RawframeDataset(ann_file=..., data_prefix=dict(img="OUT/rawframes"),
filename_tmpl="img_{:05}.jpg", start_index=1) for RGB and filename_tmpl="flow_{}_{:05d}.jpg",
modality="Flow" for flow (RawFrameDecode formats the template with "x" and "y"). The file
names are those of mmaction2's dataset guides and list builder (flow_x_ prefix); its 1.x
flow configs say "{}_{:05d}.jpg" (x_00001.jpg, tools/misc/flow_extraction.py's names), so
set filename_tmpl as above. Warped flow: filename_tmpl="warp_{}_{:05d}.jpg" with the flow lists.

Index alignment: stored frame i (0-based) is img_{i+1}; stored field i, the flow from frame i
to frame i+step, is flow_x_{i+1} / flow_y_{i+1}. So img_k and flow_*_k start at the same
frame, a video of N frames has N - step flow images, and the flow list counts N - step: a
Flow config must use `*_list_flow.txt`. mmaction2's own list builder writes the RGB count
for both modalities, which is where its users' off-by-one comes from: SampleFrames may then
pick index N, and flow_x_N does not exist.

Pixel values: a flow image is the stored quantized component, q = round(255 (d + b) / (2b))
clipped to 0..255, d = q 2b / 255 - b px with the dataset's bound b (export.json); zero
motion is 128. mmaction2's flow configs normalise with mean 128, std 128, so zero motion
is 0 here; denseflow and mmaction2's flow_extraction.py truncate instead of rounding, which
puts zero motion at 127 (-1/128 after normalisation). The x and y images are decoded from
the stored (2H, W) member and each written once as its own JPEG (quality: the dataset's
flow quality unless given), the one re-encoding the export does.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline import encode
from pipeline.dataset import Dataset, open_dataset
from pipeline.flow.quantize import QUANTIZATION

log = logging.getLogger(__name__)

FORMATS = ("rawframes",)
RGB_TMPL = "img_{:05d}.jpg"
FLOW_TMPL = "flow_{}_{:05d}.jpg"  # the config's filename_tmpl; RawFrameDecode fills in "x" / "y"
WARP_TMPL = "warp_{}_{:05d}.jpg"
FRAME_DIR = "rawframes"


@dataclass
class ExportSummary:
    """What an export wrote."""

    output: str
    videos: int = 0
    frames: int = 0
    flow_fields: int = 0
    warped: bool = False
    lists: list[str] = field(default_factory=list)


def _jpeg(plane: np.ndarray, quality: int, where: str) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(plane), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"{where}: JPEG encoding failed")
    return buf.tobytes()


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def split_planes(member: bytes, quality: int, where: str) -> tuple[bytes, bytes]:
    """A stored flow member (2H, W), x over y -> separate x and y grey JPEGs."""
    plane = encode.decode_flow_plane(member)
    h = plane.shape[0] // 2
    return _jpeg(plane[:h], quality, where), _jpeg(plane[h:], quality, where)


def write_sample(sample: dict, folder: Path, quality: int | None) -> tuple[int, int]:
    """Write one stored sample's frames and fields into its video folder; returns (frames, fields)."""
    where = sample.get("__key__", "sample")
    meta = encode.load_meta(sample[encode.META], where)
    if meta.get("mode") == "clips":
        raise ValueError(
            f"{where}: a --clips dataset keeps only some frames; rawframes needs every frame (rebuild without --clips)"
        )
    q = int(quality or meta["flow"].get("quality", 95))
    for i, f in enumerate(meta["frames"]):
        _write(folder / RGB_TMPL.format(f["index"] + 1), sample[encode.rgb_member(i)])  # bytes unchanged
    warped = encode.has_warped(meta)
    for i, f in enumerate(meta["flow_fields"]):
        n = f["from"] + 1
        x, y = split_planes(sample[encode.flow_member(i)], q, where)
        _write(folder / FLOW_TMPL.format("x", n), x)
        _write(folder / FLOW_TMPL.format("y", n), y)
        if warped:
            wx, wy = split_planes(sample[encode.warped_member(i)], q, where)
            _write(folder / WARP_TMPL.format("x", n), wx)
            _write(folder / WARP_TMPL.format("y", n), wy)
    return len(meta["frames"]), len(meta["flow_fields"])


def check_folder(folder: Path, frames: int, fields: int, warped: bool) -> None:
    """Every file a video's list lines promise is there, numbered 1..N without gaps."""
    names = set(os.listdir(folder))
    want = {RGB_TMPL.format(k) for k in range(1, frames + 1)}
    want |= {FLOW_TMPL.format(c, k) for c in "xy" for k in range(1, fields + 1)}
    if warped:
        want |= {WARP_TMPL.format(c, k) for c in "xy" for k in range(1, fields + 1)}
    missing = sorted(want - names)
    if missing or len(names) != len(want):
        raise RuntimeError(
            f"{folder}: {len(missing)} file(s) missing (e.g. {missing[:3]}), {len(names)} present, {len(want)} expected"
        )


def export_rawframes(dataset: str, output: str | Path, *, flow_quality: int | None = None) -> ExportSummary:
    """Write `dataset` ("OUTPUT" or "OUTPUT@VERSION", local or object storage) into the local
    folder `output` in mmaction2's rawframes layout; raises naming the file and the reason."""
    ds = open_dataset(dataset)
    out = Path(output)
    frame_root = out / FRAME_DIR
    if frame_root.exists():
        raise FileExistsError(f"{frame_root} already exists: export into a new folder")
    if flow_quality is not None and not 1 <= flow_quality <= 100:
        raise ValueError(f"flow quality must be within 1..100, got {flow_quality}")
    videos = {v.video_id: v for v in ds.videos()}
    written = {vid: [0, 0] for vid in videos}
    frame_root.mkdir(parents=True)
    for sample in ds.iter_samples():  # one sample (a video or one part of it) in memory at a time
        vid = encode.load_meta(sample[encode.META], sample["__key__"])["video_id"]
        if vid not in videos:
            raise ValueError(
                f"{sample.get('__shard__', '')}: sample {sample['__key__']} of video {vid!r}, "
                f"which the manifest does not list"
            )
        folder = frame_root / vid
        folder.mkdir(exist_ok=True)
        n_frames, n_fields = write_sample(sample, folder, flow_quality)
        written[vid][0] += n_frames
        written[vid][1] += n_fields
    warped = "warp" in ds.info.get("config", {})
    summary = ExportSummary(output=str(out), warped=warped)
    for vid, v in videos.items():
        if written[vid] != [v.frames, v.flow_fields]:
            raise RuntimeError(
                f"{vid}: wrote {written[vid][0]} frames and {written[vid][1]} fields, the manifest "
                f"says {v.frames} and {v.flow_fields}"
            )
        check_folder(frame_root / vid, v.frames, v.flow_fields, warped)
        summary.videos += 1
        summary.frames += v.frames
        summary.flow_fields += v.flow_fields
    summary.lists = write_lists(ds, out)
    write_info(ds, out, summary)
    return summary


def list_lines(ds: Dataset, split: str, flow: bool) -> list[str]:
    """mmaction2 annotation lines "<folder> <count> <label id>" of a split, in video id order."""
    return [
        f"{v.video_id} {v.flow_fields if flow else v.frames} {v.label_id}\n"
        for v in sorted(ds.videos(split), key=lambda v: v.video_id)
    ]


def write_lists(ds: Dataset, out: Path) -> list[str]:
    """The annotation lists of every split (RGB and flow counts) and the label map."""
    names = []
    for split in sorted({v.split for v in ds.videos()}):
        for kind, flow in (("rawframes", False), ("flow", True)):
            name = f"{split}_list_{kind}.txt"
            _write(out / name, "".join(list_lines(ds, split, flow)).encode())
            names.append(name)
    label_map = sorted((i, name) for name, i in ds.label_map.items())
    _write(out / "label_map.txt", "".join(f"{i} {name}\n" for i, name in label_map).encode())
    return names


def write_info(ds: Dataset, out: Path, summary: ExportSummary) -> None:
    """export.json: what the pixel values mean and where they came from."""
    flow = ds.info.get("config", {}).get("flow", {})
    info = {
        "format": "rawframes",
        "dataset": str(ds.root),
        "version": ds.version,
        "bound": flow.get("bound"),
        "step": flow.get("step"),
        "quantization": QUANTIZATION,
        "zero_motion": 128,
        "rgb_template": "img_{:05}.jpg",
        "flow_template": FLOW_TMPL,
        "warp_template": WARP_TMPL if summary.warped else None,
        "start_index": 1,
        "videos": summary.videos,
        "frames": summary.frames,
        "flow_fields": summary.flow_fields,
        "lists": summary.lists,
    }
    _write(out / "export.json", (json.dumps(info, indent=2) + "\n").encode())
