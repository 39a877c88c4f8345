"""Integration fixtures: one real PostgreSQL + Prefect server per test session, torn down at the end."""
from __future__ import annotations

from pathlib import Path

import pytest

from .services import PrefectStack

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration is marked `integration` (select or skip it with -m)."""
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A Prefect server on its own PostgreSQL: `.api_url`, `.db_url`, `.env` (for CLI subprocesses).

    The stack's processes are stopped (by process group) at session end, also after failures.
    """
    with PrefectStack(tmp_path_factory.mktemp("services")) as stack:
        yield stack
