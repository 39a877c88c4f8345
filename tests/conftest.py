"""Shared pytest setup: offline, quiet Prefect, one torch thread so parallel CPU work stays predictable."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole unit tier (startup costs 10-20 s here)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-protocol server over HTTP (moto_server on 127.0.0.1) with one bucket (s3.BUCKET); dummy
    credentials go into the environment (botocore reads them there, as in production); stopped after."""
    from tests.storage.s3 import BUCKET, CREDENTIALS, MotoServer

    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        with MotoServer(tmp_path_factory.mktemp("moto")) as server:
            server.make_bucket(BUCKET)
            yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class TmpfsDisk:
    """A tmpfs mounted for one test: `fill(leave)` writes a filler until only `leave` bytes are free,
    `free()` deletes it, `debris()` lists temp files left under `path`."""

    def __init__(self, path):
        self.path, self.filler = path, path / "filler"
        self.uri = str(path / "store")

    def fill(self, leave: int) -> None:
        import errno

        st = os.statvfs(self.path)
        todo = max(0, st.f_bavail * st.f_frsize - leave)
        with open(self.filler, "wb") as f:
            try:
                while todo > 0:
                    todo -= f.write(b"\0" * min(todo, 1 << 16))
                f.flush()
            except OSError as exc:  # metadata took a page more than statvfs said: full is full
                if exc.errno != errno.ENOSPC:
                    raise

    def free(self) -> None:
        self.filler.unlink()

    def debris(self) -> list[str]:
        from layerloop.storage.fsutil import TMP_PREFIX

        return sorted(str(p) for p in self.path.rglob(f"{TMP_PREFIX}*"))


def _mount_tmpfs(where, size: str) -> str | None:
    """mount(8) a tmpfs at `where` in this mount namespace; None when done, else why not."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "mount(8) as root: not root here"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    return None if done.returncode == 0 else f"mount -t tmpfs: {done.stderr.strip()}"


def _tmpfs_in_user_namespace(where, size: str):
    """Without root: a tmpfs mounted inside a user + mount namespace that a `sleep` keeps alive; this process
    (and its children) reach it through /proc/<pid>/root<where>. Returns (holder, path) or (None, why not)."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return None, "unshare(1) is not installed"
    holder = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f"mount -t tmpfs -o size={size} tmpfs '{where}' && echo ready && exec sleep infinity"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if holder.stdout.readline().strip() != "ready":
        holder.wait(timeout=30)
        return None, f"unshare --user --mount: {holder.stderr.read().strip()}"
    return holder, Path(f"/proc/{holder.pid}/root{where}")


@pytest.fixture
def tmpfs(tmp_path):
    """A real small filesystem that fills up: `tmpfs(size="4m")` mounts one with mount(8) as root, or, where
    that is not allowed, inside a user namespace (unprivileged); skipped with both reasons where neither
    works. Unmounted after the test."""
    import subprocess

    mounted, holders = [], []

    def mount(size: str = "4m") -> TmpfsDisk:
        where = tmp_path / f"disk{len(mounted) + len(holders)}"
        where.mkdir()
        why = _mount_tmpfs(where, size)
        if why is None:
            mounted.append(where)
            return TmpfsDisk(where)
        holder, path = _tmpfs_in_user_namespace(where, size)
        if holder is None:
            pytest.skip(f"no tmpfs could be mounted: {why}; {path}")
        holders.append(holder)
        return TmpfsDisk(path)

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)
    for holder in holders:
        holder.kill()
        holder.wait(timeout=30)


@pytest.fixture
def bit_rot():
    """`bit_rot(shard_path, member)`: flip one bit inside a member's data in a tar on disk, headers untouched."""
    import tarfile

    def flip(path, member: str) -> None:
        with tarfile.open(path) as tar:
            offset = tar.getmember(member).offset_data
        data = bytearray(path.read_bytes())
        data[offset + 10] ^= 0x01
        path.write_bytes(bytes(data))

    return flip
