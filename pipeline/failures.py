"""Why a video failed, in two kinds: transient (retry it) or permanent (the file is broken).

A decode error of a broken file fails the same way every time: retrying it wastes the
cluster, and its error row belongs in the version. A lost worker or node, an out-of-memory
kill, a throttled bucket or a dropped connection says nothing about the file: the video is
retried within the build, and if it still fails its row says "transient", so that
`flowshard build --retry-errors` can recompute it later.

Ray's errors are recognised by class name, so this module (and the pipeline stages that
use it) never import Ray.
"""
from __future__ import annotations

import errno
import re
from collections.abc import Iterator

from pipeline import storage

TRANSIENT = "transient"
PERMANENT = "permanent"
KINDS = (TRANSIENT, PERMANENT)
MAX_ATTEMPTS = 3  # tries of a video (or of a unit's writer) lost to transient failures, per build

# Ray errors that mean "the machine, not the video": a process, node or object was lost.
_RAY_TRANSIENT = frozenset({
    "WorkerCrashedError", "LocalRayletDiedError", "NodeDiedError", "OutOfMemoryError", "OutOfDiskError",
    "ObjectStoreFullError", "ObjectLostError", "ObjectFetchTimedOutError", "OwnerDiedError",
    "ObjectFreedError", "ObjectReconstructionFailedError", "ObjectReconstructionFailedMaxAttemptsExceededError",
    "ObjectReconstructionFailedLineageEvictedError", "ReferenceCountingAssertionError", "RaySystemError",
    "RayActorError", "ActorDiedError", "ActorUnavailableError", "RpcError", "GetTimeoutError",
    "PlasmaObjectNotAvailable", "TaskPlacementGroupRemoved", "ActorPlacementGroupRemoved",
})
# The machine running out of something, not the file being wrong.
_MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EDQUOT})
# ffmpeg killed by SIGKILL: the kernel's or Ray's out-of-memory killer, never the input itself.
_KILLED = re.compile(r"ffmpeg exited with code -9\b")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what it wraps (a Ray task error's `cause`) and what caused it."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        cause = getattr(e, "cause", None)
        todo.extend(x for x in (cause, e.__cause__, e.__context__) if isinstance(x, BaseException))


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def kind_of(exc: BaseException) -> str:
    """TRANSIENT for a lost worker or node, memory, storage or connection trouble; else PERMANENT."""
    for e in _chain(exc):
        if _class_names(e) & _RAY_TRANSIENT or isinstance(e, MemoryError):
            return TRANSIENT
        if isinstance(e, OSError) and e.errno in _MACHINE_ERRNOS:
            return TRANSIENT
        if storage.is_transient(e) or _KILLED.search(str(e)):
            return TRANSIENT
    return PERMANENT
