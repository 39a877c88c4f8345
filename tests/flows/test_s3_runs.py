"""`layerloop run` on an `s3://` store, with real processes against real moto S3 servers over HTTP:
two runs started together on one bucket prefix (the run lock and the commit claim on an object store), and
the S3 server stopped during a round and started again on its port with its data (tests/storage/moto_ctl.py).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from layerloop.storage import schema as S
from layerloop.storage.locks import RUN_LOCK
from layerloop.storage.rounds import COMMITTED, RoundStore
from layerloop.tasks.stages.demo import smoke_overrides

from test_flows import REPO, _api_env  # same folder (tests/flows is not a package)
from tests.storage.s3 import BUCKET, CREDENTIALS, free_port
from tests.waiting import wait_until

CLI = [sys.executable, "-m", "layerloop.flows"]
MOTO_CTL = str(REPO / "tests" / "storage" / "moto_ctl.py")


def _config(tmp_path: Path, uri: str, inputs: dict, name: str = "layerloop.yaml", **loop) -> Path:
    data = smoke_overrides(uri, inputs, rounds=1)
    # a regression waits loop.gpu_wait_s and fails, instead of hanging the suite for the default hour
    data["loop"].update(gpu_lock_dir=str(tmp_path / "locks"), gpu_wait_s=120, **loop)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _env(server_env: dict, quiet: bool = False) -> dict:
    """The test's Prefect API and the S3 endpoint + dummy credentials, as a user exports them; `quiet`: the
    CLI's own Prefect logging (what a user sees), not the WARNING level the other flow tests read."""
    env = {**_api_env(), **server_env}
    if quiet:
        env.pop("PREFECT_LOGGING_LEVEL")
    return env


