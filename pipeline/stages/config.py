"""What one video's processing depends on: decode, flow, encode and sample settings.

`WorkerConfig.output_dict` is what a dataset version hashes: every setting that changes the
stored bytes, and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.decode import DecodeConfig
from pipeline.flow.config import FlowConfig
from pipeline.flow.warp import WarpConfig

# 8K UHD: larger frames are refused before decoding, so a tiny file that declares a huge size
# cannot make a worker allocate gigabytes (one rgb24 frame at this limit is about 100 MB).
DEFAULT_MAX_PIXELS = 7680 * 4320
# A video that decodes fewer than this share of the frames its container declares (duration x
# rate) is an error row: a download cut short decodes cleanly up to where it stops. Releases
# before this setting stored such videos (as min_coverage 0 does).
DEFAULT_MIN_COVERAGE = 0.9


@dataclass(frozen=True, kw_only=True)
class EncodeConfig:
    """JPEG qualities of stored frames and flow fields (see docs/FORMAT.md for the choice)."""

    rgb_quality: int = 90
    flow_quality: int = 95

    def __post_init__(self) -> None:
        for name in ("rgb_quality", "flow_quality"):
            if not 1 <= getattr(self, name) <= 100:
                raise ValueError(f"{name} must be within 1..100, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class SampleConfig:
    """What each video sample keeps: every frame (dense) or N clips of L flow fields."""

    clips: int = 0  # 0: dense; N > 0: N uniformly spaced clips per video
    clip_len: int = 10  # L flow fields per clip, the RGB frame at the clip's centre
    max_frames: int = 1500  # frames per sample part: a longer video becomes consecutive parts
    chunk_frames: int = 64  # frames per unit of flow compute (a Ray task)

    def __post_init__(self) -> None:
        if self.clips < 0 or self.clip_len < 1:
            raise ValueError(f"clips must be >= 0 and clip_len >= 1, got {self.clips}, {self.clip_len}")
        if self.max_frames < 2 or self.chunk_frames < 1:
            raise ValueError(
                f"max_frames must be >= 2 and chunk_frames >= 1, got {self.max_frames}, {self.chunk_frames}"
            )

    @property
    def mode(self) -> str:
        return "clips" if self.clips else "dense"


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """Everything one video's processing depends on."""

    decode: DecodeConfig = field(default_factory=DecodeConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    max_pixels: int = DEFAULT_MAX_PIXELS  # a video whose source or stored frame is larger is an error row
    warp: WarpConfig | None = None  # --flow-warp: also store camera-compensated (warped) flow
    # decoded / declared frames below this: an error row (`pipeline.stages.chunks.check_declared`)
    min_coverage: float = DEFAULT_MIN_COVERAGE

    def __post_init__(self) -> None:
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 4:
            raise ValueError(f"max_pixels={self.max_pixels!r} must be an integer >= 4")
        mc = self.min_coverage
        if isinstance(mc, bool) or not isinstance(mc, (int, float)) or not 0.0 <= mc <= 1.0:
            raise ValueError(f"min_coverage={mc!r} must be a number within 0..1")

    def output_dict(self) -> dict:
        """Every setting that changes the stored bytes (hashed into dataset versions)."""
        s = self.sample
        out = {
            "decode": self.decode.output_dict(),
            "flow": self.flow.output_dict(),
            "encode": {"rgb_quality": self.encode.rgb_quality, "flow_quality": self.encode.flow_quality},
            "sample": {"mode": s.mode, "clips": s.clips, "clip_len": s.clip_len, "max_frames": s.max_frames},
            "limits": {"max_pixels": self.max_pixels},
        }
        if self.min_coverage:  # 0 keeps the ids of earlier releases, which had no such limit
            out["limits"]["min_coverage"] = float(self.min_coverage)
        if self.warp is not None:  # only when on: ids of builds without warped flow stay as they were
            out["warp"] = self.warp.output_dict()
        return out
