"""What keeps runs apart never blocks the next run: the gpu guard after a kill -9 (ephemeral API, as a user
runs `layerloop run`), a waiting run that says what it waits for, and two runs started on one store."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from prefect import flow  # noqa: F401 - sets up Prefect logging on the real stderr, not on capsys' temporary one

from layerloop.tasks.stages.demo import smoke_overrides

from test_flows import REPO, _api_env, _wait_for  # same folder (tests/flows is not a package)

GUARD = str(Path(__file__).with_name("guard_proc.py"))
CLI = [sys.executable, "-m", "layerloop.flows"]


def _ephemeral_env(tmp_path: Path) -> dict:
    """How a user runs it: no PREFECT_API_URL (Prefect starts an ephemeral API), a Prefect home of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    # guard_proc.py starts its ephemeral API without the CLI, so it needs the CLI's startup allowance itself:
    # a fresh Prefect home migrates its DB first, past Prefect's 20 s on a loaded CI box
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}


def _config(tmp_path: Path, store: Path, inputs: dict, **loop) -> Path:
    data = smoke_overrides(str(store), inputs, rounds=1)
    # a regression waits loop.gpu_wait_s and fails, instead of hanging the suite for the default hour
    data["loop"].update(gpu_lock_dir=str(tmp_path / "locks"), gpu_wait_s=120, **loop)
    path = tmp_path / "layerloop.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_killed_run_under_the_ephemeral_api_does_not_block_the_rerun(tiny_inputs, tmp_path):
    """kill -9 `layerloop run` while it holds the GPU; the rerun reclaims the slot and finishes unaided."""
    from layerloop.storage.rounds import RoundStore

    store = tmp_path / "store"
    cmd = CLI + ["run", "--config", str(_config(tmp_path, store, tiny_inputs))]
    env, log = _ephemeral_env(tmp_path), tmp_path / "killed.log"
    with open(log, "wb") as out:  # its own session: the orphaned ephemeral server is cleaned up below
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(store / "rounds" / "round-0001" / "_work" / "units", "gen-0000.parquet", proc, log)
        held = json.loads((tmp_path / "locks" / "layerloop-gpu-gpu.lock").read_text())
        assert held["pid"] == proc.pid and held["lease_id"]  # it holds the GPU: host lock and Prefect slot
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the killed run's ephemeral server outlives it
        except ProcessLookupError:
            pass
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert f"reclaimed the 'gpu' slot lease {held['lease_id']}" in rerun.stderr, rerun.stdout[-3000:]
    assert f"pid {proc.pid} on host {socket.gethostname()}" in rerun.stderr
    assert RoundStore(str(store)).committed_rounds() == [0, 1]
    assert not (store / "_locks" / "run.json").exists()  # the dead run's store lock was taken over, then freed


