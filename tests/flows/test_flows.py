"""The flows under a real (ephemeral) Prefect API: artifacts, idempotent reruns, resume after kill -9."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from layerloop.tasks.stages.demo import smoke_overrides
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


def _artifacts(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                     sort=ArtifactSort.CREATED_DESC)


def _task_runs_named(names: set[str]) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=sorted(names))))
    return {run.name for run in runs}


def test_loop_commits_rounds_and_publishes_artifacts(prefect_harness, tiny_cfg, capsys, monkeypatch):
    from layerloop.flows.self_improve import self_improve
    from layerloop.tasks.stages.handles import open_store

    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "CRITICAL")  # as the CLI runs it: the console hides INFO
    cfg = tiny_cfg.model_copy(update={"loop": tiny_cfg.loop.model_copy(update={"rounds": 2})})
    rows = self_improve(cfg)
    # where the round is, as lines an operator (or a log) sees: units done of all, the stage, the ETA
    err = capsys.readouterr().err
    assert "round 1: " in err and "round 2: " in err and " units (100 %), last " in err, err
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert open_store(cfg).committed_rounds() == [0, 1, 2]
    assert rows[1]["candidates"] == 6 and 0 <= rows[1]["selection_rate"] <= 1
    assert "heldout_psnr_logo" in rows[2] and "heldout_psnr_object" in rows[2]
    table = _artifacts("selection-rate")
    assert table and table[0].type == "table"
    for key in ("round-0001-summary", "round-0002-summary", "round-0002-progress", "round-0002-report"):
        assert _artifacts(key), f"artifact {key} missing"
    progress = _artifacts("round-0002-progress")[0]
    assert float(progress.data) == pytest.approx(100.0)
    info = open_store(cfg).round_info(2)["info"]
    assert {"train", "evaluate", "generate", "judge", "cycle"} <= set(info["timings"])
    # units travel typed but the task runs keep readable names
    names = {"generate-2-gen-0000", "judge-2-pool-0000", "cycle-2-gen-0001", "commit-2"}
    assert _task_runs_named(names) == names


def test_rerun_commits_nothing_new(prefect_harness, tiny_cfg):
    from layerloop.flows.self_improve import self_improve
    from layerloop.tasks.stages.handles import open_store

    self_improve(tiny_cfg)
    store = open_store(tiny_cfg)
    marker = Path(store.round_uri(1)) / "COMMITTED"
    before = (marker.read_bytes(), store.read(1, "all").to_json())
    rows = self_improve(tiny_cfg)
    assert [r["round"] for r in rows] == [0, 1]
    assert (marker.read_bytes(), store.read(1, "all").to_json()) == before


def _api_env() -> dict:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}


def _wait_for(folder: Path, pattern: str, proc, log: Path, timeout: float = 240.0) -> None:
    wait_until(lambda: any(folder.glob(pattern)), f"{pattern} appeared", proc=proc,
               output=lambda: log.read_text()[-3000:], timeout=timeout)


def test_resume_after_kill_9_mid_round(prefect_harness, tiny_cfg, tiny_inputs, tmp_path):
    """kill -9 once the first generated unit of round 1 is written; the rerun keeps that unit as it was."""
    from layerloop.tasks.stages.handles import open_store

    store = Path(tiny_cfg.store.uri)
    cfg_file = tmp_path / "layerloop.yaml"
    cfg_file.write_text(yaml.safe_dump(smoke_overrides(str(store), tiny_inputs, rounds=1)))
    cmd = [sys.executable, "-m", "layerloop.flows", "run", "--config", str(cfg_file)]
    log = tmp_path / "first-run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_api_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(store / "rounds" / "round-0001" / "_work" / "units", "gen-0000.parquet", proc, log)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    unit = store / "rounds" / "round-0001" / "_work" / "units" / "gen-0000.parquet"
    first = unit.read_bytes()
    assert not (store / "rounds" / "round-0001" / "COMMITTED").exists()
    # The killed run held the gpu slot on the server and the store's run lock: the rerun takes both over
    # (the lease id it left in the host lock, its dead pid in the run lock) instead of waiting for them.
    rerun = subprocess.run(cmd, cwd=REPO, env=_api_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert "reclaimed the 'gpu' slot lease" in rerun.stderr
    assert open_store(tiny_cfg).committed_rounds() == [0, 1]
    assert unit.read_bytes() == first  # the finished unit was reused, not regenerated
    committed = open_store(tiny_cfg).read(1, "all")
    assert committed["unit"].value_counts().to_dict() == {"gen-0000": 2, "gen-0001": 2, "pool-0000": 2}


def test_round_progress_lines_are_throttled_and_say_where_the_round_is(prefect_harness, capsys, monkeypatch):
    from prefect import flow

    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "CRITICAL")  # the CLI's quiet console: the lines go to stderr

    from layerloop.tasks.runtime.publish import Progress

    now = [0.0]

    def run_units(task_fn, cfg, round_, units, on_done):
        for _ in units:
            now[0] += 4.0  # a unit every 4 s: a line every 10 s at most, and one after the last
            on_done()
        return []

    @flow
    def one_round():
        progress = Progress(3, 6, run_units, clock=lambda: now[0])
        now[0] += 100.0  # the round's training before its first unit: not counted in the units' ETA
        progress.run(lambda *a: None, None, 3, list(range(3)))
        progress.run(lambda *a: None, None, 3, list(range(3)))

    one_round()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("round 3:")]
    assert lines == ["round 3: 3/6 units (50 %), last <lambda>, 12 s, ETA 12 s",
                     "round 3: 6/6 units (100 %), last <lambda>, 24 s, ETA 0 s"]
