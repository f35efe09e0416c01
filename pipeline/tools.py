"""The tools whose output ends up in the stored bytes: part of a version's identity.

The same settings decoded by another ffmpeg, or flow computed by another OpenCV, torch or
torchvision, or on another device or precision, or with other RAFT weights, may give other
bytes. A version id that left them out would let a resume (or a node of a mixed cluster)
put two kinds of bytes under one id. So `fingerprint` names every such tool the settings
use, and nothing else: a torch upgrade does not change the version of an OpenCV build.
Weights are identified by the sha256 of their bytes, never by their path.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.flow.estimators import spec

if TYPE_CHECKING:
    from pipeline.stages.config import WorkerConfig

log = logging.getLogger(__name__)

# Python packages whose code computes stored bytes, by the settings that use them.
_JPEG_PACKAGES = ("simplejpeg",)  # JPEG encoders beside OpenCV's, where installed


@functools.cache
def ffmpeg_version(exe: str) -> str:
    """The version string of an ffmpeg binary ("7.0.2-static", "n7.1", "N-112345-g...")."""
    out = subprocess.run(
        [exe, "-hide_banner", "-version"], stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False
    ).stdout.decode("utf-8", errors="replace")
    m = re.search(r"ffmpeg version (\S+)", out)
    return m.group(1) if m else "unknown"


def _package(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:  # noqa: ARG001 (size, mtime_ns: cache key)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file's bytes (cached per path, size and modification time)."""
    st = Path(path).stat()
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns)


def _weights(flow) -> str:
    """The content hash of the weights the flow estimator loads; "" for estimators without."""
    given = getattr(flow.params, "weights", None)
    cached = spec(flow.algorithm).cached_weights
    try:
        if given is None:
            if cached is None:
                return ""
            given = cached(flow.algorithm)  # the default checkpoint (torchvision's cache), as the estimator finds it
        return weights_sha256(Path(given).expanduser())
    except OSError as exc:  # the estimator reports the missing file when it is built
        log.debug("no weights to hash for %s (%s)", flow.algorithm, exc)
        return "missing"


def fingerprint(cfg: WorkerConfig) -> dict[str, str]:
    """{tool: version} of every tool `cfg`'s output depends on, in this process's environment."""
    import cv2

    from pipeline.decode import resolve_ffmpeg

    out = {"ffmpeg": ffmpeg_version(resolve_ffmpeg()), "opencv": cv2.__version__}  # decode; JPEG; OpenCV flow
    for name in _JPEG_PACKAGES:
        version = _package(name)
        if version:
            out[name] = version
    flow = cfg.flow
    if flow.backend == "torch":
        import torch

        out["torch"] = torch.__version__
        out["flow_device"] = flow.device.split(":", 1)[0]
        out["flow_dtype"] = str(getattr(getattr(flow, "torch_options", None), "dtype", None) or "fp32")
        if out["flow_device"] == "cuda":
            out["cuda"] = str(torch.version.cuda)
    for name in spec(flow.algorithm).packages:  # model code beyond the backend's own (torchvision's RAFT)
        out[name] = _package(name) or "unknown"
    weights = _weights(flow)
    if weights:
        out["weights_sha256"] = weights
    return out
