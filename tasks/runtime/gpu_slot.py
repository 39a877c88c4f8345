"""What guards the GPU: a host lock that dies with its holder, and the strict Prefect `gpu` slot, which a dead
holder can no longer keep taken.

Two flows never share one card by accident: GPU work runs inside `gpu_slot(cfg)`, which takes, in order,
1. the host lock `<loop.gpu_lock_dir or temp>/layerloop-gpu-<slot>.lock` (flock, storage/locks.HostLock):
   the kernel drops it however its holder ends, kill -9 included, so a dead run never blocks this host;
2. the strict Prefect global concurrency limit `loop.gpu_slot` (limit 1), through the public client API
   (increment with a lease, renewed in a thread, released on exit): it shows in the UI and keeps hosts
   sharing a Prefect server apart. Its lease id is written into the host lock file while it is held.
A run killed while holding both leaves its lease id in the lock file, and the next run on the host, once
it has the host lock, releases that lease at once. This matters most under the ephemeral API that
`layerloop run` starts without PREFECT_API_URL: it runs no lease reaper, so a dead run's slot used to stay
taken for good (measured: `active_slots` 1 minutes after the lease expired). There the host lock also
covers what no lease id records (a kill between grant and record, slots leaked by older versions): the
ephemeral database belongs to this host, and whoever holds the host lock holds every live layerloop
claim on it, so any slot still counted is a dead run's and is reset. A shared server reaps expired
leases itself (`loop.gpu_lease_s`); a run waiting on another host's slot says so.
A waiting run says what it waits for and how to inspect it every `loop.wait_report_s` (<= 30 s), and gives
up after `loop.gpu_wait_s`. Flows take the guard once around a round's GPU stages, not per task: inside a
task run Prefect 3.9 frees a slot asynchronously, so the next acquire waited 2-6 s here (vs ~30 ms from the
flow body). Called from flow bodies; prefect is imported inside.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Iterator
from uuid import UUID

from ...storage.locks import HostLock, describe_holder, wait_for
from ..config import ConfigError, PipelineConfig
from . import publish

_RENEW_FRACTION = 0.5  # renew the lease when half of it has passed: one failed renewal still leaves time
_UNREACHABLE_RETRY_S = 3.0  # while the server is away: a restart is noticed within seconds of its return


class GpuSlotBusy(RuntimeError):
    """The GPU stayed taken longer than loop.gpu_wait_s."""


def ensure_gpu_slot(cfg: PipelineConfig) -> None:
    """The strict `gpu` limit must exist before a GPU stage asks for it: create it, or say how to."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(cfg.loop.gpu_slot)
            return
        except ObjectNotFound:
            if not cfg.loop.create_gpu_slot:
                raise ConfigError(
                    f"global concurrency limit {cfg.loop.gpu_slot!r} does not exist on this Prefect server: run "
                    f"`prefect gcl create {cfg.loop.gpu_slot} --limit 1` or set loop.create_gpu_slot: true"
                ) from None
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=cfg.loop.gpu_slot, limit=1))


def host_lock_path(cfg: PipelineConfig) -> str:
    """This host's lock file of the slot; every run that names the slot must see the same folder."""
    return os.path.join(cfg.loop.gpu_lock_dir or tempfile.gettempdir(), f"layerloop-gpu-{cfg.loop.gpu_slot}.lock")


@contextmanager
def gpu_slot(cfg: PipelineConfig) -> Iterator[None]:
    """Hold the host lock and the strict global concurrency slot around GPU work (see the module docstring)."""
    deadline = None if cfg.loop.gpu_wait_s is None else time.monotonic() + cfg.loop.gpu_wait_s
    lock = HostLock(host_lock_path(cfg))
    _take_host_lock(cfg, lock, deadline)
    held = None
    try:
        _reclaim(cfg, lock)
        held = _Held(_take_slot(cfg, deadline), lock)
        with _renewing(held, cfg):
            yield
    finally:
        if held is not None and held.lease is not None and _release(held.lease):
            lock.record["lease_id"] = None
        lock.release(keep_record=bool(lock.record.get("lease_id")))  # an unreleased lease stays for the next holder


