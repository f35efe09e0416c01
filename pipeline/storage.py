"""Where bytes live: local paths and fsspec URLs (s3://, gs://, memory://, ...) behind one API.

Every module that reads or writes datasets, inputs or state goes through here, so this is
the one place that knows the difference. The code lives in `pipeline.store`, one module per
concern; this module is the namespace callers use (`from pipeline import storage`):

- locations (`pipeline.store.locations`): a local location is a `pathlib.Path`, a remote one
  its URL string; `join`, `name`, `parent`, `normalize_url`.
- configuration (`pipeline.store.config`): `--storage-options`, fsspec's config and the
  environment, and one filesystem per protocol and process.
- retries (`pipeline.store.retry`): whole-object operations retried, bounded, on transient
  errors only (throttling, 5xx, dropped connections).
- reading (`pipeline.store.files`): stat, open, read, hash and list.
- atomic writes (`pipeline.store.atomic`): readers see the old bytes or the new ones.
- the input cache (`pipeline.store.cache`): local copies of remote inputs per machine.
- locks (`pipeline.store.lock`): flock locally, a refreshed lease object remotely.
"""

from __future__ import annotations

from pipeline.store.atomic import makedirs, put_file, remove, write_bytes_atomic
from pipeline.store.cache import CACHE_BYTES, local_copy
from pipeline.store.config import REQUEST_ATTEMPTS, configure, filesystem, fsspec_env, options_for, parse_options, reset
from pipeline.store.files import (
    HASH_CHUNK,
    READ_BLOCK,
    FileStat,
    exists,
    isdir,
    isfile,
    list_dirs,
    list_entries,
    list_files,
    open_read,
    read_bytes,
    read_text,
    sha256,
    size,
    stat,
    stat_many,
    walk_files,
)
from pipeline.store.locations import Location, is_remote, join, location, name, normalize_url, parent, scheme
from pipeline.store.lock import LOCK_TTL_S, Lock, LockHeld, lock
from pipeline.store.retry import OBJECT_ATTEMPTS, is_transient, retry

__all__ = [
    "CACHE_BYTES",
    "HASH_CHUNK",
    "LOCK_TTL_S",
    "OBJECT_ATTEMPTS",
    "READ_BLOCK",
    "REQUEST_ATTEMPTS",
    "FileStat",
    "Location",
    "Lock",
    "LockHeld",
    "configure",
    "exists",
    "filesystem",
    "fsspec_env",
    "is_remote",
    "is_transient",
    "isdir",
    "isfile",
    "join",
    "list_dirs",
    "list_entries",
    "list_files",
    "local_copy",
    "location",
    "lock",
    "makedirs",
    "name",
    "normalize_url",
    "open_read",
    "options_for",
    "parent",
    "parse_options",
    "put_file",
    "read_bytes",
    "read_text",
    "remove",
    "reset",
    "retry",
    "scheme",
    "sha256",
    "size",
    "stat",
    "stat_many",
    "walk_files",
    "write_bytes_atomic",
]
