"""Manifests: Parquet rows per video and per shard, and dataset.json, the commit record.

dataset.json is written last and atomically: a dataset folder without it is an unfinished
build, and readers refuse it. Each version has its own folder (OUTPUT/versions/<id>/, see
`pipeline.build.versions`); the top-level files are copies of the latest version's, refreshed after
the version's folder is complete, dataset.json last. Every file goes through
`pipeline.storage`, so a dataset folder may be a local path or a bucket prefix (s3://...).
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.storage import Location

DATASET_JSON = "dataset.json"
MANIFEST = "manifest.parquet"
SHARDS = "shards.parquet"
SHARD_DIR = "shards"

VIDEO_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("path", pa.string()),
        ("label", pa.string()),
        ("label_id", pa.int32()),
        ("split", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("error_kind", pa.string()),
        ("frames", pa.int64()),
        ("flow_fields", pa.int64()),
        ("parts", pa.int32()),
        ("shard", pa.string()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("content_sha256", pa.string()),
        ("media_key", pa.string()),
        ("boxes", pa.string()),
        ("declared_frames", pa.int64()),
        ("decoded_frames", pa.int64()),
    ]
)
SHARD_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("split", pa.string()),
        ("samples", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
    ]
)


def atomic_write_bytes(path: Location, data: bytes) -> None:
    """Write a file so that readers see the old bytes or the new ones, never a part.

    Locally: a temporary name, fsync, rename; on failure (a full disk, an unwritable
    folder) the temporary file is removed and the old file stays as it was. On object
    storage: one upload to the final key, visible only once complete. The OSError names the file.
    """
    try:
        storage.write_bytes_atomic(path, data)
    except OSError as exc:
        raise os_error(exc, f"{path}: cannot write it ({exc.strerror or exc})") from exc


def os_error(exc: OSError, message: str) -> OSError:
    """`exc` restated as `message` (naming the file), keeping its type and errno."""
    err = type(exc)(message)
    err.errno = exc.errno
    return err


def table_bytes(rows: list[dict], schema: pa.Schema) -> bytes:
    """Rows -> Parquet bytes with a fixed schema and no creation-time metadata drift."""
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=True)
    return sink.getvalue().to_pybytes()


def write_parquet(path: Location, rows: list[dict], schema: pa.Schema) -> None:
    """Write rows as a Parquet file atomically."""
    atomic_write_bytes(path, table_bytes(rows, schema))


def dump_json(obj: dict) -> bytes:
    """Canonical, human-readable JSON bytes (sorted keys, so equal content gives equal bytes)."""
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def write_manifest(output: Location, videos: list[dict], shards: list[dict], info: dict) -> None:
    """Write manifest.parquet and shards.parquet, then dataset.json last (the commit)."""
    write_parquet(storage.join(output, MANIFEST), sorted(videos, key=lambda r: r["id"]), VIDEO_SCHEMA)
    write_parquet(storage.join(output, SHARDS), sorted(shards, key=lambda r: r["name"]), SHARD_SCHEMA)
    atomic_write_bytes(storage.join(output, DATASET_JSON), dump_json(info))


def publish_latest(output: Location, version_folder: Location) -> None:
    """Copy a committed version's manifests to the top level, dataset.json (the pointer) last."""
    for name in (MANIFEST, SHARDS, DATASET_JSON):
        atomic_write_bytes(storage.join(output, name), storage.read_bytes(storage.join(version_folder, name)))


def read_info(output: Location) -> dict:
    """dataset.json of a finished dataset; a clear error when the folder holds none."""
    try:
        data = storage.read_bytes(storage.join(output, DATASET_JSON))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{output}: no {DATASET_JSON}: not a flowshard dataset, or its build did not finish"
        ) from None
    return json.loads(data)


def read_rows(path: Location) -> list[dict]:
    """All rows of a Parquet manifest as dicts."""
    if storage.is_remote(path):
        return pq.read_table(pa.BufferReader(storage.read_bytes(path))).to_pylist()
    return pq.read_table(path).to_pylist()
