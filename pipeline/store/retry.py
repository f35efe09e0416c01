"""Retries of whole-object operations on transient storage errors.

botocore retries each request on throttling (503 SlowDown), 5xx and dropped connections
("standard" mode, `REQUEST_ATTEMPTS` attempts with exponential backoff), and s3fs retries
SlowDown and timeouts again. Whole-object operations (read, write, upload, stat, list) are
retried once more here, bounded (`OBJECT_ATTEMPTS`), on the same transient errors only: a
missing object or a refused credential fails at once.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pipeline.store.config import filesystem

log = logging.getLogger("pipeline.storage")

T = TypeVar("T")

OBJECT_ATTEMPTS = 4  # per whole-object operation, here
RETRY_BASE_S = 0.25

_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "BadGateway",
        "GatewayTimeout",
        "500",
        "502",
        "503",
        "504",
    }
)
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.EBUSY,
        getattr(errno, "EREMOTEIO", errno.EIO),
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EAGAIN,
        errno.EPIPE,
    }
)
# Connection-level failures from aiohttp, botocore and fsspec, matched by name: importing
# them would make every local-only user load the whole S3 stack.
_TRANSIENT_TYPES = frozenset(
    {
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ResponseStreamingError",
        "IncompleteReadError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ClientConnectionError",
        "ClientOSError",
        "ServerTimeoutError",
        "FSTimeoutError",
        "IncompleteRead",
    }
)
_STORAGE_MODULES = frozenset(
    {"botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec", "gcsfs", "adlfs", "google", "azure", "urllib3", "requests"}
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: throttling, 5xx, timeouts, dropped connections."""
    for e in _chain(exc):
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        if isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in _TRANSIENT_TYPES:
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                return True
    return False


def retry(fn: Callable[[], T], what: str, *, attempts: int = OBJECT_ATTEMPTS) -> T:
    """`fn()`, retried with exponential backoff and jitter on transient errors only.

    Other errors, and the last transient one, are raised as OSError naming `what` (the URL).
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # classified below: only transient storage errors are retried
            if not _from_storage(exc):
                raise
            if not is_transient(exc) or attempt == attempts:
                raise _as_os_error(exc, what, attempt) from exc
            delay = RETRY_BASE_S * 2 ** (attempt - 1) * (0.5 + random.random())
            log.warning(
                "%s: transient storage error (%s); retry %d of %d in %.1f s",
                what,
                _short(exc),
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def _from_storage(exc: BaseException) -> bool:
    """An error of the storage stack (I/O, botocore, aiohttp, fsspec), not a bug to re-raise as is."""
    return isinstance(exc, (OSError, TimeoutError)) or type(exc).__module__.split(".")[0] in _STORAGE_MODULES


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _as_os_error(exc: Exception, what: str, attempts: int) -> OSError:
    """`exc` as an OSError whose message names `what`; FileNotFoundError etc. keep their type."""
    tried = f" after {attempts} attempts" if attempts > 1 else ""
    if isinstance(exc, OSError):
        try:
            err = type(exc)(f"{what}: {exc.strerror or exc}{tried}")
        except TypeError:  # a subclass with another constructor
            err = OSError(f"{what}: {exc.strerror or exc}{tried}")
        err.errno = exc.errno
        return err
    return OSError(f"{what}: {_short(exc)}{tried}")


def remote(url: str, what: str, op: Callable[[Any, str], T]) -> T:
    fs, path = filesystem(url)
    return retry(lambda: op(fs, path), f"{url}: {what}" if what else url)
