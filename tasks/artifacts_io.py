"""Small fsspec helpers for adapter directories and JSON side files (local paths or s3:// alike).

The trainer and sampler work on local directories; these helpers publish a finished local directory
to the store (weights file last, so its presence means "complete") and fetch a remote one to a cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def _fs(uri: str):
    import fsspec

    return fsspec.core.url_to_fs(uri)


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def read_json(uri: str) -> dict | None:
    """Parsed JSON at uri, or None when the file does not exist."""
    fs, path = _fs(uri)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as fh:
        return json.loads(fh.read())


def write_json(uri: str, data: dict) -> None:
    """Write JSON whole: temp name then rename locally; a single PUT on object stores."""
    payload = json.dumps(data, indent=2, sort_keys=True, default=str).encode()
    if is_local(uri):
        path = Path(local_path(uri))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, path)
        return
    fs, path = _fs(uri)
    fs.pipe_file(path, payload)


def publish_dir(local_dir: str, uri: str, last: str) -> None:
    """Copy a finished local directory to uri, the file `last` at the end (it marks completeness)."""
    fs, dest = _fs(uri)
    fs.makedirs(dest, exist_ok=True)
    names = sorted(p.name for p in Path(local_dir).iterdir() if p.is_file())
    if last not in names:
        raise FileNotFoundError(f"{local_dir} has no {last}: training did not finish")
    for name in [n for n in names if n != last] + [last]:
        src = Path(local_dir) / name
        if is_local(uri):
            tmp = Path(local_path(dest)) / f".{name}.tmp"
            tmp.write_bytes(src.read_bytes())
            os.replace(tmp, Path(local_path(dest)) / name)
        else:
            fs.put_file(str(src), join(dest, name))


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
