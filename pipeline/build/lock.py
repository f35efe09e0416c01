"""OUTPUT's writer lock: one build or prune of a folder at a time.

A build and a prune both rewrite the catalog and the top-level manifests, and a prune deletes
shards a build might copy from, so both hold the same lock. Locally the kernel releases it when
the holder dies, so a killed writer never leaves a stale lock behind. On object storage it is an
object that a killed writer leaves behind: the next one takes it over once its holder is a dead
process on this machine or has not refreshed it for `storage.LOCK_TTL_S` seconds (see `storage.lock`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pipeline import storage
from pipeline.build import manifest
from pipeline.build.config import STATE_DIR
from pipeline.storage import Location

LOCK_FILE = "lock"


@contextlib.contextmanager
def writer_lock(out: Location, *, wait_s: float = 0.0) -> Iterator[storage.Lock]:
    """Hold OUTPUT's writer lock, waiting up to `wait_s` seconds for another build or prune to
    finish; RuntimeError naming the holder when it does not finish in time."""
    path = storage.join(out, STATE_DIR, LOCK_FILE)
    try:
        with storage.lock(path, wait_s=wait_s) as held:
            yield held
    except storage.LockHeld as exc:
        raise RuntimeError(f"{out}: another build is writing to this folder, or a prune ({exc})") from exc
    except OSError as exc:
        raise manifest.os_error(exc, f"{path}: cannot open the build lock ({exc.strerror or exc})") from exc
