"""Where bytes live: local paths and fsspec URLs (s3://, gs://, memory://, ...) behind one API.

Every module that reads or writes datasets, inputs or state goes through here, so this is
the one place that knows the difference.

Locations. A local location is a `pathlib.Path` (local code keeps its behaviour and bytes);
a remote one is its URL string, "s3://bucket/prefix/name" (`location`, `join`, `name`).
`file://` URLs are local paths.

Atomic writes. Locally: a temporary name in the same folder, fsync, rename. On object
storage an object becomes visible only when its upload completes (one PUT, or a multipart
upload whose parts are committed by its last request), so the final key is written
directly and a failed or killed upload leaves nothing visible; s3fs aborts a failed
multipart upload, and one cut off by a killed process stays invisible (an
AbortIncompleteMultipartUpload lifecycle rule reclaims its parts). Larger objects, such as
tar shards, are assembled in a local temporary file and uploaded whole (`put_file`).

Retries. botocore retries each request on throttling (503 SlowDown), 5xx and dropped
connections ("standard" mode, `REQUEST_ATTEMPTS` attempts with exponential backoff), and
s3fs retries SlowDown and timeouts again. Whole-object operations (read, write, upload,
stat, list) are retried once more here, bounded (`OBJECT_ATTEMPTS`), on the same transient
errors only: a missing object or a refused credential fails at once.

Configuration, in increasing priority: the usual environment of each filesystem
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION or an
instance role for s3), fsspec's own config (files in FSSPEC_CONFIG_DIR, or
FSSPEC_S3='{"endpoint_url": ...}'), then `configure` (`flowshard --storage-options JSON`).
"""
from __future__ import annotations

import contextlib
import copy
import errno
import functools
import hashlib
import json
import logging
import os
import posixpath
import random
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

log = logging.getLogger(__name__)

Location = Path | str
T = TypeVar("T")

REQUEST_ATTEMPTS = 10  # per HTTP request, inside botocore
OBJECT_ATTEMPTS = 4  # per whole-object operation, here
RETRY_BASE_S = 0.25
READ_BLOCK = 8 << 20  # range-request size of streamed remote reads
HASH_CHUNK = 1 << 20
LOCK_TTL_S = 600.0  # a remote lock not refreshed for this long belongs to a dead build
CACHE_BYTES = 8 << 30  # local copies of remote inputs kept per machine

_S3_DEFAULTS = {"config_kwargs": {"retries": {"max_attempts": REQUEST_ATTEMPTS, "mode": "standard"}}}
# Listings are never cached: other processes (Ray tasks, a resumed build) write the same
# prefixes, and a stale cached listing would report a written shard as missing.
_COMMON_DEFAULTS = {"use_listings_cache": False}
_EXPLICIT: dict[str, dict] = {}  # protocol -> options given to `configure`; "*" for every protocol
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestLimitExceeded", "TooManyRequests", "RequestTimeout", "InternalError", "ServiceUnavailable",
    "BadGateway", "GatewayTimeout", "500", "502", "503", "504",
})
_TRANSIENT_ERRNOS = frozenset({errno.EBUSY, getattr(errno, "EREMOTEIO", errno.EIO), errno.ECONNRESET,
                               errno.ECONNABORTED, errno.ETIMEDOUT, errno.EAGAIN, errno.EPIPE})
# Connection-level failures from aiohttp, botocore and fsspec, matched by name: importing
# them would make every local-only user load the whole S3 stack.
_TRANSIENT_TYPES = frozenset({
    "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
    "ResponseStreamingError", "IncompleteReadError", "ClientPayloadError", "ServerDisconnectedError",
    "ClientConnectionError", "ClientOSError", "ServerTimeoutError", "FSTimeoutError", "IncompleteRead",
})


_STORAGE_MODULES = frozenset({"botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec", "gcsfs", "adlfs", "google",
                              "azure", "urllib3", "requests"})


class LockHeld(RuntimeError):
    """Another writer holds a lock; the message says who and where."""


# --- locations --------------------------------------------------------------------------------

