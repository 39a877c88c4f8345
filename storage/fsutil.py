"""Small fsspec helpers the store is built on: atomic whole-file writes, put-if-absent, Parquet, ages.

Every store path goes through an fsspec filesystem object so `s3://` and `memory://` run the same
code as local paths. The only local special cases are the ones that give atomicity: temp-then-rename
with fsync, and a hard link of a complete temp file for put-if-absent. A write that fails (a full disk)
removes its temp file, so it neither shows up under the final name nor keeps holding space.
"""
from __future__ import annotations

import datetime as _dt
import errno
import io
import json
import os
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .errors import StoreFullError, StoreOptionsError, StoreUnreachableError, cause_chain

# Temporary names start with this, so readers skip them and `gc` can find a crashed writer's debris.
TMP_PREFIX = ".tmp-"

# Errors that mean the disk (or the user's quota) is full: no retry fixes them, freeing space does.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# link(2) refused by the filesystem (FAT, some network mounts): fall back to O_CREAT|O_EXCL there.
_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK)


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError that says the filesystem or quota has no space left."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


@contextmanager
def space_for(store_uri: str, what: str, cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """Turn a full disk into StoreFullError naming `what`, after `cleanup()` removed that step's files."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc) or isinstance(exc, StoreFullError):
            raise
        if cleanup is not None:
            cleanup()
        raise StoreFullError(
            f"no space left on the store's disk ({store_uri}) while {what}: nothing of it is visible to "
            "readers and nothing was committed. Free space (or grow the volume), then rerun: finished "
            "units are kept and the round resumes where it stopped.", exc.errno) from exc


def _unreachable_types() -> tuple[type, ...]:
    """The errors by which the S3 client (botocore via aiobotocore, s3fs) says the server did not answer:
    refused or dropped connections and timeouts, raised once its retries are spent. Only S3 clients raise
    these, so they never stand for another service (the judge, the Prefect API) being away."""
    from fsspec.exceptions import FSTimeoutError

    kinds: tuple[type, ...] = (StoreUnreachableError, FSTimeoutError)
    try:
        from botocore.exceptions import (ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError,
                                         ReadTimeoutError)
    except ImportError:  # no s3 extra: no S3 store either
        return kinds
    return kinds + (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)


def is_unreachable(exc: BaseException) -> bool:
    """True when `exc`, or an error it was raised from, says the object store did not answer."""
    kinds = _unreachable_types()
    return any(isinstance(e, kinds) for e in cause_chain(exc))


UNREACHABLE_OUTCOME = ("what it interrupted is not visible to readers and the round in progress is not committed. "
                       "Bring the object store back (or fix its address: store.storage_options endpoint_url, "
                       "FSSPEC_S3_ENDPOINT_URL), then rerun: finished units are kept and the round resumes where "
                       "it stopped.")


def unreachable_message(store_uri: str, what: str, exc: BaseException, outcome: str = UNREACHABLE_OUTCOME) -> str:
    """The one line a person reads when the store's server is away (the cause's first line, no traceback)."""
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return (f"the store {store_uri} could not be reached while {what} ({detail}), after the S3 client's "
            f"retries: {outcome}")


@contextmanager
def reachable(store_uri: str, what: str, on_error: Callable[[], None] | None = None,
              outcome: str = UNREACHABLE_OUTCOME) -> Iterator[None]:
    """Turn the S3 client's "no answer" into StoreUnreachableError naming `what` and its `outcome`, after
    `on_error()` (which must not need the store: it is away)."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, StoreUnreachableError) or not is_unreachable(exc):
            raise
        if on_error is not None:
            on_error()
        raise StoreUnreachableError(unreachable_message(store_uri, what, exc, outcome)) from exc


@contextmanager
def store_step(store_uri: str, what: str, cleanup: Callable[[], None] | None = None,
               on_unreachable: Callable[[], None] | None = None, **unreachable) -> Iterator[None]:
    """A store write that names `what` when it fails for a reason a person must fix: a full disk
    (space_for, after `cleanup`) or a server that does not answer (reachable, after `on_unreachable`)."""
    with reachable(store_uri, what, on_unreachable, **unreachable), space_for(store_uri, what, cleanup):
        yield


def is_local(fs: Any) -> bool:
    """True for fsspec's local filesystem, where rename is atomic and temp-then-rename applies."""
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def open_store_fs(uri: str, storage_options: dict | None = None) -> tuple[Any, str]:
    """(filesystem, root path) for a local path or fsspec URL; a local root is made absolute.

    Remote stores get `use_listings_cache=False` unless the options say otherwise: several processes
    (Ray workers, a resumed run) write one round, and a cached listing would hide their files.
    """
    import fsspec
    from fsspec.utils import get_protocol

    options = dict(storage_options or {})
    if get_protocol(uri) not in ("file", "local"):
        options.setdefault("use_listings_cache", False)
    try:
        fs, root = fsspec.core.url_to_fs(uri, **options)
        if hasattr(fs, "connect"):  # s3fs makes its client on first use: a wrong option would fail mid-run
            fs.connect()
    except TypeError as exc:
        raise StoreOptionsError(f"store.storage_options {sorted(storage_options or {})}: {exc}; "
                                f"remove or rename the option (they go to {_fs_class(uri)} and its client)") from exc
    if is_local(fs):
        root = os.path.abspath(root)
    return fs, root.rstrip("/") or "/"


def _fs_class(uri: str) -> str:
    import fsspec
    from fsspec.utils import get_protocol

    cls = fsspec.get_filesystem_class(get_protocol(uri))
    return f"{cls.__module__.split('.')[0]}.{cls.__name__}"


