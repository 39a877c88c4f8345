"""Child process for the crash and conflict tests (run as a script, never imported by pytest).

  proc_writer.py crash STORE      write unit u0, then stall inside unit u1's second shard (the parent SIGKILLs it)
  proc_writer.py commit STORE TAG GO   write a unit, print READY, wait for file GO, then commit round 0
  proc_writer.py hold STORE LEASE_S GO  write a unit, take the commit claim (lease LEASE_S), print CLAIMED,
                                  stay alive without renewing until file GO, then try to commit round 0
  proc_writer.py units STORE TAG GO    wait for file GO, then write units TAG-0..2 and the unit "shared"
                                  that every such process also writes (several writers on one round)
  proc_writer.py runlock STORE GO DONE  print READY, wait for GO, try the store's run lock once: print WON
                                        (then hold it until file DONE exists) or LOCKED <message>
  proc_writer.py hostlock PATH          take a HostLock, record lease_id "lease-1" in it, print READY, sleep
  proc_writer.py outage STORE N GO BACK  write a unit of N samples, print READY, wait for GO, commit round 0:
                                  print WON, or UNREACHABLE <message> when the store stops answering; then
                                  wait for file BACK and commit again with a new writer in this process (as
                                  a task retry does): print WON or CONFLICT <message>

A store URL of s3:// reaches the test's moto server through FSSPEC_S3_ENDPOINT_URL and AWS_* in the env.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from layerloop.storage.errors import CommitConflictError, StoreLockedError, StoreUnreachableError  # noqa: E402
from layerloop.storage.locks import HostLock  # noqa: E402
from layerloop.storage.rounds import RoundStore  # noqa: E402
from tests.storage.helpers import samples  # noqa: E402

UNITS = {"u0": ("a", 5), "u1": ("b", 5), "u2": ("c", 4)}


def begin(store: RoundStore, **kw):
    return store.begin(0, parent_round=None, adapter_id=None, config={"k": 1}, shard_max_samples=2, **kw)


def _wait_file(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.01)


def crash(uri: str) -> None:
    w = begin(RoundStore(uri))
    w.write_unit("u0", samples(*UNITS["u0"]))

    def stalling():
        for i, s in enumerate(samples(*UNITS["u1"])):
            if i == 3:  # shard 0 of u1 is renamed, shard 1 holds one sample in its temp file
                print("STALLED", flush=True)
                time.sleep(60)
            yield s

    w.write_unit("u1", stalling())


def commit(uri: str, tag: str, go: str) -> None:
    w = begin(RoundStore(uri))
    w.write_unit(f"unit-{tag}", samples(tag, 3))
    print("READY", flush=True)
    _wait_file(go)
    _try_commit(w, f"unit-{tag}")


def _try_commit(w, unit: str) -> None:
    try:
        w.commit(w.rows().query(f"unit == '{unit}'"))
        print("WON", flush=True)
    except CommitConflictError as exc:
        print(f"CONFLICT {exc}", flush=True)


def hold(uri: str, lease_s: str, go: str) -> None:
    w = begin(RoundStore(uri), claim_lease_s=float(lease_s))
    w.write_unit("unit-held", samples("held", 3))
    w.claim.acquire()
    print("CLAIMED", flush=True)
    _wait_file(go)
    _try_commit(w, "unit-held")


def units(uri: str, tag: str, go: str) -> None:
    w = begin(RoundStore(uri))
    print("READY", flush=True)
    _wait_file(go)
    for i in range(3):
        w.write_unit(f"{tag}-{i}", samples(f"{tag}{i}", 3))
    w.write_unit("shared", samples("shared", 4))
    print("DONE", flush=True)



def runlock(uri: str, go: str, done: str) -> None:
    lock = RoundStore(uri).run_lock()
    print("READY", flush=True)
    _wait_file(go)
    try:
        lock.acquire(wait_s=0)
    except StoreLockedError as exc:
        print(f"LOCKED {exc}", flush=True)
        return
    print("WON", flush=True)
    _wait_file(done)
    lock.release()


def hostlock(path: str) -> None:
    lock = HostLock(path)
    assert lock.try_acquire()[0]
    lock.update(lease_id="lease-1")
    print("READY", flush=True)
    time.sleep(60)


def outage(uri: str, n: str, go: str, back: str) -> None:
    w = begin(RoundStore(uri))
    w.write_unit("unit-big", samples("big", int(n)))
    print("READY", flush=True)
    _wait_file(go)
    try:
        w.commit(w.rows())
        print("WON", flush=True)
        return
    except StoreUnreachableError as exc:
        print(f"UNREACHABLE {exc}", flush=True)
    _wait_file(back)
    retry = begin(RoundStore(uri))  # a fresh writer, as commit_round builds on a task retry
    _try_commit(retry, "unit-big")


if __name__ == "__main__":
    {"crash": crash, "commit": commit, "hold": hold, "units": units, "runlock": runlock,
     "hostlock": hostlock, "outage": outage}[sys.argv[1]](*sys.argv[2:])
