"""Fixtures of the store tests: the same store suite on a local path, memory:// and s3:// (the session's
moto server, tests/conftest.py `s3_server`)."""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

import pytest

from layerloop.storage.rounds import RoundStore

from tests.storage.s3 import BUCKET


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
