"""Manifests: Parquet rows per video and per shard, and dataset.json, the commit record.

dataset.json is written last and atomically: a dataset folder without it is an unfinished
build, and readers refuse it. Each version has its own folder (OUTPUT/versions/<id>/, see
`pipeline.version`); the top-level files are copies of the latest version's, refreshed after
the version's folder is complete, dataset.json last.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DATASET_JSON = "dataset.json"
MANIFEST = "manifest.parquet"
SHARDS = "shards.parquet"
SHARD_DIR = "shards"

VIDEO_SCHEMA = pa.schema([
    ("id", pa.string()), ("path", pa.string()), ("label", pa.string()), ("label_id", pa.int32()),
    ("split", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("frames", pa.int64()), ("flow_fields", pa.int64()), ("parts", pa.int32()),
    ("shard", pa.string()), ("bytes", pa.int64()), ("sha256", pa.string()),
    ("content_sha256", pa.string()), ("media_key", pa.string()),
])
SHARD_SCHEMA = pa.schema([
    ("name", pa.string()), ("split", pa.string()), ("samples", pa.int64()),
    ("bytes", pa.int64()), ("sha256", pa.string()),
])


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file under a temporary name, fsync it, then rename it into place.

    On failure (a full disk, an unwritable folder) the temporary file is removed, the old
    file stays as it was, and the OSError names the file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise os_error(exc, f"{path}: cannot write it ({exc.strerror or exc})") from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise


def os_error(exc: OSError, message: str) -> OSError:
    """`exc` restated as `message` (naming the file), keeping its type and errno."""
    err = type(exc)(message)
    err.errno = exc.errno
    return err


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # the folder itself is gone or unwritable: nothing was left behind
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EROFS, errno.EACCES):
            raise


def table_bytes(rows: list[dict], schema: pa.Schema) -> bytes:
    """Rows -> Parquet bytes with a fixed schema and no creation-time metadata drift."""
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=True)
    return sink.getvalue().to_pybytes()


def write_parquet(path: str | Path, rows: list[dict], schema: pa.Schema) -> None:
    """Write rows as a Parquet file atomically."""
    atomic_write_bytes(path, table_bytes(rows, schema))


def dump_json(obj: dict) -> bytes:
    """Canonical, human-readable JSON bytes (sorted keys, so equal content gives equal bytes)."""
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def write_manifest(output: str | Path, videos: list[dict], shards: list[dict], info: dict) -> None:
    """Write manifest.parquet and shards.parquet, then dataset.json last (the commit)."""
    output = Path(output)
    write_parquet(output / MANIFEST, sorted(videos, key=lambda r: r["id"]), VIDEO_SCHEMA)
    write_parquet(output / SHARDS, sorted(shards, key=lambda r: r["name"]), SHARD_SCHEMA)
    atomic_write_bytes(output / DATASET_JSON, dump_json(info))


def publish_latest(output: str | Path, version_folder: str | Path) -> None:
    """Copy a committed version's manifests to the top level, dataset.json (the pointer) last."""
    output, folder = Path(output), Path(version_folder)
    for name in (MANIFEST, SHARDS, DATASET_JSON):
        atomic_write_bytes(output / name, (folder / name).read_bytes())


def read_info(output: str | Path) -> dict:
    """dataset.json of a finished dataset; a clear error when the folder holds none."""
    path = Path(output) / DATASET_JSON
    if not path.exists():
        raise FileNotFoundError(f"{output}: no {DATASET_JSON}: not a flowshard dataset, or its build did not finish")
    return json.loads(path.read_text())


def read_rows(path: str | Path) -> list[dict]:
    """All rows of a Parquet manifest as dicts."""
    return pq.read_table(path).to_pylist()
