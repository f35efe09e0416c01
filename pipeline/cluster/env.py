"""The environment Ray workers get: the driver's storage settings, without keys or secrets.

The runtime environment is stored by the cluster and shown in its dashboard and job
listings, so nothing that grants access may travel in it. Cluster nodes authenticate on
their own (an instance role or workload identity, or credentials in the nodes' own
environment: docs/CLUSTER.md); the driver forwards only where the data is.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.parse

log = logging.getLogger(__name__)

# Storage settings that remote workers need to open the same bucket the driver names.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "FSSPEC_S3", "FLOWSHARD_STORAGE_OPTIONS")
_JSON_ENV = ("FSSPEC_S3", "FLOWSHARD_STORAGE_OPTIONS")
# A setting is a secret when its name (lower case, without "_" and "-") holds one of these or ends
# in "key" (key, account_key, SSECustomerKey, sas_key ...): keys, tokens, passwords, connection
# strings (which embed an account key) and passphrases of key files.
_SECRET_WORDS = (
    "secret",
    "token",
    "password",
    "passwd",
    "passphrase",
    "credential",
    "accesskey",
    "privatekey",
    "apikey",
    "customerkey",
    "keymd5",
    "connectionstring",
    "sastoken",
    "signature",
    "auth",
)
# Values that hold a credential whatever their setting's name: an Azure connection string, a signed URL.
_SECRET_VALUE = re.compile(
    r"(AccountKey|SharedAccessSignature|SharedAccessKey)=|[?&](sig|signature|"
    r"X-Amz-Signature|X-Amz-Credential|X-Goog-Signature|token)=",
    re.IGNORECASE,
)


def _is_secret(name: str) -> bool:
    flat = name.lower().replace("_", "").replace("-", "")
    return flat.endswith("key") or any(word in flat for word in _SECRET_WORDS)


def _without_userinfo(value: str) -> str | None:
    """A URL with its user name and password removed; None when `value` is no URL with user info."""
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        return None
    if not parts.scheme or "@" not in parts.netloc:
        return None
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def _clean_value(value, where: str, stripped: list[str]):
    """A string value made safe: credentials in a URL removed, a credential-bearing value dropped (None)."""
    if not isinstance(value, str):
        return value
    if _SECRET_VALUE.search(value):
        stripped.append(where)
        return None
    bare = _without_userinfo(value)
    if bare is not None:
        stripped.append(f"{where} (user info)")
        return bare
    return value


def _without_secrets(value, where: str, stripped: list[str]):
    """`value` (parsed JSON) less every field whose name says it holds a key or secret, and less
    credentials inside any URL (user info) or value (a connection string, a signed URL)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if _is_secret(str(k)):
                stripped.append(f"{where}.{k}")
                continue
            cleaned = _without_secrets(v, f"{where}.{k}", stripped)
            if cleaned is not None or v is None:
                out[k] = cleaned
        return out
    if isinstance(value, list):
        kept = [_without_secrets(v, where, stripped) for v in value]
        return [v for v, orig in zip(kept, value, strict=True) if v is not None or orig is None]
    return _clean_value(value, where, stripped)


def forwarded_env() -> dict[str, str]:
    """The storage settings of this process that Ray workers get too, without keys or secrets."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    stripped: list[str] = []
    for name in list(env):
        if name in _JSON_ENV:
            try:
                env[name] = json.dumps(_without_secrets(json.loads(env[name]), name, stripped), sort_keys=True)
            except ValueError:  # not JSON: nothing of it can be told safe to forward
                stripped.append(name)
                del env[name]
            continue
        cleaned = _clean_value(env[name], name, stripped)
        if cleaned is None:
            del env[name]
        else:
            env[name] = cleaned
    if stripped:
        log.warning(
            "not forwarding %s to Ray workers: nodes use their own credentials (instance role or their environment)",
            ", ".join(stripped),
        )
    return env