def test_two_runs_on_one_s3_store_exactly_one_does_the_work(prefect_harness, s3_server, tiny_inputs, tmp_path):
    uri = f"s3://{BUCKET}/two-runs-{uuid.uuid4().hex[:8]}/store"
    cmd = CLI + ["run", "--config", str(_config(tmp_path, uri, tiny_inputs))]
    runs = [subprocess.Popen(cmd, cwd=REPO, env=_env(s3_server.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outs = [run.communicate(timeout=420) for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes == [0, 1], [o[1][-2000:] for o in outs]
    winner, loser = (0, 1) if runs[0].returncode == 0 else (1, 0)
    said = [line for line in outs[loser][1].splitlines() if line.strip()]
    assert len(said) == 1, said  # one line, no traceback
    assert said[0].startswith(f"error: the store {uri} is in use by another run: ")
    assert f"pid {runs[winner].pid} on host {socket.gethostname()} (" in said[0] and "started 20" in said[0]
    assert f"(lock {uri}/{RUN_LOCK})" in said[0]  # an S3 holder is named by its object's URL

    store = RoundStore(uri, s3_server.storage_options)
    assert store.committed_rounds() == [0, 1]
    rows = store.read(1, "all")
    assert rows[S.SAMPLE_ID].is_unique and len(rows) == 6
    assert not store.fs.exists(f"{store.root}/{RUN_LOCK}")  # the winner let go of the store
    debris = [p for p in store.gc(grace_s=0) if not p.endswith("/_work")]  # committed work areas go anyway
    assert debris == []  # nothing written twice: no orphan shard or temp object of a second writer
    assert store.verify() == []


# The S3 server is away this long. A real outage of 60 s and this one end the same way as long as this one
# outlasts every retry the run makes: botocore's and s3fs's (measured here: a call to a refused port fails
# after 4-12.5 s), the task retries configured below (1 retry after 1 s) and the run lock's release, ~40 s
# at worst (measured 27 s). With the defaults (2 task retries, 2 s apart) a run gives up within ~55 s, so a
# 60 s outage ends the same way. The test asserts that the run gave up while the server was still away,
# which makes it the long-outage case and not a blip; if that assert fails, this constant is too short.
OUTAGE_S = 45.0
RETRIES = {"task_retries": 1, "task_retry_delay_s": 1.0}


def _failed_task_runs(since) -> list:
    """Failed task runs of the test's Prefect API started after `since` (the outage test's run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (TaskRunFilter, TaskRunFilterStartTime, TaskRunFilterState,
                                                TaskRunFilterStateType)

    flt = TaskRunFilter(start_time=TaskRunFilterStartTime(after_=since),
                        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=["FAILED"])))
    with get_client(sync_client=True) as client:
        return client.read_task_runs(task_run_filter=flt)


def _start_run(cmd: list[str], server_env: dict, log: Path) -> subprocess.Popen:
    """`layerloop run` as a user starts it, its stderr (what the user sees) in `log`."""
    with open(log, "w") as err:
        return subprocess.Popen(cmd, cwd=REPO, env=_env(server_env, quiet=True), stdout=subprocess.DEVNULL,
                                stderr=err, text=True)


def _first_unit_written(store: RoundStore, run: subprocess.Popen) -> str:
    """Wait until round 1 has written its first generated unit (the fault goes in after it); its path."""
    unit = f"{store.round_dir(1)}/_work/units/gen-0000.parquet"
    wait_until(lambda: store.fs.exists(unit), f"{unit} appeared", proc=run)
    return unit


def test_s3_server_away_mid_round_fails_uncommitted_and_the_rerun_finishes(prefect_harness, tiny_inputs, tmp_path):
    from tests.storage.s3 import StoppableS3

    import datetime as dt

    os.environ.update(CREDENTIALS)  # for this process's own reads of the store (children get them in _env)
    began = dt.datetime.now(dt.timezone.utc)
    with StoppableS3(tmp_path) as server:
        server.make_bucket(BUCKET)
        uri = f"s3://{BUCKET}/outage/store"
        store = RoundStore(uri, server.storage_options)
        cmd = CLI + ["run", "--config", str(_config(tmp_path, uri, tiny_inputs, **RETRIES))]
        log = tmp_path / "run.log"
        run = _start_run(cmd, server.env, log)
        try:
            unit = _first_unit_written(store, run)
            server.stop()  # round 1 is writing its units: the next shard PUT finds nobody
            stopped = time.monotonic()
            try:
                run.wait(timeout=OUTAGE_S)
            except subprocess.TimeoutExpired:
                pass
            failed_after = time.monotonic() - stopped if run.returncode is not None else None
            server.start()
            run.wait(timeout=300)
        finally:
            if run.poll() is None:
                run.kill()
        stderr = log.read_text()
        print(f"rc={run.returncode} failed_after={failed_after}\n{stderr[-4000:]}")
        assert run.returncode == 1, stderr[-3000:]
        assert failed_after is not None and failed_after < OUTAGE_S  # it gave up while the server was away
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith(f"error: the store {uri} could not be reached"), stderr
        assert "Traceback" not in stderr and "round in progress is not committed" in errors[0]
        # the unit in flight was retried (an S3 outage is transient), then failed with the store still away;
        # `round-N` is the round subflow's own task run, which Prefect runs once
        failed = [t for t in _failed_task_runs(began) if not t.name.startswith("round-")]
        assert failed and all(t.run_count == RETRIES["task_retries"] + 1 for t in failed), \
            [(t.name, t.run_count) for t in failed]
        assert store.committed_rounds() == [0]
        assert not store.fs.exists(f"{store.round_dir(1)}/{COMMITTED}")
        first_unit = store.fs.cat_file(unit)

        rerun = subprocess.run(cmd, cwd=REPO, env=_env(server.env), capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "error:" not in rerun.stderr  # the dead run's lock (same host) was taken over silently
        assert store.committed_rounds() == [0, 1]
        assert store.fs.cat_file(unit) == first_unit  # the unit finished before the outage was reused
        rows = store.read(1, "all")
        assert rows[S.SAMPLE_ID].is_unique and len(rows) == 6
        assert store.verify() == []
        assert not store.fs.exists(f"{store.root}/{RUN_LOCK}")


FREEZE_S = 20.0  # under botocore's default 60 s read timeout: the calls in flight wait, then are answered


def test_s3_server_frozen_mid_round_then_answering_again_the_run_carries_on(prefect_harness, tiny_inputs, tmp_path):
    """A server that accepts connections and answers nothing (SIGSTOP) for FREEZE_S, then answers again:
    the run's calls wait it out and the round commits in the same run, nothing doubled."""
    from tests.storage.s3 import StoppableS3

    os.environ.update(CREDENTIALS)
    with StoppableS3(tmp_path) as server:
        server.make_bucket(BUCKET)
        uri = f"s3://{BUCKET}/frozen/store"
        store = RoundStore(uri, server.storage_options)
        run = _start_run(CLI + ["run", "--config", str(_config(tmp_path, uri, tiny_inputs))], server.env,
                         tmp_path / "run.log")
        try:
            _first_unit_written(store, run)
            server.freeze()
            time.sleep(FREEZE_S)  # the outage itself: how long the server hangs
            still_running = run.poll() is None
            server.thaw()
            run.wait(timeout=300)
        finally:
            server.thaw()
            if run.poll() is None:
                run.kill()
        stderr = (tmp_path / "run.log").read_text()
        assert still_running and run.returncode == 0, stderr[-3000:]
        assert "error:" not in stderr and "Traceback" not in stderr
        assert store.committed_rounds() == [0, 1]
        rows = store.read(1, "all")
        assert rows[S.SAMPLE_ID].is_unique and len(rows) == 6
        assert store.verify() == [] and not store.fs.exists(f"{store.root}/{RUN_LOCK}")


def test_s3_server_that_stays_frozen_fails_the_run_by_its_read_timeout(prefect_harness, tiny_inputs, tmp_path):
    """A server that hangs for good: with store.storage_options' read timeout and attempts set low (botocore's
    default: 60 s per attempt; s3fs retries on top) the run gives up with one line while the server still
    hangs; answering again, the same command finishes the round."""
    from tests.storage.s3 import StoppableS3

    os.environ.update(CREDENTIALS)
    with StoppableS3(tmp_path) as server:
        server.make_bucket(BUCKET)
        uri = f"s3://{BUCKET}/frozen-for-good/store"
        store = RoundStore(uri, server.storage_options)
        cfg_file = _config(tmp_path, uri, tiny_inputs, task_retries=0)
        data = yaml.safe_load(cfg_file.read_text())
        # what a hanging server costs per call: botocore's timeout x its attempts (x s3fs's 5 retries)
        data["store"]["storage_options"] = {"config_kwargs": {
            "read_timeout": 2, "connect_timeout": 2, "retries": {"total_max_attempts": 2}}}
        cfg_file.write_text(yaml.safe_dump(data))
        cmd = CLI + ["run", "--config", str(cfg_file)]
        run = _start_run(cmd, server.env, tmp_path / "run.log")
        try:
            _first_unit_written(store, run)
            server.freeze()
            frozen = time.monotonic()
            run.wait(timeout=600)
            failed_after = time.monotonic() - frozen
        finally:
            server.thaw()
            if run.poll() is None:
                run.kill()
        stderr = (tmp_path / "run.log").read_text()
        print(f"rc={run.returncode} failed_after={failed_after:.0f} s\n{stderr[-3000:]}")
        assert run.returncode == 1, stderr[-3000:]
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith(f"error: the store {uri} could not be reached"), stderr
        assert "Traceback" not in stderr and store.committed_rounds() == [0]

        rerun = subprocess.run(cmd, cwd=REPO, env=_env(server.env), capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert store.committed_rounds() == [0, 1] and store.verify() == []
        assert store.read(1, "all")[S.SAMPLE_ID].is_unique
