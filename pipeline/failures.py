"""Why a video failed, in two kinds: transient (retry it) or permanent (the file is broken).

A decode error of a broken file fails the same way every time: retrying it wastes the
cluster, and its error row belongs in the version. A lost worker or node, an out-of-memory
kill, a throttled bucket or a dropped connection says nothing about the file: the video is
retried within the build, and if it still fails its row says "transient", so that
`flowshard build --retry-errors` can recompute it later.

Ray's errors are recognised by class name, so this module (and the pipeline stages that
use it) never import Ray.

An exception crosses from a Ray worker to the driver pickled, and pickling loses what the
classification needs: the chain (`__cause__`), an OSError's errno set after construction, and
whole classes whose `__init__` takes other arguments than `args` (botocore's ClientError; Ray
then reports "Failed to deserialize exception"). So a task classifies its error where it
happened, with the whole chain at hand, and raises `CarriedError` (reason and kind, plain
strings) instead (`carried`); the driver reads both back intact.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterator
from typing import TypeVar

from pipeline import storage

TRANSIENT = "transient"
PERMANENT = "permanent"
KINDS = (TRANSIENT, PERMANENT)
MAX_ATTEMPTS = 3  # tries of a video (or of a unit's writer) lost to transient failures, per build

# Ray errors that mean "the machine, not the video": a process, node or object was lost.
_RAY_TRANSIENT = frozenset(
    {
        "WorkerCrashedError",
        "LocalRayletDiedError",
        "NodeDiedError",
        "OutOfMemoryError",
        "OutOfDiskError",
        "ObjectStoreFullError",
        "ObjectLostError",
        "ObjectFetchTimedOutError",
        "OwnerDiedError",
        "ObjectFreedError",
        "ObjectReconstructionFailedError",
        "ObjectReconstructionFailedMaxAttemptsExceededError",
        "ObjectReconstructionFailedLineageEvictedError",
        "ReferenceCountingAssertionError",
        "RaySystemError",
        "RayActorError",
        "ActorDiedError",
        "ActorUnavailableError",
        "RpcError",
        "GetTimeoutError",
        "PlasmaObjectNotAvailable",
        "TaskPlacementGroupRemoved",
        "ActorPlacementGroupRemoved",
    }
)
# The machine running out of something, not the file being wrong.
_MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EDQUOT})
# ffmpeg killed by SIGKILL: the kernel's or Ray's out-of-memory killer, never the input itself.
_KILLED = re.compile(r"ffmpeg exited with code -9\b")


T = TypeVar("T")


class CarriedError(Exception):
    """An error of a worker restated as its reason and kind, which survive pickling intact."""

    def __init__(self, reason: str, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {KINDS}")
        super().__init__(reason, kind)
        self.reason, self.kind = reason, kind

    def __str__(self) -> str:
        return self.reason


def reason_of(exc: BaseException) -> str:
    """The error's message; its class name where the message is empty or only an errno."""
    text = str(exc).strip()
    return text if text and not text.isdigit() else f"{type(exc).__name__}{': ' + text if text else ''}"


def carried(exc: BaseException) -> CarriedError:
    """`exc` restated with its reason and kind, both decided here where its whole chain is known."""
    return exc if isinstance(exc, CarriedError) else CarriedError(reason_of(exc), kind_of(exc))


def carrying(fn: Callable[[], T]) -> T:
    """fn(), any Exception it raises re-raised as `carried(exc)` (from exc, for local tracebacks)."""
    try:
        return fn()
    except Exception as exc:
        raise carried(exc) from exc


def carrying_iter(items: Iterator[T]) -> Iterator[T]:
    """The items of an iterator (a generator task's body), an Exception re-raised as `carried(exc)`."""
    try:
        yield from items
    except Exception as exc:
        raise carried(exc) from exc


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
        said = getattr(e, "kind", None)  # decided where it was raised (CarriedError, DecodeError)
        if isinstance(said, str) and said in KINDS:
            return said
        if _class_names(e) & _RAY_TRANSIENT or isinstance(e, MemoryError):
            return TRANSIENT
        if isinstance(e, OSError) and e.errno in _MACHINE_ERRNOS:
            return TRANSIENT
        if storage.is_transient(e) or _KILLED.search(str(e)):
            return TRANSIENT
    return PERMANENT
