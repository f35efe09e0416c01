"""Secrets given to the driver never reach the cluster's runtime environment."""
import json
import logging

import pytest

from jobs.cli import configure_storage
from pipeline import storage
from pipeline.cluster import env, startup

SECRETS = ("AKIAEXAMPLEKEY", "s3cr3t-value", "session-tok", "hunter2", "nested-secret")


@pytest.fixture
def storage_env(monkeypatch):
    for name in env.FORWARDED_ENV:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    storage.reset()


def test_secrets_in_storage_options_are_not_forwarded(storage_env, monkeypatch, caplog):
    options = {"s3": {"key": SECRETS[0], "secret": SECRETS[1], "token": SECRETS[2], "endpoint_url": "http://127.0.0.1:9",
                      "client_kwargs": {"region_name": "eu-west-1", "aws_secret_access_key": SECRETS[4]},
                      "s3_additional_kwargs": {"SSEKMSKeyId": "alias/data"}},
               "sftp": {"password": SECRETS[3], "host": "127.0.0.1"}}
    configure_storage(json.dumps(options))  # as `flowshard --storage-options JSON` does
    monkeypatch.setenv("FLOWSHARD_STORAGE_OPTIONS", json.dumps(options))
    captured = {}

    def fake_init(**kwargs):
        captured.update(kwargs)

    monkeypatch.setattr(startup.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(startup.ray, "init", fake_init)
    monkeypatch.setattr(startup.ray, "cluster_resources", lambda: {})
    with caplog.at_level(logging.WARNING, logger="pipeline.cluster.env"):
        startup.init_ray(startup.RayConfig(address="ray://127.0.0.1:10001"))
    env = captured["runtime_env"]["env_vars"]
    text = json.dumps(env)
    assert not [s for s in SECRETS if s in text], text
    s3 = json.loads(env["FSSPEC_S3"])
    assert s3["endpoint_url"] == "http://127.0.0.1:9" and s3["client_kwargs"] == {"region_name": "eu-west-1"}
    assert s3["s3_additional_kwargs"] == {"SSEKMSKeyId": "alias/data"}  # a key's id is no secret
    assert json.loads(env["FLOWSHARD_STORAGE_OPTIONS"])["sftp"] == {"host": "127.0.0.1"}
    assert "FSSPEC_S3.key" in caplog.text and "FLOWSHARD_STORAGE_OPTIONS.sftp.password" in caplog.text
    assert not [s for s in SECRETS if s in caplog.text]  # the log names the fields, never their values
