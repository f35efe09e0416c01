"""The environment Ray workers get: the driver's storage settings, without keys or secrets."""
from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)

# Storage settings that remote workers need to open the same bucket the driver names. Keys
# and secrets are not forwarded: cluster nodes should authenticate with their own role. The
# runtime environment is stored by the cluster and shown in its dashboard, so secrets given
# in --storage-options (exported as FSSPEC_S3) are stripped from the JSON settings too.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "FSSPEC_S3", "FLOWSHARD_STORAGE_OPTIONS")
_JSON_ENV = ("FSSPEC_S3", "FLOWSHARD_STORAGE_OPTIONS")
_SECRET_WORDS = ("secret", "token", "password", "passwd", "credential", "accesskey", "privatekey", "apikey")


def _is_secret(name: str) -> bool:
    flat = name.lower().replace("_", "").replace("-", "")
    return flat == "key" or any(word in flat for word in _SECRET_WORDS)


def _without_secrets(value, where: str, stripped: list[str]):
    """`value` (parsed JSON) less every field whose name says it holds a key or secret."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if _is_secret(str(k)):
                stripped.append(f"{where}.{k}")
            else:
                out[k] = _without_secrets(v, f"{where}.{k}", stripped)
        return out
    if isinstance(value, list):
        return [_without_secrets(v, where, stripped) for v in value]
    return value


def forwarded_env() -> dict[str, str]:
    """The storage settings of this process that Ray workers get too, without keys or secrets."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    stripped: list[str] = []
    for name in _JSON_ENV:
        if name in env:
            try:
                env[name] = json.dumps(_without_secrets(json.loads(env[name]), name, stripped), sort_keys=True)
            except ValueError:  # not JSON: nothing of it can be told safe to forward
                stripped.append(name)
                del env[name]
    if stripped:
        log.warning("not forwarding %s to Ray workers: nodes use their own credentials (instance role or "
                    "their environment)", ", ".join(stripped))
    return env
