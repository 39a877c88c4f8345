"""Small fsspec helpers the store is built on: atomic whole-file writes, put-if-absent, Parquet, ages.

Every store path goes through an fsspec filesystem object so `s3://` and `memory://` run the same
code as local paths. The only local special cases are the ones that give atomicity: temp-then-rename
with fsync, and O_CREAT|O_EXCL for put-if-absent.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import os
import time
import uuid
from typing import Any

# Temporary names start with this, so readers skip them and `gc` can find a crashed writer's debris.
TMP_PREFIX = ".tmp-"


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
    fs, root = fsspec.core.url_to_fs(uri, **options)
    if is_local(fs):
        root = os.path.abspath(root)
    return fs, root.rstrip("/") or "/"


def write_bytes(fs: Any, path: str, data: bytes) -> None:
    """Write a whole file so readers see either nothing or all of it."""
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    if not is_local(fs):
        fs.pipe_file(path, data)  # one PUT: object stores publish whole objects only
        return
    tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.rsplit('/', 1)[1]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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

    Local: O_CREAT|O_EXCL (atomic on POSIX). Object stores: fsspec's exclusive mode "xb" (S3
    conditional PUT with If-None-Match in s3fs, native in memory://); every server's "exists" answer
    means False and a 409 conflict is retried (see above). Where a backend lacks "xb", the backstop is
    write-then-read-back of a unique token, which narrows but does not close the race; rounds of one
    pipeline are serialized by the orchestrator (concurrency limit 1) for that case.
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
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
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
    import pyarrow.parquet as pq

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
