"""Streaming video decode with ffmpeg-python (placeholder: resolve_ffmpeg only)."""
from __future__ import annotations

import functools
import shutil


@functools.lru_cache(maxsize=1)
def resolve_ffmpeg() -> str:
    """The ffmpeg binary: from PATH, else the one imageio-ffmpeg ships."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()