def scheme(loc: Location) -> str:
    """The URL scheme of a location ("" for a local path)."""
    text = str(loc)
    return text.split("://", 1)[0].lower() if "://" in text else ""


def is_remote(loc: Location) -> bool:
    """True for a URL other than file://, i.e. anything fsspec must open."""
    return scheme(loc) not in ("", "file")


def location(loc: Location) -> Location:
    """A local path as a Path (file:// URLs included), a remote URL as a string without a trailing "/"."""
    if is_remote(loc):
        text = str(loc)
        return text if text.endswith("://") else text.rstrip("/")
    text = str(loc)
    return Path(text[len("file://"):]) if text.startswith("file://") else Path(text)


def join(base: Location, *parts: str) -> Location:
    """`base / part / ...`: a Path locally, a URL with "/" separators remotely."""
    if not is_remote(base):
        return Path(location(base), *parts)
    out = str(location(base))
    for part in parts:
        out = f"{out}/{str(part).strip('/')}" if part else out
    return out


def name(loc: Location) -> str:
    """The last component of a location."""
    return Path(loc).name if not is_remote(loc) else str(location(loc)).rsplit("/", 1)[-1]


def parent(loc: Location) -> Location:
    """The folder (or prefix) holding a location."""
    if not is_remote(loc):
        return Path(loc).parent
    head, _, tail = str(location(loc)).rpartition("/")
    return head if head and not head.endswith(":/") else str(loc)


def normalize_url(url: str) -> str:
    """A URL with "." and ".." resolved in its key ("s3://b/lists/../v/a.mp4" -> "s3://b/v/a.mp4")."""
    proto, _, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    key = posixpath.normpath(key) if key else ""
    if key.startswith("..") or key == ".":
        raise ValueError(f"{url!r} points outside its bucket")
    return f"{proto}://{bucket}/{key}" if key else f"{proto}://{bucket}"


# --- configuration ----------------------------------------------------------------------------

def parse_options(text: str) -> dict:
    """`--storage-options` JSON -> {protocol: options} ("*": every remote protocol).

    Either {"s3": {...}, "gs": {...}} (keys are fsspec protocols, values objects) or one flat
    object of options for every remote filesystem. Raises ValueError naming a bad value.
    """
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"storage options {text!r} are not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"storage options {text!r} must be a JSON object")
    from fsspec.registry import known_implementations

    if value and all(k in known_implementations and isinstance(v, dict) for k, v in value.items()):
        return {k.lower(): v for k, v in value.items()}
    return {"*": value}


def configure(options: dict[str, dict]) -> None:
    """Set options ({protocol: kwargs}, "*" for all) for filesystems opened from now on in this process.

    Child processes do not inherit this: export `fsspec_env(options)` into their environment.
    """
    for proto, kwargs in options.items():
        if not isinstance(kwargs, dict):
            raise ValueError(f"storage options of {proto!r} must be an object, got {kwargs!r}")
        _EXPLICIT[proto.lower()] = _merged(_EXPLICIT.get(proto.lower(), {}), kwargs)
    _filesystem.cache_clear()


def fsspec_env(options: dict[str, dict], protocols: tuple[str, ...] = ("s3",)) -> dict[str, str]:
    """Environment variables (FSSPEC_<PROTOCOL>=JSON) that give child processes the same options.

    fsspec reads them when it is imported, so local Ray workers and loader processes started
    with this environment open filesystems exactly as this process does.
    """
    protos = sorted({p for p in options if p != "*"} | (set(protocols) if "*" in options else set()))
    return {f"FSSPEC_{p.upper()}": json.dumps(_merged(options.get("*", {}), options.get(p, {})), sort_keys=True)
            for p in protos}


def reset() -> None:
    """Forget `configure`d options and every cached filesystem, so that the next one opened
    reads the environment (e.g. a changed AWS_ENDPOINT_URL) afresh."""
    from fsspec.registry import registry

    _EXPLICIT.clear()
    _filesystem.cache_clear()
    for cls in registry.values():
        cls.clear_instance_cache()


