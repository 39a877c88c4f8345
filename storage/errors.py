"""Errors raised by the round store: every one is a ValueError subclass (bad input) or a clear state error."""
from __future__ import annotations


class StorageError(Exception):
    """Base of every error the store raises on purpose."""


class SchemaError(StorageError, ValueError):
    """A manifest table does not match MANIFEST_SCHEMA; the message names the bad column."""


class InvalidImage(StorageError, ValueError):
    """An input image failed validation; `reason` is a short stable code used for quarantine."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class UnsafeMemberError(StorageError, ValueError):
    """A tar member is not a regular file with a plain relative name (symlink, ../x, /abs, device...)."""


class CorruptShardError(StorageError, ValueError):
    """A shard member is missing, truncated or does not match its recorded sha256/size."""


class RoundExistsError(StorageError):
    """The round is already committed; rounds are immutable."""


class RoundNotFoundError(StorageError, KeyError):
    """No committed round with that number."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "round not found"


class CommitConflictError(StorageError):
    """Another writer committed (or is committing) the same round; this writer lost."""


class StoreFullError(StorageError, OSError):
    """The store's filesystem ran out of space (ENOSPC, EDQUOT); the message names what was being written.

    An OSError (errno kept), so generic handlers still see a disk error; never retried as transient.
    """

    def __init__(self, message: str, errno_: int):
        OSError.__init__(self, errno_, message)

    def __str__(self) -> str:  # OSError prefixes "[Errno 28]"; the message already says "no space left"
        return self.strerror


class StoreOptionsError(StorageError, ValueError):
    """store.storage_options that the store's filesystem does not take (a config error: fix and rerun)."""


class StoreLockedError(StorageError):
    """Another live run holds the store's run lock; `holder` is its record (host, pid, started_at, ...)."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


class StoreUnreachableError(StorageError, ConnectionError):
    """The store's object server did not answer (connection refused or timed out) after the S3 client's own
    retries; the message names the store and what was being done. A ConnectionError, so the flows' retry
    rule sees a transient failure; nothing it interrupted is visible to readers (COMMITTED is written last)."""


def cause_chain(exc: BaseException | None, limit: int = 10):
    """`exc` and the errors it was raised from (`raise ... from`), never the unrelated __context__."""
    while exc is not None and limit > 0:
        yield exc
        exc, limit = exc.__cause__, limit - 1
