"""Who holds what, and what happens when the holder dies: holder records, lock files on the store, host locks.

Three guards share one holder record (host, pid, the pid's start time, when, a unique token):

- `claim_file`: put-if-absent of a record on the store (local or fsspec). A holder on THIS host whose
  process is gone is taken over at once; a holder elsewhere is never judged dead from here. The store's
  run lock uses it; a round's commit claim (storage/lease.py) shares the holder record and the dead-holder
  rule and adds a lease, so a committer that died on another machine stops blocking once it runs out.
- `RunLock`: one run per store, `<store>/_locks/run.json`; re-entrant within a process (the CLI takes
  it, then the flow it starts takes it again), optionally waiting for a live holder to finish.
- `HostLock`: flock(2) on a local file, which the kernel drops however its holder dies (kill -9
  included); the holder's record is kept inside the file for whoever waits, and for the next holder.

`wait_for` is the one waiting loop: it polls, says what it waits for every `report_every_s`, and gives
up after `wait_s` (0: try once; None: forever).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Callable, TypeVar

from .errors import StoreLockedError
from .fsutil import is_local, put_if_absent, reachable, store_step

T = TypeVar("T")
RUN_LOCK = "_locks/run.json"
_READ_TRIES = 5  # a record being replaced can read as missing or empty for a moment


# -- holder records ----------------------------------------------------------------------------
def _pid_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first), or None off Linux or for a missing pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _pid_started(pid: int) -> str | None:
    """The pid's start time in clock ticks since boot: a reused pid has another one."""
    return _started_of(_pid_stat(pid))


def _started_of(fields: list[str] | None) -> str | None:
    return fields[19] if fields and len(fields) > 19 else None


def holder_record(**extra: Any) -> dict:
    """This process as a holder: host, pid, pid start time, wall-clock start, a unique token, extras."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_started": _pid_started(pid),
            "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex, **extra}


def holder_is_dead(holder: dict) -> bool:
    """True only for a holder on THIS host whose process is gone (or is a zombie, or its pid was reused).

    Holders from other hosts (or without a pid) are never judged dead here: only age rules or a person
    remove them.
    """
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    fields = _pid_stat(pid)
    if fields and fields[0] == "Z":  # killed, not yet reaped by its parent
        return True
    started = holder.get("pid_started")
    return started is not None and fields is not None and _started_of(fields) != started


def describe_holder(holder: dict) -> str:
    """`pid 123 on host h (layerloop run), started 2026-...`: what a person needs to find the holder."""
    if not holder:
        return "an unknown holder (its record is unreadable)"
    what = f" ({holder['command']})" if holder.get("command") else ""
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{what}, "
            f"started {holder.get('started_at') or holder.get('at') or '?'}")


# -- a record on the store, put-if-absent ------------------------------------------------------
def read_holder(fs: Any, path: str) -> dict | None:
    """The record at `path`; None when there is none; {} when it stays unreadable."""
    for _ in range(_READ_TRIES):
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            value = json.loads(data)
            return value if isinstance(value, dict) else {}
        except ValueError:
            time.sleep(0.05)  # non-atomic backends: caught mid-write
    return {}


def claim_file(fs: Any, path: str, record: dict) -> dict | None:
    """Put `record` at `path` unless a live holder has it: None when this call holds it, else the holder.

    A record with our own token counts as ours. A dead holder on this host is taken over (`_break`).
    """
    data = json.dumps(record, sort_keys=True).encode()
    holder: dict | None = None
    for _ in range(_READ_TRIES):
        if put_if_absent(fs, path, data):
            return None
        holder = read_holder(fs, path)
        if holder is None:
            continue  # released between our put and our read: try again
        if holder.get("token") is not None and holder.get("token") == record.get("token"):
            return None
        if not holder_is_dead(holder):
            return holder
        if not _break(fs, path, holder):
            time.sleep(0.05)  # another process is replacing the dead record: let it finish
    return holder or {}


def _break(fs: Any, path: str, dead: dict) -> bool:
    """Remove a dead holder's record, so that of several processes breaking it only one replaces it.

    Each breaker first puts `<path>.break-<digest of the dead record>`; only its winner re-reads the
    record and removes it if it is still the dead one. A later breaker of the same record finds a new
    record there and leaves it. A breaker file whose own process died is removed on the next try.
    """
    digest = hashlib.sha256(json.dumps(dead, sort_keys=True).encode()).hexdigest()[:16]
    breaker = f"{path}.break-{digest}"
    if not put_if_absent(fs, breaker, json.dumps(holder_record(), sort_keys=True).encode()):
        other = read_holder(fs, breaker)
        if other is not None and holder_is_dead(other):
            fs.rm(breaker)
        return False
    try:
        if read_holder(fs, path) == dead:
            fs.rm(path)
    finally:
        fs.rm(breaker)
    return True


def release_file(fs: Any, path: str, record: dict) -> None:
    """Remove the record at `path` if it is still `record` (never someone else's)."""
    current = read_holder(fs, path)
    if current and current.get("token") == record.get("token"):
        fs.rm(path)


# -- waiting ---------------------------------------------------------------------------------
def wait_for(attempt: Callable[[], tuple[bool, Any]], *, wait_s: float | None, report_every_s: float,
             say: Callable[[str], None], waiting: Callable[[Any], str],
             timed_out: Callable[[Any], Exception], poll_s: float = 0.5) -> Any:
    """Call `attempt` until it returns (True, value) and return value; (False, blocker) means not yet.

    Says `waiting(blocker)` at the first refusal and then every `report_every_s`; raises
    `timed_out(blocker)` once `wait_s` has passed (wait_s 0: after the first refusal; None: never).
    """
    deadline = None if wait_s is None else time.monotonic() + wait_s
    next_report = 0.0
    while True:
        done, value = attempt()
        if done:
            return value
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise timed_out(value)
        if now >= next_report:
            say(waiting(value))
            next_report = now + report_every_s
        pause = min(poll_s, report_every_s)
        time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - now)))