def _merged(base: dict, top: dict) -> dict:
    """`top` over `base`, merging nested dicts (so a retry setting does not drop the endpoint)."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def options_for(protocol: str) -> dict:
    """The options a filesystem of `protocol` is opened with: defaults < fsspec config < `configure`."""
    import fsspec.config

    opts = _merged(_COMMON_DEFAULTS, _S3_DEFAULTS if protocol in ("s3", "s3a") else {})
    opts = _merged(opts, fsspec.config.conf.get(protocol, {}))
    opts = _merged(opts, _EXPLICIT.get("*", {}))
    return _merged(opts, _EXPLICIT.get(protocol, {}))


@functools.lru_cache(maxsize=None)
def _filesystem(protocol: str, pid: int):
    import fsspec

    return fsspec.filesystem(protocol, **options_for(protocol))


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of a remote URL.

    One filesystem per protocol and process: a forked loader worker builds its own rather
    than sharing its parent's connections and event loop.
    """
    proto = scheme(url)
    try:
        fs = _filesystem(proto, os.getpid())
    except (ImportError, ValueError) as exc:
        raise ValueError(f"{url}: no filesystem for scheme {proto!r} ({exc})") from exc
    return fs, fs._strip_protocol(url)


# --- retries ----------------------------------------------------------------------------------

def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


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
            log.warning("%s: transient storage error (%s); retry %d of %d in %.1f s", what, _short(exc),
                        attempt, attempts - 1, delay)
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


def _remote(url: str, what: str, op: Callable[[Any, str], T]) -> T:
    fs, path = filesystem(url)
    return retry(lambda: op(fs, path), f"{url}: {what}" if what else url)


# --- reading ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileStat:
    """Size, modification time (seconds) and identity tag of a file or object.

    tag: the object's ETag remotely (changes when its bytes change), mtime_ns locally.
    """

    size: int
    mtime: float
    tag: str
    is_file: bool


def stat(loc: Location) -> FileStat | None:
    """A file's size, time and identity tag; None when nothing is there."""
    if not is_remote(loc):
        try:
            st = os.stat(loc)
        except OSError:
            return None
        import stat as stat_mod

        return FileStat(size=st.st_size, mtime=st.st_mtime, tag=str(st.st_mtime_ns),
                        is_file=stat_mod.S_ISREG(st.st_mode))
    try:
        info = _remote(str(loc), "", lambda fs, p: fs.info(p))
    except FileNotFoundError:
        return None
    return _file_stat(info)


def _file_stat(info: dict) -> FileStat:
    mtime = info.get("LastModified") or info.get("mtime") or info.get("updated") or 0
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    elif isinstance(mtime, str):
        from datetime import datetime

        mtime = datetime.fromisoformat(mtime.replace("Z", "+00:00")).timestamp()
    tag = str(info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("checksum") or "")
    return FileStat(size=int(info.get("size") or 0), mtime=float(mtime), tag=tag.strip('"'),
                    is_file=info.get("type", "file") == "file")


def size(loc: Location) -> int | None:
    """A file's size in bytes; None when there is no file there."""
    st = stat(loc)
    return st.size if st is not None and st.is_file else None


# Remotely these go through `stat`: fsspec's generic isfile() answers False on any error,
# and a throttled request must not read as a missing file.

def exists(loc: Location) -> bool:
    """True when a file or folder (a non-empty prefix, remotely) is there."""
    if not is_remote(loc):
        return os.path.exists(loc)
    return stat(loc) is not None


def isfile(loc: Location) -> bool:
    """True when a file (an object, remotely) is there."""
    if not is_remote(loc):
        return os.path.isfile(loc)
    st = stat(loc)
    return st is not None and st.is_file


def isdir(loc: Location) -> bool:
    """True for a folder (remotely: a prefix with objects below it)."""
    if not is_remote(loc):
        return os.path.isdir(loc)
    st = stat(loc)
    return st is not None and not st.is_file


def open_read(loc: Location, *, block_size: int = READ_BLOCK):
    """A seekable binary file object; remotely reads go out as range requests of `block_size`."""
    if not is_remote(loc):
        return open(loc, "rb")
    return _remote(str(loc), "cannot open it",
                   lambda fs, p: fs.open(p, "rb", block_size=block_size, cache_type="readahead"))


