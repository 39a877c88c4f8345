"""The deployment path end to end: work pool, `prefect deploy --all` from prefect.yaml, a worker, a run of the
tiny loop (2 rounds) triggered through the API, and its rounds and `selection-rate` artifact checked."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from .services import WORK_POOL, _prefect_exe

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = "self-improve/nightly"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _prefect(env: dict, *args: str) -> str:
    res = subprocess.run([_prefect_exe(), *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, f"prefect {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture
def deploy_env(prefect_server):
    # LAYERLOOP_HOME is what prefect.yaml's set_working_directory pull step resolves at deploy time
    return {**prefect_server.env, "LAYERLOOP_HOME": str(REPO), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO), "PREFECT_LOGGING_LEVEL": "WARNING"}


def _wait_final(client, run_id, timeout_s: float = 420.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if run.state and run.state.type.value in FINAL:
            return run
        time.sleep(2.0)
    raise AssertionError(f"flow run {run_id} not finished within {timeout_s:.0f} s (last: {run.state})")


def test_deploy_trigger_and_check_tiny_loop(prefect_server, deploy_env, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from layerloop.storage.rounds import RoundStore
    from layerloop.tasks.stages.demo import make_inputs, smoke_overrides

    _prefect(deploy_env, "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
    _prefect(deploy_env, "--no-prompt", "deploy", "--all")
    store = tmp_path / "store"
    params = {"config": smoke_overrides(str(store), make_inputs(str(tmp_path / "in"), n_seeds=6, n_pool=4,
                                                                 seed=5), rounds=2)}
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}), get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(DEPLOYMENT)
        assert dep.concurrency_limit == 1 or getattr(dep, "global_concurrency_limit", None)
        assert any("0 2 * * *" in str(s.schedule) for s in dep.schedules)
        assert "config" in dep.parameter_openapi_schema["properties"]  # the pydantic form in the UI
        run = client.create_flow_run_from_deployment(dep.id, parameters=params)
        with prefect_server.worker(cwd=str(REPO)) as worker:
            worker.wait_registered()
            run = _wait_final(client, run.id)
        assert run.state.type.value == "COMPLETED", f"{run.state}; worker log:\n{worker.log.read_text()[-4000:]}"
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["selection-rate"])),
                                          sort=ArtifactSort.CREATED_DESC)
    assert RoundStore(str(store)).committed_rounds() == [0, 1, 2]
    assert artifacts and artifacts[0].type == "table"
    table = artifacts[0].data if isinstance(artifacts[0].data, list) else json.loads(artifacts[0].data)
    assert [row["round"] for row in table] == [0, 1, 2]
    assert all(0 <= row["selection_rate"] <= 1 for row in table[1:])
