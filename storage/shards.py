"""Image shards: WebDataset-compatible tar files written crash-safely and read without ever extracting.

A shard holds samples as consecutive members `<key>.<panel>.png` ... `<key>.json`. The writer records
a sha256 and size per member; a local shard is written under a temporary name and renamed when
complete, and on object stores the shard is uploaded as one whole object on close, so a reader never
sees a half-written shard under its final name. The reader streams members (tar stream mode), refuses
anything that is not a regular file with a plain relative name, and verifies hashes when asked to.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import IO, Any, Iterator

from .errors import CorruptShardError, UnsafeMemberError
from .fsutil import TMP_PREFIX, is_local

SHARD_SUFFIX = ".tar"
MAX_MEMBER_BYTES = 512 * 2**20
_SAFE_MEMBER = re.compile(r"^[A-Za-z0-9_-]{1,128}(\.[A-Za-z0-9_-]{1,64})+$")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_BLOCK = 512


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split_member(name: str) -> tuple[str, str]:
    """`abc.composite.png` -> (`abc`, `composite.png`), WebDataset's rule (key ends at the first dot)."""
    key, _, ext = name.partition(".")
    return key, ext


def check_member(info: tarfile.TarInfo) -> None:
    """Refuse links, devices, directories, `../x`, `/abs` and odd names before reading any data."""
    if not info.isreg():
        kind = "symlink" if info.issym() else "hardlink" if info.islnk() else "directory" if info.isdir() else "special file"
        raise UnsafeMemberError(f"tar member {info.name!r} is a {kind}; only regular files are allowed")
    if info.name.startswith("/") or ".." in info.name.split("/"):
        raise UnsafeMemberError(f"tar member {info.name!r} has an absolute or parent-relative path")
    if not _SAFE_MEMBER.match(info.name):
        raise UnsafeMemberError(f"tar member {info.name!r} is not a plain '<key>.<ext>' name")
    if info.size > MAX_MEMBER_BYTES:
        raise UnsafeMemberError(f"tar member {info.name!r} is {info.size} bytes (limit {MAX_MEMBER_BYTES})")


@dataclass
class MemberRecord:
    """Where one sample went: its shard (final name), key, and sha256/size per member extension."""

    shard: str
    key: str
    sha256: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


