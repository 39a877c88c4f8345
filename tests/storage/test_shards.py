"""Shards: round trip, rollover, temp-then-rename, hash checks, and refusal of unsafe tar members."""
from __future__ import annotations

import io
import tarfile

import fsspec
import pytest

from layerloop.storage.errors import CorruptShardError, UnsafeMemberError
from layerloop.storage.shards import TMP_PREFIX, ShardReader, ShardWriter, iter_members, sha256_hex

from .helpers import triplet


def _members(i: int) -> dict[str, bytes]:
    return {**{f"{k}.png": v for k, v in triplet(i).items()}, "json": b'{"i": %d}' % i}


def test_round_trip_rollover_and_hashes(tmp_path):
    fs = fsspec.filesystem("file")
    with ShardWriter(fs, str(tmp_path), prefix="u0", max_samples=2) as w:
        recs = [w.write(f"k{i}", _members(i)) for i in range(5)]
    assert len(w.closed_shards) == 3 and sorted(p.name for p in tmp_path.iterdir()) == sorted(w.closed_shards)
    got = {}
    for shard in w.closed_shards:
        with ShardReader(fs, f"{tmp_path}/{shard}") as r:
            got.update(dict(r.samples()))
    assert list(got) == [f"k{i}" for i in range(5)]
    for i, rec in enumerate(recs):
        assert got[rec.key] == _members(i)
        assert rec.sha256["logo.png"] == sha256_hex(_members(i)["logo.png"])
        assert rec.sizes["json"] == len(_members(i)["json"])


def test_byte_limit_rolls_over(tmp_path):
    fs = fsspec.filesystem("file")
    with ShardWriter(fs, str(tmp_path), prefix="u", max_bytes=2048, max_samples=100) as w:
        for i in range(6):
            w.write(f"k{i}", _members(i))
    assert len(w.closed_shards) > 1


def test_crash_inside_block_leaves_no_final_shard(tmp_path):
    fs = fsspec.filesystem("file")
    with pytest.raises(RuntimeError):
        with ShardWriter(fs, str(tmp_path), prefix="u", max_samples=10) as w:
            w.write("k0", _members(0))
            assert any(p.name.startswith(TMP_PREFIX) for p in tmp_path.iterdir())
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_object_store_shard_appears_only_on_close():
    fs = fsspec.filesystem("memory")
    with ShardWriter(fs, "/bucket/shards", prefix="u", max_samples=10) as w:
        w.write("k0", _members(0))
        assert fs.glob("/bucket/shards/*") == []
    assert len(fs.glob("/bucket/shards/*.tar")) == 1


def test_bad_keys_are_refused(tmp_path):
    fs = fsspec.filesystem("file")
    with ShardWriter(fs, str(tmp_path), prefix="u") as w:
        for key in ("a.b", "../x", "", "a/b"):
            with pytest.raises(ValueError, match="sample key"):
                w.write(key, _members(0))


def test_verified_read_detects_tampering(tmp_path):
    fs = fsspec.filesystem("file")
    with ShardWriter(fs, str(tmp_path), prefix="u") as w:
        rec = w.write("k0", _members(0))
    path = f"{tmp_path}/{rec.shard}"
    want = {"k0": {e: (rec.sha256[e], rec.sizes[e]) for e in rec.sha256}}
    with ShardReader(fs, path) as r:
        assert dict(r.verified(want))["k0"]["logo.png"] == _members(0)["logo.png"]
    bad = {"k0": {**want["k0"], "logo.png": ("0" * 64, rec.sizes["logo.png"])}}
    with ShardReader(fs, path) as r, pytest.raises(CorruptShardError, match="k0.logo.png does not match"):
        list(r.verified(bad))
    with ShardReader(fs, path) as r, pytest.raises(CorruptShardError, match="lacks key"):
        list(r.verified({**want, "k9": want["k0"]}))


def test_truncated_shard_is_an_error_not_a_short_read(tmp_path):
    fs = fsspec.filesystem("file")
    with ShardWriter(fs, str(tmp_path), prefix="u") as w:
        for i in range(3):
            w.write(f"k{i}", _members(i))
    data = (tmp_path / w.closed_shards[0]).read_bytes()
    with pytest.raises(CorruptShardError):
        list(iter_members(io.BytesIO(data[: len(data) // 2 + 100])))


def _tar(add) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        add(tar)
    return buf.getvalue()


def _file(tar, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _link(tar, name: str, kind) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, "/etc/passwd"
    tar.addfile(info)


@pytest.mark.parametrize("build, message", [
    (lambda t: _file(t, "../evil.png"), "absolute or parent-relative"),
    (lambda t: _file(t, "/etc/evil.png"), "absolute or parent-relative"),
    (lambda t: _link(t, "k0.composite.png", tarfile.SYMTYPE), "is a symlink"),
    (lambda t: _link(t, "k0.composite.png", tarfile.LNKTYPE), "is a hardlink"),
    (lambda t: _link(t, "k0.dev", tarfile.CHRTYPE), "is a special file"),
    (lambda t: (_file(t, "k0.png"), _file(t, "k0.png")), "appears twice"),
    (lambda t: _file(t, "dir/k0.png"), "not a plain"),
], ids=["parent", "absolute", "symlink", "hardlink", "device", "duplicate", "subdir"])
def test_unsafe_members_are_refused_with_their_reason(tmp_path, build, message):
    data = _tar(build)
    with pytest.raises(UnsafeMemberError, match=message):
        list(iter_members(io.BytesIO(data)))
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing was ever extracted


def test_webdataset_library_reads_our_shards(tmp_path):
    import webdataset as wds

    fs = fsspec.filesystem("file")
    with ShardWriter(fs, str(tmp_path), prefix="u", max_samples=10) as w:
        for i in range(3):
            w.write(f"k{i}", _members(i))
    ds = wds.WebDataset(f"file:{tmp_path}/{w.closed_shards[0]}", shardshuffle=False)
    got = list(ds)
    assert [s["__key__"] for s in got] == ["k0", "k1", "k2"]
    for i, s in enumerate(got):
        assert {s["composite.png"], s["logo.png"], s["object.png"]} == {v for k, v in _members(i).items() if k != "json"}
