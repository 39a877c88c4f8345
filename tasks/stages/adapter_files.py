"""Adapter directories in the store (`adapters/round-NNNN/`, local paths or s3:// alike) and their JSON side files.

The trainer and sampler work on local directories; these helpers publish a finished local directory
to the store (weights file last, so its presence means "complete") and fetch a remote one to a cache.
Every write goes through the store's own atomic write (storage/fsutil.py: temp name, fsync, rename
locally; one whole PUT on object stores), so a crash never leaves half a file under its final name.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from ...models.lora_io import WEIGHTS_NAME as WEIGHTS  # written last: its presence = complete
from ...storage import fsutil

_STORE_OPTIONS: dict[str, dict] = {}  # store root URL -> store.storage_options, per process


def use_store_options(root_url: str, options: dict) -> None:
    """Adapter URIs under `root_url` open with that store's fsspec options (an S3 endpoint, a region):
    they come from the store (store.adapter_uri), so its options must reach them, in every process."""
    if options:
        _STORE_OPTIONS[root_url.rstrip("/")] = dict(options)


def _options(uri: str) -> dict:
    roots = [root for root in _STORE_OPTIONS if uri == root or uri.startswith(root + "/")]
    return _STORE_OPTIONS[max(roots, key=len)] if roots else {}


def _fs(uri: str):
    return fsutil.open_store_fs(uri, _options(uri))


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def has_weights(adapter_uri: str) -> bool:
    """True when the adapter directory is complete (its weights file, written last, is there)."""
    return exists(join(adapter_uri, WEIGHTS))


def read_json(uri: str) -> dict | None:
    """Parsed JSON at uri, or None when the file does not exist."""
    fs, path = _fs(uri)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as fh:
        return json.loads(fh.read())


def write_json(uri: str, data: dict) -> None:
    """Write JSON whole (storage.fsutil's atomic write)."""
    fs, path = _fs(uri)
    fsutil.write_json(fs, path, data)


def publish_dir(local_dir: str, uri: str, last: str = WEIGHTS) -> None:
    """Copy a finished local directory to uri, the file `last` at the end (it marks completeness)."""
    fs, dest = _fs(uri)
    fs.makedirs(dest, exist_ok=True)
    names = sorted(p.name for p in Path(local_dir).iterdir() if p.is_file())
    if last not in names:
        raise FileNotFoundError(f"{local_dir} has no {last}: training did not finish")
    for name in [n for n in names if n != last] + [last]:
        src = Path(local_dir) / name
        if fsutil.is_local(fs):
            fsutil.write_bytes(fs, join(dest, name), src.read_bytes())
        else:
            fs.put_file(str(src), join(dest, name))  # streamed: an object store shows the object whole


def local_dir(uri: str) -> str:
    """A local directory with the contents of uri (itself when local, else a cached download)."""
    if is_local(uri):
        return local_path(uri)
    cache = Path(tempfile.gettempdir()) / "layerloop-adapters" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if not cache.exists():
        fs, path = _fs(uri)
        tmp = Path(tempfile.mkdtemp(dir=cache.parent if cache.parent.exists() else None))
        fs.get(path.rstrip("/") + "/", str(tmp), recursive=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, cache)
    return str(cache)