def read_bytes(loc: Location) -> bytes:
    """A whole file's bytes."""
    if not is_remote(loc):
        return Path(loc).read_bytes()
    return _remote(str(loc), "", lambda fs, p: fs.cat_file(p))


def read_text(loc: Location, *, errors: str = "strict") -> str:
    """A whole file as UTF-8 text."""
    return read_bytes(loc).decode("utf-8", errors=errors)


def sha256(loc: Location, chunk: int = HASH_CHUNK) -> str:
    """sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open_read(loc) as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def list_entries(loc: Location) -> list[tuple[str, bool]]:
    """(name, is_folder) of the entries directly in a folder or prefix, sorted; [] if there is none."""
    if not is_remote(loc):
        try:
            with os.scandir(loc) as it:
                return sorted((e.name, e.is_dir()) for e in it)
        except (FileNotFoundError, NotADirectoryError):
            return []
    try:
        infos = _remote(str(loc), "cannot list it", lambda fs, p: fs.ls(p, detail=True))
    except FileNotFoundError:
        return []
    base = filesystem(str(loc))[1].rstrip("/")
    out = {(i["name"].rstrip("/").rsplit("/", 1)[-1], i.get("type") == "directory") for i in infos
           if i["name"].rstrip("/") != base}
    return sorted(out)


def list_files(loc: Location, suffix: str = "") -> list[str]:
    """Names of the files directly in a folder (ending in `suffix`), sorted."""
    return [n for n, is_dir in list_entries(loc) if not is_dir and n.endswith(suffix)]


def list_dirs(loc: Location) -> list[str]:
    """Names of the sub-folders (sub-prefixes) directly in a folder, sorted."""
    return [n for n, is_dir in list_entries(loc) if is_dir]


def walk_files(loc: Location) -> list[str]:
    """Paths (POSIX, relative to `loc`) of every file below it, sorted."""
    if not is_remote(loc):
        root = Path(loc)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    found = _remote(str(loc), "cannot list it", lambda fs, p: fs.find(p, detail=True))
    base = filesystem(str(loc))[1].rstrip("/") + "/"
    return sorted(k[len(base):] for k, i in found.items() if i.get("type", "file") == "file" and k.startswith(base))


def stat_many(urls: list[str]) -> dict[str, FileStat | None]:
    """FileStat of many files, one listing per folder that holds several of them."""
    by_parent: dict[str, list[str]] = {}
    for url in urls:
        by_parent.setdefault(str(parent(url)), []).append(url)
    out: dict[str, FileStat | None] = {}
    for folder, members in by_parent.items():
        if len(members) < 2 or not is_remote(folder):
            out.update({u: stat(u) for u in members})
            continue
        try:
            infos = _remote(folder, "cannot list it", lambda fs, p: fs.ls(p, detail=True))
        except FileNotFoundError:
            infos = []
        listed = {i["name"].rstrip("/").rsplit("/", 1)[-1]: _file_stat(i) for i in infos}
        out.update({u: listed.get(name(u)) for u in members})
    return out


# --- writing ----------------------------------------------------------------------------------

def makedirs(loc: Location) -> None:
    """Create a folder and its parents; nothing to do on object storage (prefixes need none)."""
    if not is_remote(loc):
        Path(loc).mkdir(parents=True, exist_ok=True)


def write_bytes_atomic(loc: Location, data: bytes) -> None:
    """Write a whole file so that readers see the old bytes or the new ones, never a part.

    Locally: temporary name, fsync, rename (the temporary file is removed on failure).
    Remotely: one upload to the final key, visible only once complete.
    Raises OSError naming the file.
    """
    if is_remote(loc):
        _remote(str(loc), "cannot write it", lambda fs, p: fs.pipe_file(p, data))
        return
    path = Path(loc)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # the folder itself is gone or unwritable: nothing was left behind
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EROFS, errno.EACCES):
            raise


def put_file(local: str | Path, loc: Location) -> None:
    """Copy a complete local file to `loc` so that it appears whole or not at all.

    Remotely the upload goes to the final key (one PUT, or a multipart upload that commits
    at its end) and its size is checked after; locally a temporary copy is renamed.
    """
    want = os.path.getsize(local)
    if not is_remote(loc):
        dest = Path(loc)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        try:
            shutil.copyfile(local, tmp)
            os.replace(tmp, dest)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return

    def upload(fs, path):
        fs.put_file(str(local), path)
        got = fs.info(path).get("size")
        if got != want:
            raise OSError(errno.EIO, f"uploaded {want} bytes, the store holds {got}")

    _remote(str(loc), "cannot upload it", upload)


def remove(loc: Location, *, missing_ok: bool = True) -> None:
    """Delete a file (an object)."""
    if not is_remote(loc):
        Path(loc).unlink(missing_ok=missing_ok)
        return
    try:
        _remote(str(loc), "cannot delete it", lambda fs, p: fs.rm_file(p))
    except FileNotFoundError:
        if not missing_ok:
            raise


# --- local copies of remote inputs ------------------------------------------------------------

_CACHE = {"dir": None, "bytes": CACHE_BYTES}
_CACHE_LOCK = threading.Lock()


def _cache_dir() -> Path:
    folder = Path(_CACHE["dir"] or Path(tempfile.gettempdir()) / "flowshard-inputs")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def local_copy(loc: Location, st: FileStat | None = None) -> str:
    """A local file holding the bytes of `loc` (a local path is returned as it is).

    Remote objects are downloaded whole into a per-machine cache named by the object's URL,
    ETag and size, so a probe and the decode that follows (possibly in another process)
    download it once. Decoders get a seekable file: containers whose index sits at the end
    (an mp4 moov atom) cannot be read from a pipe. The least recently used copies are
    removed when the cache outgrows its budget. Raises FileNotFoundError when nothing is there.
    """
    if not is_remote(loc):
        return str(loc)
    url = str(loc)
    st = st or stat(url)
    if st is None or not st.is_file:
        raise FileNotFoundError(errno.ENOENT, f"{url}: no such object")
    ident = hashlib.sha256(f"{url}\0{st.tag}\0{st.size}".encode()).hexdigest()[:32]
    suffix = posixpath.splitext(name(url).split("?", 1)[0])[1][:16]
    path = _cache_dir() / f"{ident}{suffix}"
    if path.is_file() and path.stat().st_size == st.size:
        os.utime(path)  # most recently used
        return str(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        _remote(url, "cannot download it", lambda fs, p: fs.get_file(p, str(tmp)))
        if tmp.stat().st_size != st.size:
            raise OSError(errno.EIO, f"{url}: downloaded {tmp.stat().st_size} bytes, the object has {st.size}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _prune_cache(keep=path)
    return str(path)


def _prune_cache(keep: Path) -> None:
    with _CACHE_LOCK:
        files = []
        for p in _cache_dir().iterdir():
            if p.name.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError):  # another process pruned it first
                st = p.stat()
                files.append((st.st_mtime, st.st_size, p))
        total = sum(s for _, s, _ in files)
        for _, nbytes, p in sorted(files):
            if total <= _CACHE["bytes"]:
                break
            if p != keep:
                p.unlink(missing_ok=True)  # a decoder that has it open keeps reading it
                total -= nbytes


# --- locks ------------------------------------------------------------------------------------

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
def lock(loc: Location, *, ttl: float = LOCK_TTL_S) -> Iterator[Lock]:
    """Hold an exclusive lock at `loc` while the block runs; LockHeld if another process holds it.

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
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "refreshed": time.time(), "ttl": self.ttl}, sort_keys=True).encode()

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
                _remote(self.url, "cannot create the lock",
                        lambda fs, p: fs.pipe_file(p, self.body(), mode="create"))
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
    age = time.time() - float(held.get("refreshed", 0)) if held else 0.0
    return f"process {held.get('pid')} on {held.get('host')} (refreshed {age:.0f} s ago)" if held else "an unknown writer"