def write_bytes(fs: Any, path: str, data: bytes) -> None:
    """Write a whole file so readers see either nothing or all of it."""
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    if not is_local(fs):
        fs.pipe_file(path, data)  # one PUT: object stores publish whole objects only
        return
    tmp = _write_temp(parent, path.rsplit("/", 1)[1], data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def _write_temp(parent: str, name: str, data: bytes) -> str:
    """A complete, fsynced temp file beside the target; on any failure (ENOSPC) nothing is left behind."""
    tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{name}"
    _fill(open(tmp, "wb"), data, tmp)
    return tmp


def _fill(f: Any, data: bytes, path: str) -> None:
    """Write `data` into the open file `f` and fsync it; on any failure (ENOSPC) remove `path` and re-raise."""
    try:
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _discard(path)
        raise


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# How S3-compatible servers refuse a conditional PUT (If-None-Match: *), as s3fs raises it:
#   AWS, moto:  412 PreconditionFailed with Condition=If-None-Match -> FileExistsError
#   MinIO:      412 PreconditionFailed without Condition           -> OSError(EINVAL)
#   AWS:        409 ConditionalRequestConflict (a concurrent write
#               to the same key is in flight; retry)                -> OSError(EIO)
# s3fs chains the botocore ClientError as __cause__; its code and HTTP status tell the cases apart.
CONFLICT_RETRIES = 5
CONFLICT_DELAY_S = 0.1


def conditional_put_answer(exc: BaseException) -> str | None:
    """'exists' (any 412 / PreconditionFailed), 'conflict' (409 ConditionalRequestConflict) or None
    (some other error) for an error raised by a conditional PUT."""
    response = getattr(exc.__cause__, "response", None)
    if not isinstance(response, dict):
        return None
    code = (response.get("Error") or {}).get("Code")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    if code == "PreconditionFailed" or status == 412:
        return "exists"
    if status == 409 and code in ("ConditionalRequestConflict", "OperationAborted"):
        return "conflict"
    return None


def put_if_absent(fs: Any, path: str, data: bytes) -> bool:
    """Create `path` with `data` only if it does not exist; True when this call created it.

    Local: a complete temp file hard-linked to `path` (link(2) fails when `path` exists), so the file
    appears whole or not at all, also when the disk fills mid-write (readers of a lock or claim never
    see it empty). Object stores: fsspec's exclusive mode "xb" (S3 conditional PUT with If-None-Match
    in s3fs, native in memory://); every server's "exists" answer means False and a 409 conflict is
    retried (see above). Where a backend lacks "xb", the backstop is write-then-read-back of a unique
    token, which narrows but does not close the race; rounds of one pipeline are serialized by the
    orchestrator (concurrency limit 1) for that case.
    """
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if is_local(fs):
        return _local_exclusive(path, data)
    attempt = 0
    while True:
        try:
            return _exclusive_put(fs, path, data)
        except OSError as exc:
            answer = conditional_put_answer(exc)
            if answer == "exists":
                return False
            if answer != "conflict" or attempt >= CONFLICT_RETRIES:
                raise
        time.sleep(CONFLICT_DELAY_S * 2**attempt)  # the other write settles, then we get 412 or 200
        attempt += 1


def _exclusive_put(fs: Any, path: str, data: bytes) -> bool:
    try:
        with fs.open(path, "xb") as f:
            f.write(data)
        return True
    except FileExistsError:
        return False
    except (ValueError, NotImplementedError, TypeError):
        return _readback_exclusive(fs, path, data)


def _local_exclusive(path: str, data: bytes) -> bool:
    parent, name = path.rsplit("/", 1)
    tmp = _write_temp(parent, name, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        return _create_exclusive(path, data)
    finally:
        _discard(tmp)


def _create_exclusive(path: str, data: bytes) -> bool:
    """O_CREAT|O_EXCL for filesystems without hard links; a failed write removes the half-made file."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    _fill(os.fdopen(fd, "wb"), data, path)
    return True


def _readback_exclusive(fs: Any, path: str, data: bytes) -> bool:
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    return fs.cat_file(path) == data


def write_json(fs: Any, path: str, obj: Any) -> None:
    write_bytes(fs, path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(fs: Any, path: str) -> Any:
    return json.loads(fs.cat_file(path))


# Unique-per-row columns: dictionary encoding only wastes time on them (measured: 1M-row manifest
# loads ~1.5x faster without it).
HIGH_CARDINALITY = ("sample_id", "key", "sha256", "meta_sha256", "content_hash", "created_at")


def table_bytes(table: Any) -> bytes:
    """Serialize a pyarrow Table to Parquet bytes (zstd; no dictionary on unique-per-row columns)."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    dict_cols = [c for c in table.column_names if c not in HIGH_CARDINALITY]
    pq.write_table(table, buf, compression="zstd", use_dictionary=dict_cols)
    return buf.getvalue()


def read_table(fs: Any, path: str, columns: list[str] | None = None) -> Any:
    """A Parquet table as one version of its file. On an object store the object is fetched in one GET: read
    in ranges, a table that another writer PUTs anew meanwhile (two processes finishing one unit) fails with
    s3fs's FileExpired; a whole object is always one complete version. Locally a rename never changes an
    open file."""
    import pyarrow.parquet as pq

    if not is_local(fs):
        return pq.read_table(io.BytesIO(fs.cat_file(path)), columns=columns)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def age_s(fs: Any, path: str) -> float | None:
    """Seconds since a path was last modified, or None when the backend does not say."""
    info = fs.info(path)
    stamp = info.get("mtime", info.get("LastModified", info.get("created")))
    if stamp is None:
        return None
    if isinstance(stamp, _dt.datetime):
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=_dt.timezone.utc)
        stamp = stamp.timestamp()
    return time.time() - float(stamp)