class _Held:
    """The lease this run holds, and when the server last confirmed it (recorded in the host lock file).

    The lease can change while the run holds the GPU: a Prefect server that keeps leases in memory (its
    default) forgets them when it restarts, while the slot they took stays counted in its database.
    """

    def __init__(self, lease: UUID, lock: HostLock):
        self.lock, self.lease = lock, lease
        self.confirmed = time.monotonic()
        self.unreachable_since: float | None = None
        lock.update(lease_id=str(lease), confirmed_at=time.time())

    def renewed(self) -> None:
        self.confirmed, self.unreachable_since = time.monotonic(), None
        self.lock.update(confirmed_at=time.time())

    def replace(self, lease: UUID | None) -> None:
        self.lease, self.unreachable_since = lease, None
        self.confirmed = time.monotonic()
        self.lock.update(lease_id=str(lease) if lease else None, confirmed_at=time.time())


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _busy(cfg: PipelineConfig, what: str) -> GpuSlotBusy:
    return GpuSlotBusy(f"waited {cfg.loop.gpu_wait_s:.0f} s (loop.gpu_wait_s) for the GPU: {what}")


def _take_host_lock(cfg: PipelineConfig, lock: HostLock, deadline: float | None) -> None:
    def waiting(holder: dict) -> str:
        pid = f", `ps -p {holder['pid']}`" if holder.get("pid") else ""
        return (f"waiting for the GPU: this host's lock {lock.path} is held by {describe_holder(holder)}; "
                f"inspect: `cat {lock.path}`{pid}. It frees itself when that run ends or dies.")

    wait_for(lock.try_acquire, wait_s=_left(deadline), report_every_s=cfg.loop.wait_report_s,
             say=publish.notice, waiting=waiting,
             timed_out=lambda h: _busy(cfg, f"another run on this host holds it, {describe_holder(h)}"))


def _ephemeral_api() -> bool:
    """True when this process talks to an ephemeral server (no PREFECT_API_URL): a database of this host only."""
    from prefect.settings import get_current_settings

    return not get_current_settings().api.url


def _reclaim(cfg: PipelineConfig, lock: HostLock) -> None:
    """Free what a dead holder of the host lock left taken: its recorded lease, and under the ephemeral API
    any slot still counted (only dead layerloop runs of this host can hold one while we hold the lock)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    name, dead = cfg.loop.gpu_slot, lock.previous.get("lease_id")
    with get_client(sync_client=True) as client:
        if dead:
            lock.update(lease_id=dead)  # on record until released: dying here must not lose it
            if not _lease_known(client, UUID(dead)) and _unexpired(lock.previous, cfg):
                _give_back_count(client, name)  # a restarted server forgot it; its count is still the dead run's
            client.release_concurrency_slots_with_lease(UUID(dead))  # idempotent
            lock.update(lease_id=None)
            publish.notice(f"reclaimed the {name!r} slot lease {dead} of a run that died holding the GPU: "
                           f"{describe_holder(lock.previous)}")
        if not _ephemeral_api():
            return
        limit = client.read_global_concurrency_limit_by_name(name)
        if limit.active_slots:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
            publish.notice(f"reset {limit.active_slots} taken {name!r} slot(s) that no live run on this host "
                           "holds (left by a killed run)")


def _lease_known(client, lease: UUID) -> bool:
    """Whether the server still holds `lease` (renewing an unknown lease answers 410 Gone)."""
    import httpx

    try:
        client.renew_concurrency_lease(lease, lease_duration=60)
        return True
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 410:
            return False
        raise


def _unexpired(record: dict, cfg: PipelineConfig) -> bool:
    """A recorded lease the server confirmed less than a lease ago cannot have expired: if the server does not
    know it, it forgot it (a restart), and no reaper gave its slot back."""
    confirmed = record.get("confirmed_at")
    return isinstance(confirmed, (int, float)) and time.time() - confirmed < cfg.loop.gpu_lease_s


def _give_back_count(client, name: str) -> None:
    """Decrement the slot count a forgotten lease still holds (clamped at 0 by the server)."""
    client.release_concurrency_slots(names=[name], slots=1, occupancy_seconds=1.0)  # > 0 required; only stats
    publish.notice(f"the Prefect server no longer knows this host's lease on the {name!r} slot (restarted with "
                   "in-memory lease storage?): gave back the slot it still counted")


def _take_slot(cfg: PipelineConfig, deadline: float | None) -> UUID:
    """A lease on one slot of the strict limit, waiting (and saying so) while another host holds it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    name, api = cfg.loop.gpu_slot, get_current_settings().api.url or "the ephemeral API"
    with get_client(sync_client=True) as client:
        def attempt() -> tuple[bool, object]:
            return _try_slot(client, cfg)

        def waiting(limit) -> str:
            return (f"waiting for the GPU: the global concurrency slot {name!r} on {api} is taken "
                    f"({limit.active_slots}/{limit.limit}) by a run on another host; inspect: "
                    f"`prefect gcl inspect {name}`. A dead holder's lease expires after loop.gpu_lease_s.")

        return wait_for(attempt, wait_s=_left(deadline), report_every_s=cfg.loop.wait_report_s,
                        say=publish.notice, waiting=waiting, poll_s=1.0,
                        timed_out=lambda limit: _busy(cfg, f"its slot {name!r} stayed taken; inspect: "
                                                           f"`prefect gcl inspect {name}`"))


