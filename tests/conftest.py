"""Shared pytest setup: offline, quiet Prefect, one torch thread so parallel CPU work stays predictable."""
from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole unit tier (startup costs 10-20 s here)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-protocol server over HTTP (moto_server on 127.0.0.1) with one bucket (s3.BUCKET); dummy
    credentials go into the environment (botocore reads them there, as in production); stopped after."""
    from tests.storage.s3 import BUCKET, CREDENTIALS, MotoServer

    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        with MotoServer(tmp_path_factory.mktemp("moto")) as server:
            server.make_bucket(BUCKET)
            yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