def test_slot_leaked_without_a_record_is_reset_under_the_ephemeral_api(tmp_path):
    """A slot no lock file records (leaked by an older version, or a kill between grant and record)."""
    from layerloop.tasks.config import load_config

    cfg = load_config(None, overrides={"loop": {"gpu_lock_dir": str(tmp_path / "locks"), "gpu_wait_s": 60}})
    done = subprocess.run([sys.executable, GUARD, "leak-then-take", cfg.model_dump_json()], cwd=REPO,
                          env=_ephemeral_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert done.stdout.split() == ["LEAKED", "1", "HELD"]
    assert "reset 1 taken 'gpu' slot(s) that no live run on this host holds" in done.stderr


class StderrLines:
    """What the code under test printed on stderr so far (capsys, read as it grows)."""

    def __init__(self, capsys):
        self.capsys, self.lines = capsys, []

    def starting(self, prefix: str) -> list[str]:
        self.lines += self.capsys.readouterr().err.splitlines()
        return [line for line in self.lines if line.startswith(prefix)]

    def wait_for(self, prefix: str, n: int, worker: threading.Thread, timeout: float = 120.0) -> list[str]:
        """Poll until `n` lines start with `prefix` (the waiter said it `n` times) or the worker ended; a
        deadline far past the n * wait_report_s it takes, so a regression fails instead of hanging."""
        deadline = time.monotonic() + timeout
        while len(self.starting(prefix)) < n and worker.is_alive():
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {n} {prefix!r} lines in {timeout:.0f} s: {self.lines[-20:]}")
            time.sleep(0.05)
        return self.starting(prefix)


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-checked by the test
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker, box


def _take_gpu(cfg) -> str:
    from layerloop.tasks.runtime.gpu_slot import gpu_slot

    with gpu_slot(cfg):
        return "held"


def test_a_run_waiting_for_the_gpu_says_what_it_waits_for(prefect_harness, tmp_path, capsys):
    """Another run on this host holds the GPU: the waiter says who every wait_report_s, and takes the GPU
    as soon as that run dies."""
    from layerloop.tasks.config import load_config
    from layerloop.tasks.runtime.gpu_slot import ensure_gpu_slot, host_lock_path

    cfg = load_config(None, overrides={"loop": {"gpu_slot": "gpu-waits", "gpu_lock_dir": str(tmp_path),
                                                "gpu_wait_s": None, "wait_report_s": 0.2}})
    ensure_gpu_slot(cfg)
    holder = subprocess.Popen([sys.executable, GUARD, "hold", host_lock_path(cfg)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "READY"
        worker, box = _in_thread(lambda: _take_gpu(cfg))
        said = StderrLines(capsys).wait_for("waiting for the GPU", 2, worker)
    finally:
        holder.kill()  # dies holding the lock: the kernel frees it, nobody resets anything
        holder.wait(timeout=30)
    worker.join(timeout=120)
    assert box == {"value": "held"}
    assert len(said) >= 2  # the first refusal, then every wait_report_s
    assert all(f"held by pid {holder.pid}" in s and f"inspect: `cat {host_lock_path(cfg)}`" in s for s in said)


def test_a_run_waiting_for_another_hosts_slot_says_so(prefect_harness, tmp_path, capsys):
    from prefect.client.orchestration import get_client

    from layerloop.tasks.config import load_config
    from layerloop.tasks.runtime.gpu_slot import GpuSlotBusy, ensure_gpu_slot, gpu_slot

    cfg = load_config(None, overrides={"loop": {"gpu_slot": "gpu-elsewhere", "gpu_lock_dir": str(tmp_path),
                                                "gpu_wait_s": None, "wait_report_s": 0.2}})
    ensure_gpu_slot(cfg)
    with get_client(sync_client=True) as client:  # a run on another host holds the slot
        lease = client.increment_concurrency_slots_with_lease(names=["gpu-elsewhere"], slots=1, mode="concurrency",
                                                              lease_duration=60).json()["lease_id"]
        try:
            worker, box = _in_thread(lambda: _take_gpu(cfg))
            said = StderrLines(capsys).wait_for("waiting for the GPU", 2, worker)
        finally:
            client.release_concurrency_slots_with_lease(lease)  # the other host lets go
    worker.join(timeout=120)
    assert box == {"value": "held"}
    assert len(said) >= 2 and all("slot 'gpu-elsewhere'" in s and "taken (1/1)" in s for s in said)
    assert "inspect: `prefect gcl inspect gpu-elsewhere`" in said[0]
    short = cfg.model_copy(update={"loop": cfg.loop.model_copy(update={"gpu_wait_s": 0.5})})
    with get_client(sync_client=True) as client:
        lease = client.increment_concurrency_slots_with_lease(names=["gpu-elsewhere"], slots=1, mode="concurrency",
                                                              lease_duration=60).json()["lease_id"]
        try:
            with pytest.raises(GpuSlotBusy, match="its slot 'gpu-elsewhere' stayed taken"):
                _take_gpu(short)
        finally:
            client.release_concurrency_slots_with_lease(lease)


def _first_to_end(procs: list[subprocess.Popen], timeout: float = 300.0) -> subprocess.Popen:
    """Block until one of `procs` has exited (a generous deadline: a hung run fails the test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = [p for p in procs if p.poll() is not None]
        if ended:
            return ended[0]
        time.sleep(0.1)
    raise AssertionError(f"neither run ended within {timeout:.0f} s")


def test_two_runs_started_together_exactly_one_does_the_work(prefect_harness, tiny_inputs, tmp_path):
    from layerloop.storage import schema as S
    from layerloop.storage.locks import HostLock
    from layerloop.storage.rounds import RoundStore

    store = tmp_path / "store"
    cmd = CLI + ["run", "--config", str(_config(tmp_path, store, tiny_inputs))]
    # this test holds the GPU until one run has ended: the winner cannot finish (and free the store) before
    # the loser tried, however the two starts are spread by the machine's load
    (tmp_path / "locks").mkdir()
    gpu = HostLock(str(tmp_path / "locks" / "layerloop-gpu-gpu.lock"))
    assert gpu.try_acquire()[0]
    try:
        runs = [subprocess.Popen(cmd, cwd=REPO, env=_api_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for _ in range(2)]
        _first_to_end(runs)
    finally:
        gpu.release()
    outs = [run.communicate(timeout=420) for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes == [0, 1], [o[1][-2000:] for o in outs]
    winner, loser = (0, 1) if runs[0].returncode == 0 else (1, 0)
    message = outs[loser][1]
    assert "error: the store" in message and "is in use by another run" in message
    assert f"pid {runs[winner].pid} on host {socket.gethostname()} (" in message and "started 20" in message
    rounds = RoundStore(str(store))
    assert rounds.committed_rounds() == [0, 1]
    rows = rounds.read(1, "all")
    assert rows[S.SAMPLE_ID].is_unique and len(rows) == 6
    debris = [p for p in rounds.gc(grace_s=0) if not p.endswith("/_work")]  # committed work areas go anyway
    assert debris == []  # nothing written twice: no orphan shard or temp file of a second writer
    assert rounds.verify() == []


def test_a_run_asked_to_wait_waits_then_names_the_holder(tmp_path, tiny_inputs):
    from layerloop.storage.locks import RUN_LOCK

    store = tmp_path / "store"
    lock = store / RUN_LOCK
    lock.parent.mkdir(parents=True)
    # a live run (this test process) holds the store
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": "t",
                                "started_at": "2026-11-27T01:00:00+00:00", "command": "layerloop run"}))
    cmd = CLI + ["run", "--config", str(_config(tmp_path, store, tiny_inputs, wait_report_s=0.5)), "--wait", "2"]
    done = subprocess.run(cmd, cwd=REPO, env=_ephemeral_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    waits = [line for line in done.stderr.splitlines() if line.startswith("waiting for the store")]
    assert waits and f"pid {os.getpid()}" in waits[0] and "inspect: `cat " in waits[0]
    assert f"pid {os.getpid()} on host {socket.gethostname()} (layerloop run), started 2026-11-27" in done.stderr
    assert json.loads(lock.read_text())["token"] == "t"  # the holder's lock is untouched


def test_a_lost_prefect_api_is_one_error_line_and_its_500s_are_retried(tiny_inputs, tmp_path, monkeypatch, capsys):
    """Past the client's retries, a Prefect server answering 500 (its PostgreSQL away) or not answering ends
    `layerloop run` with one line naming the API, not a traceback; the CLI has the client retry those 500s."""
    import httpx
    import typer
    from prefect.exceptions import PrefectHTTPStatusError

    from layerloop.flows.cli.run import guarded_run
    from layerloop.tasks.config import load_config
    from layerloop.tasks.runtime.orchestration import ride_out_database_restarts

    monkeypatch.delenv("PREFECT_CLIENT_RETRY_EXTRA_CODES", raising=False)  # restored after the test
    ride_out_database_restarts()  # what the CLI's prefect_env() does before prefect is imported
    assert os.environ["PREFECT_CLIENT_RETRY_EXTRA_CODES"] == "500"
    cfg = load_config(None, overrides=smoke_overrides(str(tmp_path / "store"), tiny_inputs))
    request = httpx.Request("POST", "http://127.0.0.1:4200/api/flow_runs/abc/set_state")
    lost = [PrefectHTTPStatusError.from_httpx_error(httpx.HTTPStatusError(
                "500", request=request, response=httpx.Response(500, request=request, json={}))),
            httpx.ConnectError("Connection refused", request=request)]
    for exc in lost:
        with pytest.raises(typer.Exit) as stopped:
            with guarded_run(cfg):
                raise exc
        assert stopped.value.exit_code == 1
        said = capsys.readouterr().err.splitlines()
        assert len(said) == 1 and said[0].startswith("error: the Prefect API at http://127.0.0.1:4200/api ")
    with pytest.raises(RuntimeError, match="a bug"):  # anything else still propagates with its traceback
        with guarded_run(cfg):
            raise RuntimeError("a bug")
