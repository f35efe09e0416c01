"""Mean flow subtraction (Simonyan & Zisserman 2014, section 3.1), `flowshard train --flow-mean-subtract`.

"From each displacement field d we subtract its mean vector": a cheap camera-motion
compensation, removing the global translation a pan or shake adds to every pixel. Applied
to a stacked network input, each field of the stack loses its own mean (x and y apart),
computed over the pixels the network sees (after crop and resize), for every view and
snippet. The stack is channels-first with fields interleaved, [x_0, y_0, x_1, y_1, ...],
so field l's mean vector is the spatial mean of channels 2l and 2l + 1: subtracting each
channel's spatial mean is exactly that. The transform is linear, so it holds for flow in
pixels and for the loader's normalised (q - 128) / 128 values alike.

Unlike warped flow (pipeline.flow.warp), it removes only the translation part of the camera
motion, and it also shifts a scene whose foreground moves as a whole.
"""

from __future__ import annotations

import numpy as np


def subtract_mean_flow(stack: np.ndarray) -> np.ndarray:
    """(..., 2L, H, W) flow stack -> the same with each field's mean vector removed (float32).

    Works on one stack (2L, H, W) or a batch of them, e.g. (V, K, 2L, H, W); returns a new
    array and leaves `stack` unchanged.
    """
    x = np.asarray(stack, dtype=np.float32)
    if x.ndim < 3 or x.shape[-3] % 2:
        raise ValueError(f"a flow stack is (..., 2L, H, W) with x and y per field, got shape {x.shape}")
    return x - x.mean(axis=(-2, -1), keepdims=True, dtype=np.float64).astype(np.float32)
