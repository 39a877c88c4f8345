"""A real fsspec filesystem with a byte quota: an in-memory object store whose PUTs fail with ENOSPC.

It stands in for a disk that fills up, on any machine (a tmpfs mount needs root). Like an object store,
an object appears whole when its upload finishes (`pipe_file`, or closing a file opened "wb"/"xb"), and
an upload that would pass the quota fails with OSError(ENOSPC) without leaving anything behind. The
store reaches it as `quotamem://...`, so it runs the store's object-store code path.
"""
from __future__ import annotations

import errno
import io

import fsspec
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

PROTOCOL = "quotamem"


class QuotaFileSystem(MemoryFileSystem):
    """`limit` bytes in all (None = unlimited); set it with `fill(leave)` and lift it with `free()`."""

    protocol = PROTOCOL
    store: dict = {}  # its own objects, not memory://'s shared ones
    pseudo_dirs = [""]
    limit: int | None = None

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str):
            path = path.removeprefix(f"{PROTOCOL}://")
        return super()._strip_protocol(path)

    def used(self) -> int:
        return sum(f.size for f in self.store.values())

    def fill(self, leave: int) -> None:
        """Leave only `leave` more bytes."""
        QuotaFileSystem.limit = self.used() + leave

    def free(self) -> None:
        QuotaFileSystem.limit = None

    def put_object(self, path: str, data: bytes, exclusive: bool) -> None:
        path = self._strip_protocol(path)
        if exclusive and path in self.store:
            raise FileExistsError(path)
        replaced = self.store[path].size if path in self.store else 0
        if self.limit is not None and self.used() - replaced + len(data) > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device (quota)", path)
        MemoryFile(self, path, bytes(data)).commit()

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        self.put_object(path, value, exclusive=mode == "create")

    def _open(self, path, mode="rb", **kwargs):
        if mode in ("wb", "xb"):
            if mode == "xb" and self.exists(path):
                raise FileExistsError(path)
            return _Upload(self, path, exclusive=mode == "xb")
        return super()._open(path, mode, **kwargs)


class _Upload(io.BytesIO):
    """A file being written: uploaded as one object on close (where the quota is checked)."""

    def __init__(self, fs: QuotaFileSystem, path: str, exclusive: bool):
        super().__init__()
        self.fs, self.path, self.exclusive = fs, path, exclusive

    def close(self) -> None:
        if self.closed:
            return
        data = self.getvalue()
        super().close()
        self.fs.put_object(self.path, data, self.exclusive)


fsspec.register_implementation(PROTOCOL, QuotaFileSystem, clobber=True)
