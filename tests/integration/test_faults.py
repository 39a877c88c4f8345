"""Faults under a running pipeline, with real processes: the Prefect server SIGKILLed and restarted on the
same PostgreSQL and port while a run holds the `gpu` slot, and PostgreSQL itself crashed and restarted
under the server while a `layerloop run` is mid-round (docs/failures.md).

The server keeps concurrency leases in memory (Prefect's default, what `prefect server start` does unless
PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE says otherwise): the restart forgets the holder's lease while
PostgreSQL keeps the slot counted. Before tasks/runtime/gpu_slot.py re-leased such a slot, every later
acquisition waited for good ("taken (1/1) by a run on another host").
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .services import PrefectStack
from tests.waiting import wait_until

HOLDER = Path(__file__).with_name("gpu_holder.py")
REPO = Path(__file__).resolve().parents[2]
PG_OUTAGE_S = 15  # how long the database stays down: the run's renewals and API calls fail meanwhile


def _cfg(tmp_path) -> str:
    from layerloop.tasks.config import PipelineConfig

    cfg = PipelineConfig.model_validate({"store": {"uri": str(tmp_path / "store")},
                                         "loop": {"gpu_lock_dir": str(tmp_path / "locks"), "gpu_lease_s": 60,
                                                  "wait_report_s": 5, "gpu_wait_s": 240}})
    return json.dumps(cfg.model_dump(mode="json"))


class _Lines:
    """A child's merged output, read in a thread; wait_for(word) blocks until a line holds it."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines, self.cond = proc, [], threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip())
                self.cond.notify_all()

    def wait_for(self, word: str, timeout: float) -> float:
        start = time.monotonic()
        with self.cond:
            if not self.cond.wait_for(lambda: any(word in line for line in self.lines), timeout=timeout):
                raise AssertionError(f"no {word!r} within {timeout:.0f} s; output:\n" + "\n".join(self.lines))
        return time.monotonic() - start


def _active_slots(env: dict, name: str = "gpu") -> int:
    """The slot's count on the stack's server (a settings context: it beats any test harness's API)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            return client.read_global_concurrency_limit_by_name(name).active_slots


def _kill_server(stack: PrefectStack) -> None:
    os.killpg(stack.server.proc.pid, signal.SIGKILL)
    stack.server.proc.wait(timeout=30)
    stack.server.proc = None


def _restart(stack: PrefectStack) -> None:
    _kill_server(stack)
    time.sleep(3)  # the run sees the server gone, as an operator's restart would show it
    stack.server.start()  # same port, same database


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """PostgreSQL + a Prefect server with Prefect's default in-memory lease storage; tests restart it.

    Set explicitly: `layerloop`'s CLI sets filesystem lease storage in its own environment (flows/cli/config.py),
    and an earlier test in the session may have left that in os.environ, which the server would inherit.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "prefect.server.concurrency.lease_storage.memory")
        with PrefectStack(tmp_path_factory.mktemp("services"), ui=False) as st:
            yield st


