"""Streaming training data: one WebDataset pipeline from shard files to batches.

    shard list -> split by node -> split by worker -> open + hash -> tar samples
      -> pick clips (pipeline.snippets; keeps only the chosen members' bytes) -> shuffle buffer
      -> decode the chosen frames and flow fields -> transforms -> batches

The pipeline is the list in `build_pipeline`; each stage is a small iterator function.

Modules: sources (dataset folders and URL lists), config (DataConfig), shards (the shard
list of an epoch, EpochBlocks, hashing while reading, tar samples), stages (pick, shuffle,
decode, transform, collate), loader (the pipeline and make_loader). The names jobs use are
importable from the package.
"""

from __future__ import annotations

from training.data.config import TASKS, VERIFY_MODES, DataConfig
from training.data.loader import Loader, make_loader, steps_per_epoch
from training.data.shards import SampleError, ShardHashError
from training.data.sources import DataSource, ShardSpec, open_source, url_source

__all__ = [
    "TASKS",
    "VERIFY_MODES",
    "DataConfig",
    "DataSource",
    "Loader",
    "SampleError",
    "ShardHashError",
    "ShardSpec",
    "make_loader",
    "open_source",
    "steps_per_epoch",
    "url_source",
]
