"""Locks with real processes: the store's run lock (one run per store, dead holders taken over, waiting
with reports) and the host lock that dies with its holder."""
from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest

from layerloop.storage.errors import StoreLockedError
from layerloop.storage.locks import RUN_LOCK, HostLock, holder_is_dead, holder_record
from layerloop.storage.rounds import RoundStore

from .helpers import dead_pid
from .test_crash import _spawn, _wait_for


def _plant(store: RoundStore, **holder) -> Path:
    path = Path(store.root) / RUN_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"token": "someone-else", "started_at": "2026-01-01T00:00:00+00:00", **holder}))
    return path


def test_processes_started_together_exactly_one_holds_the_store(tmp_path):
    uri, go, done = str(tmp_path / "store"), str(tmp_path / "go"), str(tmp_path / "done")
    kids = [_spawn("runlock", uri, go, done) for _ in range(4)]
    for kid in kids:
        _wait_for(kid, "READY")
    Path(go).touch()
    said = {}
    for kid in kids:
        said[kid.pid] = kid.stdout.readline().strip()  # each answers at once: WON or LOCKED
    Path(done).touch()
    for kid in kids:
        kid.communicate(timeout=60)
    winners = [pid for pid, s in said.items() if s == "WON"]
    assert len(winners) == 1, said
    for pid, s in said.items():
        if pid != winners[0]:
            assert s.startswith("LOCKED") and f"pid {winners[0]} on host {socket.gethostname()}" in s
            assert "started 20" in s and "--wait" in s
    assert not (Path(uri) / RUN_LOCK).exists()  # the winner released it


def test_dead_holder_on_this_host_is_taken_over(tmp_path):
    store = RoundStore(str(tmp_path / "store"))
    _plant(store, host=socket.gethostname(), pid=dead_pid())
    lock = store.run_lock()
    record = lock.acquire(wait_s=0)
    assert json.loads((Path(store.root) / RUN_LOCK).read_text())["token"] == record["token"]
    lock.release()
    assert not (Path(store.root) / RUN_LOCK).exists()


def test_many_processes_breaking_one_dead_holder_exactly_one_wins(tmp_path):
    uri, go, done = str(tmp_path / "store"), str(tmp_path / "go"), str(tmp_path / "done")
    _plant(RoundStore(uri), host=socket.gethostname(), pid=dead_pid())
    kids = [_spawn("runlock", uri, go, done) for _ in range(4)]
    for kid in kids:
        _wait_for(kid, "READY")
    Path(go).touch()
    said = [kid.stdout.readline().strip() for kid in kids]
    Path(done).touch()
    for kid in kids:
        kid.communicate(timeout=60)
    assert said.count("WON") == 1, said
    assert not list((Path(uri) / RUN_LOCK).parent.glob("*.break-*"))


@pytest.mark.parametrize("holder", ["live-pid", "other-host"])
def test_live_or_remote_holder_blocks_and_a_waiter_reports(tmp_path, holder):
    store = RoundStore(str(tmp_path / "store"))
    fields = {"live-pid": {"host": socket.gethostname(), "pid": os.getppid()},
              "other-host": {"host": "elsewhere.invalid", "pid": 4242}}[holder]
    _plant(store, **fields)
    with pytest.raises(StoreLockedError, match=f"pid {fields['pid']} on host {fields['host']}, started 2026"):
        store.run_lock().acquire(wait_s=0)
    said: list[str] = []
    with pytest.raises(StoreLockedError) as caught:
        store.run_lock().acquire(wait_s=0.6, report_every_s=0.1, say=said.append)
    assert caught.value.holder["pid"] == fields["pid"]
    assert said and all(f"pid {fields['pid']}" in s and "inspect: `cat " in s for s in said)


def test_a_waiter_gets_the_store_when_the_holder_finishes(tmp_path):
    uri, go, done = str(tmp_path / "store"), str(tmp_path / "go"), str(tmp_path / "done")
    holder = _spawn("runlock", uri, go, done)
    _wait_for(holder, "READY")
    Path(go).touch()
    _wait_for(holder, "WON")
    said: list[str] = []

    def report(message: str) -> None:
        said.append(message)
        if len(said) == 2:  # the holder finishes after the waiter has said twice what it waits for
            Path(done).touch()

    lock = RoundStore(uri).run_lock()
    lock.acquire(wait_s=None, report_every_s=0.05, say=report)
    holder.communicate(timeout=60)
    assert len(said) >= 2 and f"pid {holder.pid}" in said[0]
    lock.release()


def test_run_lock_is_reentrant_in_its_process(tmp_path):
    store = RoundStore(str(tmp_path / "store"))
    outer, inner = store.run_lock(), store.run_lock()
    first = outer.acquire()
    assert inner.acquire() == first  # the CLI holds it, then the flow it starts takes it again
    inner.release()
    assert (Path(store.root) / RUN_LOCK).exists()
    outer.release()
    assert not (Path(store.root) / RUN_LOCK).exists()


def test_host_lock_dies_with_its_holder(tmp_path):
    path = str(tmp_path / "gpu.lock")
    kid = _spawn("hostlock", path)
    try:
        _wait_for(kid, "READY")
        got, holder = HostLock(path).try_acquire()
        assert not got and holder["pid"] == kid.pid and holder["lease_id"] == "lease-1"
        os.kill(kid.pid, signal.SIGKILL)
        kid.wait(timeout=30)
        lock = HostLock(path)
        got, previous = lock.try_acquire()  # nobody reset anything: the kernel dropped the dead one's lock
        assert got and previous["pid"] == kid.pid and previous["lease_id"] == "lease-1"
        assert holder_is_dead(previous)
        lock.release()
        again = HostLock(path)
        assert again.try_acquire() == (True, {})  # a clean release leaves no record behind
        again.release()
    finally:
        if kid.poll() is None:
            kid.kill()


def test_holder_liveness_rules():
    me = holder_record()
    assert not holder_is_dead(me)
    assert holder_is_dead({**me, "pid": dead_pid()})
    assert holder_is_dead({**me, "pid_started": "1"})  # same pid, other start time: the pid was reused
    assert not holder_is_dead({**me, "host": "elsewhere.invalid", "pid": dead_pid()})
    assert not holder_is_dead({"host": socket.gethostname()})
