"""One run per store: the flows that write rounds hold the store's run lock for their whole run.

The lock is `<store>/_locks/run.json` (storage/locks.RunLock): put-if-absent with the holder's host, pid
and start time. A second run fails at once naming the holder, or waits for it when
`loop.store_lock_wait_s` asks (saying what it waits for every `loop.wait_report_s`); a holder on this host
that died is taken over without anyone deleting anything. Re-entrant in a process: `layerloop run` takes
it before Prefect starts (so a second run fails in a second, not after the API came up), then the flow
takes it again, which also covers deployments, whose flows run without the CLI.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from ...storage.errors import StoreUnreachableError
from ...storage.locks import RunLock
from ..config import PipelineConfig
from ..stages.handles import open_store
from . import publish


@contextmanager
def store_run_lock(cfg: PipelineConfig) -> Iterator[None]:
    """Hold the store for a run (StoreLockedError, naming the holder, when another live run has it)."""
    lock = open_store(cfg).run_lock()
    lock.acquire(wait_s=cfg.loop.store_lock_wait_s, report_every_s=cfg.loop.wait_report_s, say=publish.notice)
    try:
        yield
    finally:
        _release(lock)


def _release(lock: RunLock) -> None:
    """Let go of the store. When its server is away the lock stays and a notice says how it ends: failing
    here would hide the run's own outcome (its error, or rounds it committed before the store went away)."""
    try:
        lock.release()
    except StoreUnreachableError as exc:
        publish.notice(str(exc))
