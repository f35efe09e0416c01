"""How to store a quantized flow field: bytes, decode time and error of candidate codecs.

    python bench/flow_codec.py [--pairs 20] [--out table.md]

Flow fields come from OpenCV Farneback on 340x256 frames of a photograph (scikit-image's
astronaut) under zoom, rotation and translation, quantized with the default bound (20 px).
Each codec stores x and y of one field; error is measured on the quantized levels (one
level = 40/255 = 0.157 px) against the exact quantized field.
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from pipeline import encode
from pipeline.flow.quantize import quantize


def photo_pairs(n: int, size=(340, 256)):
    from skimage import data

    img = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY), (size[0] + 80, size[1] + 80))
    rng = np.random.default_rng(0)
    for _ in range(n):
        angle, scale = rng.uniform(-3, 3), rng.uniform(0.97, 1.03)
        m = cv2.getRotationMatrix2D((img.shape[1] / 2, img.shape[0] / 2), angle, scale)
        m[:, 2] += rng.uniform(-4, 4, 2)
        warped = cv2.warpAffine(img, m, img.shape[::-1], flags=cv2.INTER_CUBIC)
        yield img[40:-40, 40:-40], warped[40:-40, 40:-40]


def codecs():
    def png(q):
        ok, b = cv2.imencode(".png", np.dstack([q, np.full(q.shape[:2], 128, np.uint8)]))
        return b.tobytes()

    def png_dec(b):
        return cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)[..., :2]

    def webp(q):
        ok, b = cv2.imencode(".webp", np.dstack([q, np.full(q.shape[:2], 128, np.uint8)]), [cv2.IMWRITE_WEBP_QUALITY, 101])
        return b.tobytes()

    def two_jpegs(q, quality=95):  # TSN's layout: flow_x and flow_y as separate files
        return [cv2.imencode(".jpg", np.ascontiguousarray(q[..., c]), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
                for c in (0, 1)]

    def two_dec(bs):
        return np.stack([cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE) for b in bs], -1)

    out = {f"jpeg q{q} (x over y, one member)": (lambda x, q=q: encode.encode_flow_q(x, q), encode.decode_flow_q)
           for q in (90, 95, 100)}
    out["jpeg q95, x and y as two files (TSN)"] = (two_jpegs, two_dec)
    out["png (lossless)"] = (png, png_dec)
    out["webp (lossless)"] = (webp, png_dec)
    return out


def measure(pairs: int) -> list[tuple[str, float, float, float, float]]:
    fields = [quantize(cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0), 20.0)
              for a, b in photo_pairs(pairs)]
    rows = []
    for name, (enc, dec) in codecs().items():
        blobs = [enc(q) for q in fields]
        t0 = time.perf_counter()
        decoded = [dec(b) for b in blobs]
        ms = (time.perf_counter() - t0) * 1e3 / len(blobs)
        size = np.mean([sum(map(len, b)) if isinstance(b, list) else len(b) for b in blobs])
        err = np.concatenate([np.abs(d.astype(int) - q).ravel() for d, q in zip(decoded, fields)])
        rows.append((name, size, ms, err.mean(), float(err.max())))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    lines = ["| codec | bytes/field | decode ms/field | mean abs error (levels) | max error (levels) |",
             "|---|---:|---:|---:|---:|"]
    for name, size, ms, mean, mx in measure(args.pairs):
        lines.append(f"| {name} | {size:,.0f} | {ms:.2f} | {mean:.3f} | {mx:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        open(args.out, "w").write(table + "\n")


if __name__ == "__main__":
    main()
