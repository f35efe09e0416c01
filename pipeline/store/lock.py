"""Exclusive locks on a location: flock locally, a refreshed lease object remotely."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from pipeline.store.atomic import remove, write_bytes_atomic
from pipeline.store.files import read_bytes
from pipeline.store.locations import Location, is_remote
from pipeline.store.retry import remote as _remote

log = logging.getLogger("pipeline.storage")

LOCK_TTL_S = 600.0  # a remote lock not refreshed for this long belongs to a dead build
WAIT_POLL_S = 0.5  # how often a waiting writer tries the lock again


class LockHeld(RuntimeError):
    """Another writer holds a lock; the message says who and where."""


class Lock:
    """A held lock; `check()` raises LockHeld if another writer took it over since."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.lost: str | None = None

    def check(self) -> None:
        """Raise LockHeld when the lock was lost (remote locks only; a kernel lock cannot be)."""
        if self.lost:
            raise LockHeld(self.lost)


@contextlib.contextmanager
def lock(loc: Location, *, ttl: float = LOCK_TTL_S, wait_s: float = 0.0) -> Iterator[Lock]:
    """Hold an exclusive lock at `loc` while the block runs; LockHeld if another process holds it
    for longer than `wait_s` seconds (0: refuse at once). Only taking the lock is retried,
    every `WAIT_POLL_S`, never the block.
    """
    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        stack = contextlib.ExitStack()
        try:
            held = stack.enter_context(_lock_once(loc, ttl))
        except LockHeld:
            if time.monotonic() >= deadline:
                raise
            time.sleep(WAIT_POLL_S)
            continue
        break
    with stack:
        yield held


@contextlib.contextmanager
def _lock_once(loc: Location, ttl: float) -> Iterator[Lock]:
    """One try at the lock.

    Locally: flock on the file; the kernel releases it when the holder dies. Remotely there is
    no flock: the lock is an object created only if absent (If-None-Match), naming its holder
    (host, pid, token) and refreshed every ttl/3 by a background thread. A lock is stale, and
    taken over, when its holder has not refreshed it for `ttl` seconds or is a dead process
    on this machine. This detects concurrent writers; it is not a consensus protocol.
    """
    if not is_remote(loc):
        with _flock(Path(loc)) as held:
            yield held
        return
    lease = _Lease(str(loc), ttl)
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[Lock]:
    import fcntl

    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LockHeld(f"{path} is held by another process") from exc
        yield Lock(str(path))


class _Lease(Lock):
    """A lock object on a remote store, refreshed while held."""

    def __init__(self, url: str, ttl: float) -> None:
        super().__init__(url)
        self.url, self.ttl = url, ttl
        self.token = uuid.uuid4().hex
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def body(self) -> bytes:
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": self.token,
                "refreshed": time.time(),
                "ttl": self.ttl,
            },
            sort_keys=True,
        ).encode()

    def holder(self) -> dict | None:
        try:
            return json.loads(read_bytes(self.url))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # unreadable: treated as stale below

    def acquire(self) -> None:
        for _ in range(3):
            try:
                _remote(self.url, "cannot create the lock", lambda fs, p: fs.pipe_file(p, self.body(), mode="create"))
            except FileExistsError:
                held = self.holder()
                if held is None:
                    continue  # released meanwhile: try again
                if held.get("token") == self.token:
                    break  # our own create went through, but its response was lost and retried
                reason = _stale_reason(held, self.ttl)
                if reason is None:
                    raise LockHeld(f"{self.url} is held by {_describe(held)}") from None
                log.warning("%s: taking over a stale lock (%s)", self.url, reason)
                remove(self.url)
                continue
            break
        else:
            raise LockHeld(f"{self.url}: could not take the lock (it keeps changing hands)")
        # Stores that ignore If-None-Match overwrite instead: reading back catches a writer
        # that raced past the check in between.
        if (self.holder() or {}).get("token") != self.token:
            raise LockHeld(f"{self.url} was taken by another writer at the same moment")
        self.thread = threading.Thread(target=self._refresh, name="flowshard-lock", daemon=True)
        self.thread.start()

    def _refresh(self) -> None:
        while not self.stop.wait(self.ttl / 3):
            try:
                held = self.holder() or {}
                if held.get("token") != self.token:
                    self.lost = f"{self.url}: the lock was taken over by {_describe(held)}"
                    log.error("%s", self.lost)
                    return
                write_bytes_atomic(self.url, self.body())
            except OSError as exc:  # a failed refresh is retried at the next tick
                log.warning("%s: cannot refresh the lock (%s)", self.url, exc)

    def release(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
        try:
            if (self.holder() or {}).get("token") == self.token:
                remove(self.url)
        except OSError as exc:  # the next build finds it stale after ttl
            log.warning("%s: cannot release the lock (%s)", self.url, exc)


def _stale_reason(held: dict, ttl: float) -> str | None:
    """Why a held lock is stale, or None when its holder may be alive."""
    if not held:
        return "unreadable lock object"
    age = time.time() - float(held.get("refreshed", 0))
    if age > float(held.get("ttl", ttl)):
        return f"not refreshed for {age:.0f} s"
    if held.get("host") == socket.gethostname() and not _pid_alive(int(held.get("pid", -1))):
        return f"its process {held.get('pid')} on this machine is gone"
    return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


def _describe(held: dict) -> str:
    if not held:
        return "an unknown writer"
    age = time.time() - float(held.get("refreshed", 0))
    return f"process {held.get('pid')} on {held.get('host')} (refreshed {age:.0f} s ago)"
