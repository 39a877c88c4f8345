"""The commit claim of a round: one writer at a time may publish it, and a silent writer's claim runs out.

The rule (docs/storage.md, "Commit claims"):

- A writer claims a round by creating `_work/claims/<generation>.json` put-if-absent, generation 1 first.
  The record holds its token, host, pid and `expires_at` = now + lease_s (its lease).
- While it commits, the holder renews `expires_at` (every lease_s / 3). Before each write that readers
  could see (the manifests, COMMITTED) it checks that its generation is still the newest and that its
  lease has more than lease_s / 3 left; otherwise it stops with CommitConflictError, publishing nothing.
- Another writer may take over the newest claim once its lease has run out (any store, any host) or,
  sooner, when it was written on this host by a process that no longer exists (kill -9, then resume on
  the same machine; storage/locks.py's dead-holder rule). Taking over is a put-if-absent of the next
  generation: of several resumers exactly one wins, and a claim is never deleted to be replaced, so two
  writers never both hold it. Only its holder removes a claim (`release`, a commit that stopped on a
  full disk), which hands the round back to the generation before it, already takeable.
- A commit that stopped because the store stopped answering cannot remove its claim (`abandon`): the
  process remembers the claim as given up, so its own retry (a task retry, same pid, lease still running)
  takes it over at once; other processes wait for its lease, or for the pid to end on this host.
- Clocks of the writers' machines must agree to well within lease_s / 3 (NTP does).

Object stores give no liveness signal (no pid, no lock that dies with its process), which is why the
lease, not the pid rule, is what recovers a claim left on `s3://` by a writer on another machine.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
import time
import uuid
from typing import Any

from .errors import CommitConflictError
from .fsutil import is_unreachable, put_if_absent, read_json, write_bytes
from .locks import describe_holder, holder_is_dead, holder_record

CLAIMS = "claims"
DEFAULT_LEASE_S = 120.0
_GENERATION = re.compile(r"/(\d{6})\.json$")
# Writers of this process whose commit stopped while the store was away, leaving their claim on it:
# nobody holds those claims any more, and only this process can know it (see CommitClaim.abandon).
_ABANDONED: set[str] = set()


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="milliseconds")


def _expires(record: dict) -> float | None:
    try:
        return _dt.datetime.fromisoformat(record["expires_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def is_takeable(record: dict, now: float | None = None) -> bool:
    """May another writer take this claim over? Its lease ran out, its writer died on this host, or its
    writer was this process's and gave it up (abandon)."""
    expires = _expires(record)
    now = time.time() if now is None else now
    return (expires is not None and expires <= now) or holder_is_dead(record) or record.get("writer") in _ABANDONED


def describe(record: dict) -> str:
    """`writer W, pid P on host H (...), started S, lease until T`: who holds a claim, for error messages."""
    return (f"writer {record.get('writer', '?')}, {describe_holder(record)}, "
            f"lease until {record.get('expires_at', '?')}")


def newest_claim(fs: Any, work_dir: str) -> tuple[int, dict | None]:
    """(generation, record) of the newest claim under `work_dir`; (0, None) when there is none."""
    gens = sorted(int(m.group(1)) for p in fs.glob(f"{work_dir}/{CLAIMS}/*.json")
                  if (m := _GENERATION.search(p)))
    if not gens:
        return 0, None
    try:
        return gens[-1], read_json(fs, _path(work_dir, gens[-1]))
    except FileNotFoundError:  # gc removed it between the listing and the read: someone else's business now
        return gens[-1], {}


def _path(work_dir: str, generation: int) -> str:
    return f"{work_dir}/{CLAIMS}/{generation:06d}.json"


class CommitClaim:
    """One writer's claim on one round's work area (see the module docstring for the rule)."""

    def __init__(self, fs: Any, work_dir: str, what: str, *, writer: str | None = None,
                 lease_s: float = DEFAULT_LEASE_S):
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
        self.fs, self.work_dir, self.what, self.lease_s = fs, work_dir, what, float(lease_s)
        self.writer = writer or uuid.uuid4().hex
        self.generation = 0
        self.expires_at = 0.0
        self._renewed_at = 0.0

    def _record(self) -> bytes:
        # storage/locks.py's holder record (host, pid, pid start time: a dead writer here is seen at once)
        return json.dumps(holder_record(writer=self.writer, token=self.writer, generation=self.generation,
                                        lease_s=self.lease_s, renewed_at=_iso(time.time()),
                                        expires_at=_iso(self.expires_at)), indent=2, sort_keys=True).encode()

    def acquire(self) -> None:
        """Take the claim: the first generation, or the next one over a takeable (or our own) claim."""
        gen, holder = newest_claim(self.fs, self.work_dir)
        if holder is not None and holder.get("writer") != self.writer and not is_takeable(holder):
            raise CommitConflictError(f"{self.what} is being committed by {describe(holder)}; its claim can be "
                                      f"taken over when that lease runs out (store.claim_lease_s)")
        self.generation, self.expires_at = gen + 1, time.time() + self.lease_s
        if not put_if_absent(self.fs, _path(self.work_dir, self.generation), self._record()):
            raise CommitConflictError(f"{self.what}: another writer took the commit claim first")
        self._renewed_at = time.time()

    def renew(self) -> None:
        """Push our lease's end out by lease_s (only we write our generation's file)."""
        self.expires_at = time.time() + self.lease_s
        write_bytes(self.fs, _path(self.work_dir, self.generation), self._record())
        self._renewed_at = time.time()

    def renew_if_due(self) -> None:
        """Renew when a third of the lease has passed since the last renewal (call it often)."""
        if time.time() - self._renewed_at >= self.lease_s / 3:
            self.renew()

    def holds(self) -> bool:
        """Is the newest claim ours (whatever its lease says)?"""
        gen, holder = newest_claim(self.fs, self.work_dir)
        return self.generation > 0 and gen == self.generation and (holder or {}).get("writer") == self.writer

    def release(self) -> None:
        """End our claim now (a commit that stopped, e.g. on a full disk, where a removal still works and a
        write may not): our generation's file goes, so the newest is again the one we took over (takeable)
        or none, and the next writer, or our retry, claims at once. Call only while holds() (the caller
        checks it before undoing anything else)."""
        self.fs.rm(_path(self.work_dir, self.generation))

    def abandon(self) -> None:
        """Give the claim up after a commit that stopped because the store did not answer: removed if the
        store answers again by now, else remembered in this process as nobody's (is_takeable), so a retry
        of the commit here does not wait a whole lease for its own dead claim. Never raises for an
        unreachable store (the caller is already reporting that)."""
        _ABANDONED.add(self.writer)
        try:
            if self.holds():
                self.release()
        except Exception as exc:  # noqa: BLE001 - only "still unreachable" is expected here
            if not is_unreachable(exc):
                raise

    def check(self) -> None:
        """Before a write readers could see: we still hold the newest claim, with time left; else stop."""
        if time.time() > self.expires_at - self.lease_s / 3:
            raise CommitConflictError(
                f"{self.what}: our commit claim's lease ({self.lease_s:.0f} s) ran (nearly) out before publishing "
                "(the writer stalled); another writer may have taken over, so this one stops")
        gen, holder = newest_claim(self.fs, self.work_dir)
        if gen != self.generation or (holder or {}).get("writer") != self.writer:
            raise CommitConflictError(f"{self.what}: the commit claim was taken over by "
                                      f"{describe(holder or {})}; this writer stops")
        self.renew()