class _OpenShard:
    """One shard being written: a tar stream into a temp file (local) or a pending whole upload."""

    def __init__(self, fs: Any, directory: str, name: str):
        self.fs, self.name, self.local = fs, name, is_local(fs)
        self.final = f"{directory}/{name}"
        self.target = f"{directory}/{TMP_PREFIX}{name}"
        # Object stores: spool locally, then one PUT of the whole shard (no partial object ever exists).
        self.file: IO[bytes] = fs.open(self.target, "wb") if self.local else tempfile.TemporaryFile()
        self.tar = tarfile.open(fileobj=self.file, mode="w|", format=tarfile.PAX_FORMAT)
        self.bytes = 0
        self.samples = 0
        self.mtime = int(time.time())

    def add(self, member: str, data: bytes) -> None:
        info = tarfile.TarInfo(member)
        info.size, info.mtime, info.mode = len(data), self.mtime, 0o644
        self.tar.addfile(info, io.BytesIO(data))
        self.bytes += _BLOCK + -(-len(data) // _BLOCK) * _BLOCK

    def finish(self) -> None:
        self.tar.close()
        self.file.flush()
        if self.local:
            os.fsync(self.file.fileno())
            self.file.close()
            self.fs.mv(self.target, self.final)
            return
        self.file.seek(0)
        data = self.file.read()
        self.file.close()
        self.fs.pipe_file(self.final, data)

    def abort(self) -> None:
        """Drop the shard in flight; also after a full disk, where closing the file fails once more."""
        for close in (self.tar.close, self.file.close):  # tar first: flush its buffer now, not at gc time
            try:
                close()
            except (OSError, ValueError, tarfile.TarError):
                pass
        if self.local and self.fs.exists(self.target):
            self.fs.rm(self.target)


class ShardWriter:
    """Context manager writing samples into size/count-bounded shards named `<prefix>-<uuid>-<seq>.tar`.

    `write()` returns a MemberRecord; the record's shard exists under its final name only after the
    shard is closed (rollover or leaving the `with` block). On an exception the shard in flight is
    discarded; shards already closed stay, and finished records are in `self.records`.
    """

    def __init__(self, fs: Any, directory: str, *, prefix: str = "shard", max_bytes: int = 64 * 2**20,
                 max_samples: int = 1000):
        if not _SAFE_KEY.match(prefix):
            raise ValueError(f"shard prefix {prefix!r} must be 1-128 chars of [A-Za-z0-9_-]")
        if max_bytes < 1 or max_samples < 1:
            raise ValueError("max_bytes and max_samples must be >= 1")
        self.fs, self.directory = fs, directory.rstrip("/")
        self.prefix, self.max_bytes, self.max_samples = prefix, max_bytes, max_samples
        self._run = uuid.uuid4().hex[:12]
        self._seq = 0
        self._open: _OpenShard | None = None
        self.records: list[MemberRecord] = []
        self.closed_shards: list[str] = []

    def __enter__(self) -> "ShardWriter":
        self.fs.makedirs(self.directory, exist_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._open is None:
            return
        if exc_type is None:
            self._close_current()
        else:
            self._open.abort()
            self._open = None

    def write(self, key: str, members: dict[str, bytes]) -> MemberRecord:
        """Add one sample; `members` maps extensions (`composite.png`, `json`) to bytes."""
        if not _SAFE_KEY.match(key):
            raise ValueError(f"sample key {key!r} must be 1-128 chars of [A-Za-z0-9_-] (no dots, no slashes)")
        if not members:
            raise ValueError(f"sample {key!r} has no members")
        shard = self._shard_for_next()
        rec = MemberRecord(shard=shard.name, key=key)
        for ext, data in members.items():
            name = f"{key}.{ext}"
            if not _SAFE_MEMBER.match(name):
                raise ValueError(f"member name {name!r} is not a plain '<key>.<ext>' name")
            shard.add(name, data)
            rec.sha256[ext], rec.sizes[ext] = sha256_hex(data), len(data)
        shard.samples += 1
        self.records.append(rec)
        return rec

    def _shard_for_next(self) -> _OpenShard:
        cur = self._open
        if cur is not None and (cur.samples >= self.max_samples or cur.bytes >= self.max_bytes):
            self._close_current()
        if self._open is None:
            name = f"{self.prefix}-{self._run}-{self._seq:04d}{SHARD_SUFFIX}"
            self._seq += 1
            self._open = _OpenShard(self.fs, self.directory, name)
        return self._open

    def _close_current(self) -> None:
        shard, self._open = self._open, None
        try:
            shard.finish()
        except BaseException:
            shard.abort()  # e.g. ENOSPC at the last flush or fsync: no temp file stays behind
            raise
        self.closed_shards.append(shard.name)


class _Tracked:
    """Read-through wrapper remembering how many bytes passed and the last few records of them."""

    keep = 2 * tarfile.RECORDSIZE + 2 * _BLOCK

    def __init__(self, raw: IO[bytes]):
        self.raw, self.total, self.tail = raw, 0, b""

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.total += len(data)
        self.tail = (self.tail + data)[-self.keep:]
        return data

    def drain(self) -> None:
        while self.read(1 << 16):
            pass


def _check_end(tracked: _Tracked, offset: int) -> None:
    # A stream cut exactly between members looks like a shorter, valid tar to tarfile: demand the
    # end-of-archive marker (two zero blocks) after the last member.
    tracked.drain()
    trailing = tracked.total - offset
    if trailing < 2 * _BLOCK:
        raise CorruptShardError("tar stream ends without its end-of-archive marker (truncated between members)")
    after = tracked.tail[len(tracked.tail) - trailing:][: 2 * _BLOCK] if trailing <= len(tracked.tail) else b"x"
    if after.strip(b"\x00"):
        raise CorruptShardError("unexpected data after the tar end-of-archive marker")


def iter_members(fileobj: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    """Stream (name, bytes) of every member; UnsafeMemberError / CorruptShardError on anything odd."""
    seen: set[str] = set()
    tracked = _Tracked(fileobj)
    try:
        with tarfile.open(fileobj=tracked, mode="r|") as tar:
            for info in tar:
                check_member(info)
                if info.name in seen:
                    raise UnsafeMemberError(f"tar member {info.name!r} appears twice")
                seen.add(info.name)
                data = tar.extractfile(info).read()
                if len(data) != info.size:
                    raise CorruptShardError(f"tar member {info.name!r} is truncated ({len(data)} of {info.size} bytes)")
                yield info.name, data
            _check_end(tracked, tar.offset)
    except tarfile.TarError as exc:
        raise CorruptShardError(f"unreadable tar stream: {exc}") from exc


def iter_samples(fileobj: IO[bytes]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group consecutive members by key, as WebDataset does: yields (key, {ext: bytes})."""
    key: str | None = None
    group: dict[str, bytes] = {}
    for name, data in iter_members(fileobj):
        k, ext = split_member(name)
        if k != key and group:
            yield key, group
            group = {}
        key = k
        group[ext] = data
    if group:
        yield key, group


class ShardReader:
    """Context manager over one shard on any fsspec filesystem; never extracts to disk."""

    def __init__(self, fs: Any, path: str):
        self.fs, self.path = fs, path
        self._file: IO[bytes] | None = None

    def __enter__(self) -> "ShardReader":
        try:
            self._file = self.fs.open(self.path, "rb")
        except FileNotFoundError as exc:
            raise CorruptShardError(f"shard {self.path} is missing") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def members(self) -> Iterator[tuple[str, bytes]]:
        if self._file is None:
            raise RuntimeError("use ShardReader inside a `with` block")
        return iter_members(self._file)

    def samples(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        if self._file is None:
            raise RuntimeError("use ShardReader inside a `with` block")
        return iter_samples(self._file)

    def verified(self, expected: dict[str, dict[str, tuple[str, int]]]) -> Iterator[tuple[str, dict[str, bytes]]]:
        """Yield the expected keys' members after checking sha256+size; raise on a mismatch or a missing key.

        `expected` maps key -> {ext: (sha256, size)}; other keys in the shard are skipped unhashed.
        """
        pending = dict(expected)
        for key, group in self.samples():
            want = pending.pop(key, None)
            if want is None:
                continue
            yield key, verify_group(self.path, key, group, want)
        if pending:
            raise CorruptShardError(f"shard {self.path} lacks key(s) {sorted(pending)[:5]}")


def verify_group(shard: str, key: str, group: dict[str, bytes], want: dict[str, tuple[str, int | None]]) -> dict[str, bytes]:
    """Check one sample's members against recorded (sha256, size or None); returns the members asked for."""
    out = {}
    for ext, (digest, size) in want.items():
        data = group.get(ext)
        if data is None:
            raise CorruptShardError(f"{shard}: member {key}.{ext} is missing")
        if (size is not None and len(data) != size) or sha256_hex(data) != digest:
            raise CorruptShardError(f"{shard}: member {key}.{ext} does not match its recorded sha256/size")
        out[ext] = data
    return out