# -- the store's run lock --------------------------------------------------------------------
_HELD: dict[str, list] = {}  # lock url -> [record, depth]: re-entry by the process that holds it
_HELD_GUARD = threading.Lock()


def _command() -> str:
    """`layerloop run`-like name of this process for the holder record (no further arguments: no secrets)."""
    args = [os.path.basename(sys.argv[0] or "python")] + [a for a in sys.argv[1:2] if not a.startswith("-")]
    return " ".join(args)[:80]


class RunLock:
    """One run per store: `with store.run_lock(): ...` (see the module docstring)."""

    def __init__(self, fs: Any, path: str, url: str, store_url: str):
        self.fs, self.path, self.url, self.store_url = fs, path, url, store_url

    def acquire(self, *, wait_s: float | None = 0.0, report_every_s: float = 30.0,
                say: Callable[[str], None] = print) -> dict:
        """Hold the lock (waiting up to `wait_s` for a live holder); StoreLockedError names the holder."""
        with _HELD_GUARD:
            held = _HELD.get(self.url)
            if held is not None:
                held[1] += 1
                return held[0]
        record = holder_record(command=_command())

        def attempt() -> tuple[bool, Any]:
            holder = claim_file(self.fs, self.path, record)
            return (holder is None, holder)

        with store_step(self.store_url, "taking the store's run lock"):
            wait_for(attempt, wait_s=wait_s, report_every_s=report_every_s, say=say,
                     waiting=lambda h: f"waiting for the store {self.store_url}: another run holds it, "
                                       f"{describe_holder(h)}; inspect: {self._inspect(h)}",
                     timed_out=self._locked)
        with _HELD_GUARD:
            _HELD[self.url] = [record, 1]
        return record

    def release(self) -> None:
        with _HELD_GUARD:
            held = _HELD.get(self.url)
            if held is None:
                return
            held[1] -= 1
            if held[1] > 0:
                return
            del _HELD[self.url]
        # A store that stopped answering keeps the lock: StoreUnreachableError says so and what ends it.
        with reachable(self.store_url, "releasing the store's run lock",
                       outcome=f"the lock {self.url} stays; the next run on this host takes it over (its holder "
                               "is gone), a run on another machine names it: delete it once the store is back"):
            release_file(self.fs, self.path, held[0])

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _inspect(self, holder: dict) -> str:
        where = f"`cat {self.path}`" if is_local(self.fs) else self.url
        pid = f", `ps -p {holder['pid']}` on {holder.get('host')}" if holder and holder.get("pid") else ""
        return where + pid

    def _locked(self, holder: dict) -> StoreLockedError:
        return StoreLockedError(
            f"the store {self.store_url} is in use by another run: {describe_holder(holder)} (lock {self.url}). "
            "Let it finish, or queue behind it with `layerloop run --wait SECONDS` (loop.store_lock_wait_s). "
            "A holder on this host that died is taken over automatically; if the holder ran on another "
            f"machine and is gone, delete {self.url}.", holder)


# -- a host-level lock that dies with its holder ---------------------------------------------
class HostLock:
    """An exclusive flock(2) on a local file; the kernel releases it when the holder exits or is killed.

    The holder writes its record into the file (waiters read it to say who holds the lock). A holder
    that ends cleanly empties it; one that was killed leaves it, so the next holder finds it in
    `previous` and can clean up after it (the gpu guard releases the dead run's Prefect lease).
    """

    def __init__(self, path: str):
        self.path = path
        self.previous: dict = {}
        self.record: dict = {}
        self._fd: int | None = None

    def try_acquire(self) -> tuple[bool, dict]:
        """(True, previous record) when this call took the lock, else (False, the holder's record)."""
        import fcntl

        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            return False, holder
        self._fd = fd
        self.previous = self._read(fd)
        self.record = holder_record(command=_command())
        self._write(self.record)
        return True, self.previous

    def update(self, **fields: Any) -> None:
        """Add fields to the holder's record in the file (e.g. the Prefect lease it holds)."""
        self.record.update(fields)
        self._write(self.record)

    def release(self, *, keep_record: bool = False) -> None:
        """Unlock; `keep_record` leaves the record for the next holder (something was left to clean up)."""
        import fcntl

        if self._fd is None:
            return
        try:
            if not keep_record:
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            os.fchmod(fd, 0o666)  # every user of this host's GPU must be able to lock it
        except PermissionError:
            pass
        return fd

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            value = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def _write(self, record: dict) -> None:
        data = json.dumps(record, sort_keys=True).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)
