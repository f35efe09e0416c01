"""Flow quantization (TSN's convention, rounding rather than truncating):

    q = clip(round(255 * (d + b) / (2b)), 0, 255)     d = q * 2b / 255 - b

so zero motion maps to 128 (127.5 rounded half to even is 128) and one level is 2b/255 px.
The bound b and this formula travel in each sample's metadata; `pipeline.flow.device` holds
the same mapping on a torch device, with the same bytes.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BOUND = 20.0  # quantization bound b in pixels
QUANTIZATION = "q = clip(round(255 * (d + b) / (2 * b)), 0, 255); d = q * 2 * b / 255 - b"


def quantize(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Map float flow (pixels) to uint8 with the shared convention; values beyond +-bound clip."""
    return quantize_inplace(np.array(flow, dtype=np.float32), bound)


def quantize_inplace(values: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """`quantize` of a float32 array that may be overwritten (no temporaries: the encoder's path)."""
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    if values.dtype != np.float32:
        raise ValueError(f"quantize_inplace needs float32 values, got {values.dtype}")
    # float32 throughout, in the formula's order: the same bytes as the expression written out.
    values += np.float32(bound)
    values *= np.float32(255.0 / (2.0 * bound))
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


def dequantize(q: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Inverse of `quantize` up to half a level (bound / 255 px)."""
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    return np.asarray(q, dtype=np.float32) * np.float32(2.0 * bound / 255.0) - np.float32(bound)
