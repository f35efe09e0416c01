"""JPEG encoders for stored frames and flow fields, on the same pictures, per resolution.

    PYTHONPATH=. python bench/jpeg_encoders.py [--frames 30]

Frames are those of the mixed-resolution photo videos (`bench/media.py`), quality 90, 4:2:0;
fields are Farneback flow of the same videos, quantized into the (2H, W) x-over-y plane,
quality 95, greyscale. Each encoder is timed single-threaded (CPU ms per picture, best of 3
passes) and run twice on every picture: "same bytes" says both runs gave identical bytes (a
build's shards must be byte-reproducible). Sizes are the mean bytes per picture. For frames,
PSNR is that of the decoded JPEG against the exact RGB decode of the frame (ffmpeg's RGB with
exact rounding and full-resolution chroma), whatever the encoder was fed.

- OpenCV: `cv2.imencode` (OpenCV's bundled libjpeg-turbo), fed BGR as it wants, so the RGB
  frame is converted first (what the build did before);
- simplejpeg (libjpeg-turbo's TurboJPEG API): from RGB, with and without its fast DCT, and
  from the decoder's YUV 4:2:0 planes, which JPEG stores as they are (what the build does now);
- fields: OpenCV and simplejpeg on the greyscale plane.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import simplejpeg  # noqa: E402

import media  # noqa: E402
from pipeline import decode, encode  # noqa: E402
from pipeline.decode import DecodeConfig  # noqa: E402
from pipeline.flow.config import FlowConfig  # noqa: E402
from pipeline.flow.estimators import make_estimator  # noqa: E402
from pipeline.flow.quantize import quantize  # noqa: E402


def measure(fn, items) -> tuple[float, float, bool, list[bytes]]:
    """(CPU ms per item, mean bytes, same bytes on a second run, the bytes)."""
    best, first = float("inf"), None
    for _ in range(3):
        t0 = time.process_time()
        out = [fn(x) for x in items]
        best = min(best, (time.process_time() - t0) / len(items) * 1000)
        first = first or out
    return best, sum(map(len, first)) / len(first), first == out, first


def psnr(jpegs: list[bytes], reference: list[np.ndarray]) -> float:
    """PSNR (dB) of the decoded JPEGs against the exact RGB decode of the same frames."""
    got = np.stack([encode.decode_rgb(b) for b in jpegs]).astype(np.float64)
    mse = float(np.mean((got - np.stack(reference).astype(np.float64)) ** 2))
    return 10 * np.log10(255.0 ** 2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/flowshard_jpeg_bench"))
    args = ap.parse_args()
    cv2.setNumThreads(1)
    paths = media.write_mixed(args.workdir, args.frames)
    farneback = make_estimator(FlowConfig(algorithm="farneback"))
    frame_encoders = {
        "OpenCV imencode (RGB -> BGR first)": (lambda f: encode.encode_rgb(f, 90), "rgb"),
        "simplejpeg from RGB": (lambda f: simplejpeg.encode_jpeg(f, 90, "RGB", "420"), "rgb"),
        "simplejpeg from RGB, fast DCT": (lambda f: simplejpeg.encode_jpeg(f, 90, "RGB", "420", True), "rgb"),
        "simplejpeg from YUV planes (now)": (lambda f: encode.encode_planes(*decode.split_planes(f), 90), "yuv"),
    }
    field_encoders = {
        "OpenCV imencode (now)": lambda p: cv2.imencode(".jpg", p, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(),
        "simplejpeg": lambda p: simplejpeg.encode_jpeg(p[..., None], 95, "GRAY", "Gray"),
        "simplejpeg, fast DCT": lambda p: simplejpeg.encode_jpeg(p[..., None], 95, "GRAY", "Gray", True),
    }
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"OpenCV {cv2.__version__}, simplejpeg {simplejpeg.__version__}; CPU ms per picture, best of 3")
    print("| picture | size | encoder | CPU ms | KB | same bytes | PSNR dB |\n|---|---|---|---:|---:|---|---:|")
    for path in paths:
        cfg = DecodeConfig(resize="none")
        rgb = [f for f, _ in decode.iter_frames(str(path), cfg)]
        yuv = [f for f, _ in decode.iter_planes(str(path), cfg)]
        size = f"{rgb[0].shape[1]}x{rgb[0].shape[0]}"
        for name, (fn, kind) in frame_encoders.items():
            ms, nbytes, same, jpegs = measure(fn, rgb if kind == "rgb" else yuv)
            print(f"| frame (q90) | {size} | {name} | {ms:.3f} | {nbytes / 1000:.1f} | {'yes' if same else 'NO'} "
                  f"| {psnr(jpegs, rgb):.2f} |")
        lumas = [decode.split_planes(f)[0] for f in yuv[:9]]
        planes = []
        for a, b in zip(lumas, lumas[1:]):
            q = quantize(farneback(a[None], b[None])[0], 20.0)
            planes.append(np.ascontiguousarray(np.concatenate([q[..., 0], q[..., 1]])))
        for name, fn in field_encoders.items():
            ms, nbytes, same, _ = measure(fn, planes)
            print(f"| field (q95) | {size} | {name} | {ms:.3f} | {nbytes / 1000:.1f} | {'yes' if same else 'NO'} | |")


if __name__ == "__main__":
    main()
