"""What Ray workers get of the driver's storage settings: where the data is, never a credential."""
import json

import pytest

from pipeline.cluster.env import forwarded_env

SECRET = "s3cr3t-value"


@pytest.fixture
def options(monkeypatch):
    def set_options(opts: dict, **env):
        monkeypatch.setenv("FLOWSHARD_STORAGE_OPTIONS", json.dumps(opts))
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return forwarded_env()
    for name in ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "FSSPEC_S3"):
        monkeypatch.delenv(name, raising=False)
    return set_options


@pytest.mark.parametrize("name", ["key", "secret", "token", "SSECustomerKey", "SSECustomerKeyMD5", "account_key",
                                  "connection_string", "passphrase", "sas_token", "client_secret", "password",
                                  "credentials", "private_key", "api_key", "Authorization"])
def test_every_credential_like_option_is_stripped_at_any_depth(options, name):
    env = options({"anon": False, name: SECRET, "s3_additional_kwargs": {name: SECRET, "ACL": "private"},
                   "client_kwargs": {"region_name": "eu-west-1", "extra": [{name: SECRET}]}})
    assert SECRET not in json.dumps(env)
    opts = json.loads(env["FLOWSHARD_STORAGE_OPTIONS"])
    assert opts["anon"] is False and opts["s3_additional_kwargs"] == {"ACL": "private"}
    assert opts["client_kwargs"]["region_name"] == "eu-west-1"


def test_credentials_inside_urls_and_values_are_stripped(options):
    env = options({"endpoint_url": f"https://user:{SECRET}@minio.internal:9000/",
                   "client_kwargs": {"endpoint_url": f"http://me:{SECRET}@10.0.0.2"},
                   "account_name": "shop", "note": f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={SECRET}",
                   "presigned": f"https://b.s3.amazonaws.com/x?X-Amz-Credential=AK&X-Amz-Signature={SECRET}"},
                  AWS_ENDPOINT_URL=f"http://admin:{SECRET}@127.0.0.1:9000", AWS_REGION="eu-west-1")
    assert SECRET not in json.dumps(env)
    opts = json.loads(env["FLOWSHARD_STORAGE_OPTIONS"])
    assert opts["endpoint_url"] == "https://minio.internal:9000/"
    assert opts["client_kwargs"]["endpoint_url"] == "http://10.0.0.2" and opts["account_name"] == "shop"
    assert "note" not in opts and "presigned" not in opts
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000" and env["AWS_REGION"] == "eu-west-1"


def test_settings_without_credentials_pass_unchanged(options):
    opts = {"endpoint_url": "http://127.0.0.1:9000", "anon": True, "config_kwargs": {"retries": {"max_attempts": 5}},
            "sse_kms_key_id": "alias/datasets", "requester_pays": True}
    env = options(opts, AWS_ENDPOINT_URL="http://127.0.0.1:9000")
    assert json.loads(env["FLOWSHARD_STORAGE_OPTIONS"]) == opts and env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
