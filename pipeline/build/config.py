"""A build's settings: per-video work (`pipeline.stages.config.WorkerConfig`) plus shard layout.

`BuildConfig.output_dict` is what a dataset version hashes (`pipeline.build.versions`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline import boxes
from pipeline.build import manifest
from pipeline.stages.config import WorkerConfig

STATE_DIR = ".flowshard"  # OUTPUT's build state: unit records, hash cache, lock, probes
DEFAULT_SHARD_BYTES = 1 << 30  # 1 GiB
DEFAULT_SHARD_SAMPLES = 1000


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    """How samples are grouped into tar shards."""

    max_bytes: int = DEFAULT_SHARD_BYTES
    max_samples: int = DEFAULT_SHARD_SAMPLES
    seed: int = 0  # seeds the shuffle that assigns videos to shards

    def __post_init__(self) -> None:
        if self.max_bytes < 1 << 16:
            raise ValueError(f"shard size must be at least 64 KiB, got {self.max_bytes}")
        if self.max_samples < 1:
            raise ValueError(f"shard sample count must be >= 1, got {self.max_samples}")


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """A whole build: per-video work plus shard layout."""

    worker: WorkerConfig = field(default_factory=WorkerConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    split: int | None = None  # official split number for UCF101/HMDB51 roots
    # {tool: version} of the tools that make the bytes (`pipeline.tools.fingerprint`); the
    # build fills it in, so a changed tool gives another version id.
    tools: Mapping[str, str] = field(default_factory=dict)
    boxes: boxes.BoxesConfig | None = None  # `--boxes FILE`: per-frame boxes stored with the samples

    def output_dict(self) -> dict:
        """Settings (and tools) that change the output bytes."""
        out = {
            **self.worker.output_dict(),
            "shard": {
                "max_bytes": self.shard.max_bytes,
                "max_samples": self.shard.max_samples,
                "seed": self.shard.seed,
            },
        }
        return {**out, "tools": dict(sorted(self.tools.items()))} if self.tools else out

    def config_hash(self) -> str:
        return hashlib.sha256(manifest.dump_json(self.output_dict())).hexdigest()[:16]
