"""The real-services harness works: PostgreSQL-backed Prefect server, flow runs, workers, clean teardown."""
from __future__ import annotations

import asyncio
import socket
import uuid

import httpx
import pytest

from .services import PG_DATABASE, PG_USER, PostgresServer, ServiceError, free_port, prefect_cli


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_health_endpoint_answers(prefect_server):
    r = httpx.get(f"{prefect_server.api_url}/health", timeout=10)
    assert r.status_code == 200 and r.json() is True
    assert prefect_server.env["PREFECT_API_URL"] == prefect_server.api_url
    assert prefect_server.db_url.startswith("postgresql+asyncpg://")


def _flow_run_state_in_db(db_url: str, run_id: uuid.UUID) -> str | None:
    """Read the run straight from PostgreSQL: proves the server really persists there."""
    import asyncpg

    port = int(db_url.rsplit(":", 1)[1].split("/")[0])

    async def fetch():
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user=PG_USER, database=PG_DATABASE)
        try:
            return await conn.fetchval("SELECT state_type FROM flow_run WHERE id = $1", run_id)
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_flow_run_completes_and_is_visible_through_the_client(prefect_server):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @flow(name="services-ping")
    def ping(x: int) -> int:
        return x + 1

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        state = ping(41, return_state=True)
        assert state.is_completed() and state.result() == 42
        run_id = state.state_details.flow_run_id
        with get_client(sync_client=True) as client:
            assert client.api_url.host == "127.0.0.1" and str(client.api_url).startswith(prefect_server.api_url)
            run = client.read_flow_run(run_id)
            assert run.state.is_completed()
            assert client.read_flow(run.flow_id).name == "services-ping"
    assert str(_flow_run_state_in_db(prefect_server.db_url, run_id)).endswith("COMPLETED")


def test_worker_registers_on_a_pool_and_stops(prefect_server):
    pool = f"svc-{uuid.uuid4().hex[:8]}"
    out = prefect_cli(prefect_server.env, "work-pool", "create", pool, "--type", "process")
    assert pool in out
    worker = prefect_server.worker(pool)
    with worker:
        worker.wait_registered(timeout_s=120)
        proc = worker.proc
    assert proc.poll() is not None  # the process group is gone after the block


def test_cli_failure_raises_with_output(prefect_server):
    with pytest.raises(ServiceError, match="failed"):
        prefect_cli(prefect_server.env, "deployment", "inspect", "no-such-flow/no-such-deployment")


def test_postgres_stops_even_when_the_block_fails(tmp_path):
    pg = PostgresServer(tmp_path / "pg", port=free_port())
    data_dir = pg.data
    with pytest.raises(RuntimeError, match="boom"):
        with pg:
            assert _port_open(pg.port)
            raise RuntimeError("boom")
    assert not _port_open(pg.port)
    assert not (data_dir / "postmaster.pid").exists()
