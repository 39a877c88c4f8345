"""Fixtures of the store tests: the same store suite on a local path, memory:// and s3:// (a moto server
started once per session on 127.0.0.1, dummy credentials from the environment as in production)."""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

import pytest

from layerloop.storage.rounds import RoundStore

BUCKET = "layerloop-test"


@dataclass
class Spot:
    """Where one test's store lives: its URI, fsspec options for this process, env for child processes."""

    uri: str
    storage_options: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)

    def store(self) -> RoundStore:
        return RoundStore(self.uri, self.storage_options)

    def child_env(self) -> dict:
        return {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-protocol server over HTTP (moto_server) with one bucket; stopped after the session."""
    from .s3 import CREDENTIALS, MotoServer

    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)  # botocore reads credentials from the environment, never from config
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


def make_spot(kind: str, request, tmp_path) -> Spot:
    if kind == "local":
        return Spot(str(tmp_path / "store"))
    if kind == "memory":  # an object-store style URL through the same code, one process only
        return Spot(f"memory://test-{uuid.uuid4().hex[:12]}/store")
    if kind == "s3":
        server = request.getfixturevalue("s3_server")
        return Spot(f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}/store", server.storage_options, server.env)
    raise ValueError(f"unknown store kind {kind!r}")


def _cleanup(spot: Spot) -> None:
    if spot.uri.startswith(("memory://", "s3://")):
        store = spot.store()
        if store.fs.exists(store.root):
            store.fs.rm(store.root, recursive=True)


@pytest.fixture(params=["local", "memory", "s3"])
def store(request, tmp_path):
    """A fresh RoundStore on each backend."""
    spot = make_spot(request.param, request, tmp_path)
    yield spot.store()
    _cleanup(spot)


@pytest.fixture(params=["local", "s3"])
def spot(request, tmp_path):
    """A fresh store location that child processes can reach too (memory:// cannot be shared)."""
    spot = make_spot(request.param, request, tmp_path)
    yield spot
    _cleanup(spot)