def _holder(config: str, stop: Path, env: dict) -> tuple[subprocess.Popen, _Lines]:
    proc = subprocess.Popen([sys.executable, str(HOLDER), config, str(stop)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, _Lines(proc)


def _fresh_run_gets_the_slot(config: str, stop: Path, env: dict) -> None:
    stop.write_text("")
    fresh = subprocess.run([sys.executable, str(HOLDER), config, str(stop)], env=env, text=True,
                           capture_output=True, timeout=120)
    assert fresh.returncode == 0 and "AGAIN" in fresh.stdout, fresh.stdout + fresh.stderr
    assert _active_slots(env) == 0


@pytest.mark.timeout(600)
def test_a_server_restart_under_a_held_gpu_slot_neither_blocks_the_run_nor_the_next(stack, tmp_path):
    env = dict(stack.env)
    config, stop = _cfg(tmp_path), tmp_path / "STOP"
    holder, out = _holder(config, stop, env)
    try:
        out.wait_for("HELD", 120)
        assert _active_slots(env) == 1
        _restart(stack)
        assert _active_slots(env) == 1  # PostgreSQL still counts the slot; the server forgot its lease
        took = out.wait_for("re-leased the 'gpu' slot", 60)  # the holder noticed within seconds
        assert took < 60 and _active_slots(env) == 1  # one count: the re-leased one, not two
        stop.write_text("")
        out.wait_for("AGAIN", 60)  # the run's next GPU stage got the slot at once
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
    assert _active_slots(env) == 0
    _fresh_run_gets_the_slot(config, stop, env)


@pytest.mark.timeout(600)
def test_a_run_killed_while_the_server_was_down_does_not_block_the_rerun(stack, tmp_path):
    env = dict(stack.env)
    config, stop = _cfg(tmp_path), tmp_path / "STOP"
    holder, out = _holder(config, stop, env)
    try:
        out.wait_for("HELD", 120)
        _kill_server(stack)
        os.killpg(holder.pid, signal.SIGKILL)  # the run dies while the server is away: nothing was released
        holder.wait(timeout=30)
        stack.server.start()
    finally:
        holder.kill()
    assert _active_slots(env) == 1  # the dead run's count, whose lease the restarted server never knew
    _fresh_run_gets_the_slot(config, stop, env)  # the rerun gave it back (the host lock recorded the lease)


def _run_env(stack: PrefectStack) -> dict:
    return {**stack.env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _smoke_config(tmp_path) -> tuple[Path, Path]:
    """The smoke-size loop of tests/flows (six seeds, six pool composites, one round after the seed)."""
    import yaml

    from layerloop.tasks.stages.demo import make_inputs, smoke_overrides

    store = tmp_path / "store"
    inputs = make_inputs(str(tmp_path / "inputs"), n_seeds=6, n_pool=6, panel_size=32, seed=3)
    data = smoke_overrides(str(store), inputs, rounds=1)
    data["loop"].update(gpu_lock_dir=str(tmp_path / "locks"), gpu_wait_s=240, wait_report_s=5)
    path = tmp_path / "layerloop.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, store


@pytest.mark.timeout(900)
def test_postgres_restarted_under_a_run_then_the_rerun_finishes_clean(stack, tmp_path):
    """PostgreSQL crashes (`pg_ctl stop -m immediate`) mid-round under a live Prefect server and comes back
    PG_OUTAGE_S later on the same data dir and port: the run carries on or fails within a minute with one
    `error:` line, and the same command then finishes the round unaided, nothing doubled, nothing held."""
    from layerloop.storage import schema as S
    from layerloop.storage.rounds import RoundStore

    config, store = _smoke_config(tmp_path)
    cmd = [sys.executable, "-m", "layerloop.flows", "run", "--config", str(config)]
    env = _run_env(stack)
    run = subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           start_new_session=True)
    out = _Lines(run)
    try:
        units = store / "rounds" / "round-0001" / "_work" / "units"
        wait_until(lambda: any(units.glob("gen-0000.parquet")), "gen-0000.parquet appeared", proc=run,
                   output=lambda: "\n".join(out.lines[-60:]), timeout=300, poll_s=0.2)
        stack.postgres.crash()
        down_at = time.monotonic()
        time.sleep(PG_OUTAGE_S)  # the outage itself (not a race): the run works on while the database is away
        stack.postgres.start_again()
        back_at = time.monotonic()
        stack.server.wait_healthy()  # the server itself never stopped; it answers again once it reconnects
        rc = run.wait(timeout=420)
        ended = time.monotonic()
    finally:
        run.kill()
    (tmp_path / "first-run.log").write_text("\n".join(out.lines))
    errors = [line for line in out.lines if line.startswith("error:")]
    print(f"first run: rc={rc}, ended {ended - down_at:.1f} s after the crash, {ended - back_at:.1f} s after "
          f"PostgreSQL was back; error lines: {errors}")
    assert rc in (0, 1), "\n".join(out.lines[-80:])
    if rc == 1:  # failed: at once (once the database is back), with one line saying what happened
        assert len(errors) == 1 and ended - back_at < 60, "\n".join(out.lines[-80:])
    rerun = subprocess.run(cmd, cwd=REPO, env=env, text=True, capture_output=True, timeout=600)
    print("rerun:", rerun.returncode, "\n".join((rerun.stdout + rerun.stderr).splitlines()[-15:]))
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    rounds = RoundStore(str(store))
    assert rounds.committed_rounds() == [0, 1]
    rows = rounds.read(1, "all")
    assert rows[S.SAMPLE_ID].is_unique and len(rows) == 6
    assert rounds.verify() == []
    assert not (store / "_locks" / "run.json").exists()  # the store is free
    assert _active_slots(env) == 0  # and the GPU slot: nobody has to `prefect gcl` anything
    assert (tmp_path / "locks" / "layerloop-gpu-gpu.lock").read_text() == ""  # no dead holder recorded
