"""Filesystem options and the one fsspec filesystem per protocol and process.

Configuration, in increasing priority: the usual environment of each filesystem
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION or an
instance role for s3), fsspec's own config (files in FSSPEC_CONFIG_DIR, or
FSSPEC_S3='{"endpoint_url": ...}'), then `configure` (`flowshard --storage-options JSON`).
"""

from __future__ import annotations

import copy
import functools
import json
import os
from typing import Any

from pipeline.store.locations import scheme

REQUEST_ATTEMPTS = 10  # per HTTP request, inside botocore

_S3_DEFAULTS = {"config_kwargs": {"retries": {"max_attempts": REQUEST_ATTEMPTS, "mode": "standard"}}}
# Listings are never cached: other processes (Ray tasks, a resumed build) write the same
# prefixes, and a stale cached listing would report a written shard as missing.
_COMMON_DEFAULTS = {"use_listings_cache": False}
_EXPLICIT: dict[str, dict] = {}  # protocol -> options given to `configure`; "*" for every protocol


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
    return {
        f"FSSPEC_{p.upper()}": json.dumps(_merged(options.get("*", {}), options.get(p, {})), sort_keys=True)
        for p in protos
    }


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


@functools.cache
def _filesystem(protocol: str, pid: int):  # noqa: ARG001 (pid: a cache key, one filesystem per process)
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
