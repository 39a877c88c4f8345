"""A full disk while a round is written or committed: a clear StoreFullError, nothing visible to readers,
nothing left holding space, and the same writer resumes once space is freed.

Two real filesystems run the same tests: a 4 MB tmpfs mounted for the test (the local code path; needs
root and mount(8), skipped with the reason otherwise; fixture `tmpfs` in tests/conftest.py) and `quotamem://`, an object store with a byte
quota (the fsspec code path; always runs).
"""
from __future__ import annotations

import errno
import uuid

import pytest

from layerloop.storage import schema as S
from layerloop.storage.errors import RoundNotFoundError, StoreFullError
from layerloop.storage.fsutil import TMP_PREFIX
from layerloop.storage.rounds import RoundStore

from .helpers import png, samples
from .quota_fs import QuotaFileSystem


class QuotaDisk:
    """The same contract on `quotamem://` (storage/fsutil's object-store path)."""

    def __init__(self):
        self.fs = QuotaFileSystem()
        self.root = f"/full-{uuid.uuid4().hex[:8]}"
        self.uri = f"quotamem://{self.root.lstrip('/')}/store"

    def fill(self, leave: int) -> None:
        self.fs.fill(leave)

    def free(self) -> None:
        self.fs.free()

    def debris(self) -> list[str]:
        return [p for p in self.fs.find(self.root) if p.rsplit("/", 1)[1].startswith(TMP_PREFIX)]


@pytest.fixture(params=["tmpfs", "quota"])
def disk(request, tmpfs):
    if request.param == "tmpfs":
        yield tmpfs("4m")  # skipped, with the reason, where mounting is not allowed: the quota variant runs
        return
    quota = QuotaDisk()
    yield quota
    quota.free()
    quota.fs.rm(quota.root, recursive=True)


def noisy(prefix: str, n: int):
    """Samples with incompressible 64 px panels (~12 KB each), so a few fill a small disk."""
    for i, (fields, _) in enumerate(samples(prefix, n)):
        seed = sum(map(ord, prefix)) * 1000 + i
        yield fields, {p: png(size=(64, 64), noise_seed=seed * 3 + k)
                       for k, p in enumerate(("composite", "logo", "object"))}


def _store_with_round_0(uri: str) -> RoundStore:
    store = RoundStore(uri)
    w = store.begin(0, parent_round=None, adapter_id=None, config={})
    w.commit(w.write_unit("seed", samples("s", 2)))
    return store


def _begin_1(store: RoundStore):
    return store.begin(1, parent_round=0, adapter_id="a0", config={}, shard_max_samples=2)


def test_full_disk_while_writing_shards_then_resume(disk):
    store = _store_with_round_0(disk.uri)
    w = _begin_1(store)
    w.write_unit("u0", noisy("a", 2))
    disk.fill(leave=40_000)  # room for about one shard of u1, not for its six
    with pytest.raises(StoreFullError, match="no space left .* while writing unit u1 of round 1") as caught:
        w.write_unit("u1", noisy("b", 12))
    assert caught.value.errno == errno.ENOSPC and "rerun" in str(caught.value)
    assert disk.debris() == []  # no temp shard or table stays behind
    assert not w.unit_done("u1") and set(w.rows()[S.UNIT]) == {"u0"}
    assert {s.rsplit("/", 1)[1].split("-")[0] for s in store.fs.glob(f"{w.dir}/_work/shards/*")} == {"u0"}
    assert store.committed_rounds() == [0]
    disk.free()
    rows = w.write_unit("u1", noisy("b", 12))  # the same writer resumes
    assert len(rows) == 12
    w.commit(w.rows())
    assert store.committed_rounds() == [0, 1] and len(store.read(1, "all")) == 14
    assert store.verify() == []


# The commit writes a claim (<1 KB), manifest (~12 KB here), rejected, config, round.json, COMMITTED:
# these leaves stop it at the claim, at the manifest, and after it.
@pytest.mark.parametrize("leave", [0, 4_096, 16_384])
def test_full_disk_while_committing_then_resume(disk, leave):
    store = _store_with_round_0(disk.uri)
    w = _begin_1(store)
    w.write_unit("u0", noisy("a", 12))
    disk.fill(leave=leave)
    with pytest.raises(StoreFullError, match="while committing round 1"):
        w.commit(w.rows())
    assert disk.debris() == []
    assert store.committed_rounds() == [0]
    with pytest.raises(RoundNotFoundError):
        store.read(1)
    leftovers = {p.rsplit("/", 1)[1] for p in store.fs.find(w.dir)}
    assert not leftovers & {"COMMITTED", "manifest.parquet", "rejected.parquet", "round.json"}
    assert store.fs.glob(f"{w.dir}/_work/claims/*.json") == []  # the commit claim was released
    disk.free()
    w.commit(w.rows())  # its claim was released, so the same writer commits now
    assert store.committed_rounds() == [0, 1] and len(store.read(1, "all")) == 12
    assert store.verify() == []


def test_full_disk_when_taking_the_run_lock(disk):
    store = _store_with_round_0(disk.uri)
    disk.fill(leave=0)
    with pytest.raises(StoreFullError, match="while taking the store's run lock"):
        store.run_lock().acquire()
    assert disk.debris() == [] and not store.fs.exists(f"{store.root}/_locks/run.json")
    disk.free()
    lock = store.run_lock()
    lock.acquire()
    lock.release()
