"""Faults under a running pipeline, with real processes: the Prefect server SIGKILLed and restarted on the
same PostgreSQL and port while a run holds the `gpu` slot (docs/failures.md).

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

HOLDER = Path(__file__).with_name("gpu_holder.py")


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
