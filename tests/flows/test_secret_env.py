"""loop.secret_env: a run's credentials come from Prefect Secret blocks into its environment, never into
its config, its logs or its errors; with them a run reaches an S3 bucket that refuses it without."""
from __future__ import annotations

import uuid

import pytest

from layerloop.tasks.config import ConfigError, load_config

SECRET = "not-a-real-secret-but-do-not-print-me"


def _cfg(store: str, options: dict | None = None, **secret_env: str):
    return load_config(None, overrides={"store": {"uri": store, "storage_options": options or {}},
                                        "loop": {"secret_env": secret_env}})


def test_secret_blocks_fill_the_environment_and_nothing_else(prefect_harness, monkeypatch, tmp_path):
    import os

    from prefect.blocks.system import Secret

    from layerloop.tasks.runtime.secrets import apply_secret_env

    Secret(value=SECRET).save("layerloop-test-secret", overwrite=True)
    monkeypatch.delenv("LAYERLOOP_TEST_SECRET", raising=False)
    monkeypatch.setenv("LAYERLOOP_TEST_PRESET", "from-env")
    cfg = _cfg(str(tmp_path), LAYERLOOP_TEST_SECRET="layerloop-test-secret",
               LAYERLOOP_TEST_PRESET="layerloop-test-secret")
    assert apply_secret_env(cfg) == ["LAYERLOOP_TEST_SECRET"]
    assert os.environ["LAYERLOOP_TEST_SECRET"] == SECRET
    assert os.environ["LAYERLOOP_TEST_PRESET"] == "from-env"  # an exported variable wins
    assert SECRET not in cfg.model_dump_json()  # the config a round saves names the block only
    with pytest.raises(ConfigError, match="'no-such-block' cannot be loaded") as err:
        apply_secret_env(_cfg(str(tmp_path), LAYERLOOP_TEST_OTHER="no-such-block"))
    assert SECRET not in str(err.value)


def test_secret_env_keys_must_be_variable_names(tmp_path):
    with pytest.raises(ConfigError, match="environment variable names"):
        _cfg(str(tmp_path), **{"not a name": "block"})


def test_s3_credentials_from_secret_blocks_open_the_bucket(prefect_harness, s3_server, monkeypatch):
    """Without credentials botocore refuses to sign; from the blocks, the run's session reaches the bucket."""
    from botocore.exceptions import NoCredentialsError
    from prefect.blocks.system import Secret

    from layerloop.tasks.runtime.secrets import apply_secret_env
    from layerloop.tasks.stages.handles import open_store
    from tests.storage.s3 import BUCKET

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")  # no ~/.aws fallback either
    Secret(value="testing").save("layerloop-test-s3-key", overwrite=True)
    Secret(value="testing").save("layerloop-test-s3-secret", overwrite=True)
    options = {**s3_server.storage_options, "skip_instance_cache": True}  # a fresh client, reading the env now
    uri = f"s3://{BUCKET}/secrets-{uuid.uuid4().hex[:8]}/store"
    with pytest.raises(NoCredentialsError):
        open_store(_cfg(uri, options)).init()
    cfg = _cfg(uri, options, AWS_ACCESS_KEY_ID="layerloop-test-s3-key",
               AWS_SECRET_ACCESS_KEY="layerloop-test-s3-secret")
    assert apply_secret_env(cfg) == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    assert open_store(cfg).init().startswith("s3://")