def _try_slot(client, cfg: PipelineConfig) -> tuple[bool, object]:
    """(True, lease id) when the server granted a slot; (False, the limit) when it is taken (423)."""
    import httpx

    name = cfg.loop.gpu_slot
    try:
        response = client.increment_concurrency_slots_with_lease(
            names=[name], slots=1, mode="concurrency", lease_duration=cfg.loop.gpu_lease_s)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code != 423:
            raise
        return False, client.read_global_concurrency_limit_by_name(name)
    body = response.json()
    lease = UUID(body["lease_id"])
    if not body.get("limits"):  # strict: a missing limit must not pass as "no limit"
        client.release_concurrency_slots_with_lease(lease)
        raise ConfigError(f"global concurrency limit {name!r} does not exist on this Prefect server: run "
                          f"`prefect gcl create {name} --limit 1` or set loop.create_gpu_slot: true")
    return True, lease


@contextmanager
def _renewing(held: _Held, cfg: PipelineConfig) -> Iterator[None]:
    """Renew the lease in a thread while the body runs (a dead process renews nothing: the lease lapses).

    While the server is unreachable it retries every few seconds; when it answers that it does not know
    the lease (a restart of a server that keeps leases in memory), the run re-leases its slot (`_relet`).
    """
    from prefect.client.orchestration import get_client
    from prefect.logging import get_logger

    stop = threading.Event()
    lease_s, log = cfg.loop.gpu_lease_s, get_logger("layerloop.gpu")

    def renew() -> None:
        with get_client(sync_client=True) as client:
            while not stop.wait(_UNREACHABLE_RETRY_S if held.unreachable_since else lease_s * _RENEW_FRACTION):
                _renew_once(client, held, cfg, log)

    thread = threading.Thread(target=renew, name="gpu-lease-renewal", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def _renew_once(client, held: _Held, cfg: PipelineConfig, log) -> None:
    import httpx

    if held.lease is None:  # lost to another run (see _relet): nothing of ours to renew
        return
    try:
        client.renew_concurrency_lease(held.lease, lease_duration=cfg.loop.gpu_lease_s)
        held.renewed()
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code != 410:
            log.warning("renewing gpu slot lease %s failed: %s", held.lease, exc)
            return
        try:
            _relet(client, held, cfg)
        except Exception as again:  # noqa: BLE001 - the next renewal tick tries once more
            log.warning("re-leasing the gpu slot failed (%s): retrying", again)
    except Exception as exc:  # noqa: BLE001 - the server is away: retried every few seconds
        held.unreachable_since = held.unreachable_since or time.monotonic()
        log.warning("renewing gpu slot lease %s failed (%s): retrying", held.lease, exc)


def _relet(client, held: _Held, cfg: PipelineConfig) -> None:
    """The server forgot the lease of a run that still holds the GPU. If it was confirmed less than a lease
    before the server went away, it cannot have expired, so its slot is still counted: give that back and
    take a new lease. Otherwise take a new lease if the slot is free, and say so if another run got it."""
    name = cfg.loop.gpu_slot
    lost_at = held.unreachable_since or time.monotonic()
    if lost_at - held.confirmed < cfg.loop.gpu_lease_s:
        _give_back_count(client, name)
    granted, value = _try_slot(client, cfg)
    if granted:
        held.replace(value)
        publish.notice(f"re-leased the {name!r} slot (lease {value}) for the GPU work in progress")
        return
    held.replace(None)
    publish.notice(f"this run's lease on the {name!r} slot expired while the Prefect server was away and another "
                   f"run took the slot: the GPU may be shared until this stage ends; inspect `prefect gcl inspect "
                   f"{name}`")


def _release(lease: UUID) -> bool:
    """Give the slot back; False (the lease id stays recorded for the next holder) when the API is away."""
    from prefect.client.orchestration import get_client
    from prefect.logging import get_logger

    try:
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(lease)
        return True
    except Exception as exc:  # noqa: BLE001 - the next holder of the host lock releases it instead
        get_logger("layerloop.gpu").warning("releasing gpu slot lease %s failed (%s): the next run reclaims it",
                                            lease, exc)
        return False
