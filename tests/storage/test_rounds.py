"""Round store: commit protocol, reading back, lineage, training view, verify, artifacts, memory:// store."""
from __future__ import annotations

import json

import pytest

from layerloop.storage import schema as S
from layerloop.storage.errors import CommitConflictError, RoundExistsError, RoundNotFoundError
from layerloop.storage.rounds import COMMITTED, RoundStore

from .helpers import samples, triplet


def _commit(store: RoundStore, round_: int, n: int = 6, parent=None, prefix=None, units=2):
    w = store.begin(round_, parent_round=parent, adapter_id=None if parent is None else f"a{parent}",
                    config={"round": round_}, shard_max_samples=2)
    per = n // units
    for u in range(units):
        w.write_unit(f"u{u}", samples(f"{prefix or 'r'}{round_}-{u}", per, accepted=lambda i: i % 3 != 2))
    return w, w.commit(w.rows(), {"stage_seconds": {"train": 1.5}})


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        yield RoundStore(str(tmp_path / "store"))
        return
    import fsspec

    uri = f"memory://test-{tmp_path.name}/store"  # an object-store style URL through the same code
    yield RoundStore(uri)
    fsspec.filesystem("memory").rm(f"/test-{tmp_path.name}", recursive=True)


def test_commit_then_read_back(store):
    _, info = _commit(store, 0)
    assert store.committed_rounds() == [0] and store.latest_round() == 0
    acc, rej, all_ = store.read(0), store.read(0, "rejected"), store.read(0, "all")
    assert (len(acc), len(rej), len(all_)) == (4, 2, 6)
    assert acc[S.ACCEPTED].all() and not rej[S.ACCEPTED].any()
    assert set(rej[S.REASON]) == {"judge: low score"}
    assert info["accepted"] == 4 and info["selection_rate"] == pytest.approx(4 / 6)
    ri = store.round_info(0)
    assert ri["config"] == {"round": 0} and ri["info"]["stage_seconds"]["train"] == 1.5
    loaded = {row[S.SAMPLE_ID]: panels for row, panels in store.load_panels(all_)}
    expected = dict((f[S.SAMPLE_ID], p) for f, p in samples("r0-1", 3))
    assert loaded["r0-1-001"] == expected["r0-1-001"] and len(loaded) == 6
    assert store.verify() == []


def test_uncommitted_round_is_invisible_and_committed_is_immutable(store):
    w = store.begin(0, parent_round=None, adapter_id=None, config={})
    w.write_unit("u0", samples("x", 2))
    assert store.committed_rounds() == [] and store.latest_round() is None
    with pytest.raises(RoundNotFoundError, match="round 0 is not committed"):
        store.read(0)
    w.commit(w.rows())
    with pytest.raises(RoundExistsError, match="immutable"):
        store.begin(0, parent_round=None, adapter_id=None, config={})
    with pytest.raises(CommitConflictError, match="already committed"):
        w.commit(w.rows())


def test_lineage_and_training_view_dedup(store):
    _commit(store, 0)
    w = store.begin(1, parent_round=0, adapter_id="a0", config={})
    # u0 repeats round 0's first unit pixel-for-pixel under new ids: deduplicated by content hash.
    w.write_unit("u0", ((dict(f, **{S.SAMPLE_ID: "dup-" + f[S.SAMPLE_ID]}), p) for f, p in samples("r0-0", 3)))
    w.write_unit("u1", samples("r1-new", 2))
    w.commit(w.rows())
    info = store.round_info(1)
    assert (info["parent_round"], info["adapter_id"]) == (0, "a0")
    view = store.training_view(up_to=1)
    assert not view[S.CONTENT_HASH].duplicated().any()
    assert set(view[S.SAMPLE_ID]) == set(store.read(0)[S.SAMPLE_ID]) | {"r1-new-000", "r1-new-001", "dup-r0-0-002"}
    assert len(store.training_view(up_to=0)) == len(store.read(0))
    with pytest.raises(ValueError, match="parent_round 7 is not a committed round"):
        store.begin(2, parent_round=7, adapter_id=None, config={})


def test_resume_skips_finished_units(store):
    w = store.begin(0, parent_round=None, adapter_id=None, config={})
    first = w.write_unit("u0", samples("a", 3))
    consumed = []

    def spy():
        for s in samples("a", 3):
            consumed.append(s)
            yield s

    w2 = store.begin(0, parent_round=None, adapter_id=None, config={})
    assert w2.unit_done("u0") and not w2.unit_done("u1")
    again = w2.write_unit("u0", spy())
    assert consumed == [] and again[S.SHARD].tolist() == first[S.SHARD].tolist()


def test_parts_round_trip(store):
    import pandas as pd

    w = store.begin(0, parent_round=None, adapter_id=None, config={})
    assert w.get_part("judge", "u0") is None
    w.put_part("judge", "u0", pd.DataFrame({S.SAMPLE_ID: ["a"], S.SCORE_REALISM: [0.25]}))
    assert w.get_part("judge", "u0")[S.SCORE_REALISM].tolist() == [0.25]
    with pytest.raises(ValueError, match="stage"):
        w.put_part("../x", "u0", pd.DataFrame())


def test_commit_refuses_bad_rows(store):
    w = store.begin(0, parent_round=None, adapter_id=None, config={})
    rows = w.write_unit("u0", samples("a", 2))
    with pytest.raises(ValueError, match="not to round 0"):
        w.commit(rows.assign(**{S.ROUND: 3}))
    with pytest.raises(ValueError, match="does not exist"):
        w.commit(rows.assign(**{S.SHARD: "rounds/round-0000/shards/nope.tar"}))
    with pytest.raises(ValueError, match="not a PNG"):
        w.write_unit("u1", [({S.SAMPLE_ID: "j", S.SOURCE: "seed"}, {"composite": b"GIF89a..."})])
    with pytest.raises(ValueError, match="different sizes"):
        w.write_unit("u2", [({S.SAMPLE_ID: "k", S.SOURCE: "seed"},
                             {"composite": triplet(1)["composite"], "logo": triplet(1, (8, 8))["logo"]})])
    assert store.committed_rounds() == []


def test_verify_finds_tampered_member_and_manifest(tmp_path):
    store = RoundStore(str(tmp_path))
    _commit(store, 0)
    shard = store.read(0)[S.SHARD].iloc[0]
    path = tmp_path / shard
    data = bytearray(path.read_bytes())
    data[512 + 20] ^= 0xFF  # inside the first member's payload (right after its header)
    path.write_bytes(bytes(data))
    problems = store.verify(0)
    assert len(problems) == 1 and shard in problems[0]
    (tmp_path / "rounds/round-0000/manifest.parquet").write_bytes(b"garbage")
    assert any("manifest.parquet" in p and "sha256" in p for p in store.verify())


def test_artifacts_adapter_and_quarantine(store):
    _commit(store, 0)
    uri = store.write_artifact(0, "report.html", b"<html></html>")
    assert uri.endswith("rounds/round-0000/report.html") and store.fs.cat_file(store.round_dir(0) + "/report.html")
    for bad in ("manifest.parquet", COMMITTED, "../x.png", "a/b.png"):
        with pytest.raises(ValueError, match="not allowed"):
            store.write_artifact(0, bad, b"x")
    with pytest.raises(RoundNotFoundError):
        store.write_artifact(3, "report.json", b"{}")
    assert store.adapter_uri(2).endswith("adapters/round-0002")
    q = store.quarantine("../evil id", {"../../etc/passwd": b"x"}, "unsafe_name: test")
    assert "/quarantine/" in q and ".." not in q.split("/quarantine/")[1]
    assert store.quarantined()[0]["reason"] == "unsafe_name: test"


def test_pool_batches(store):
    w = store.begin_pool({"ingest": "pool"})
    w.write_unit("p0", (({S.SAMPLE_ID: f"p{i}", S.SOURCE: "imported", S.SPLIT: "pool", S.ACCEPTED: True},
                         {"composite": triplet(i)["composite"]}) for i in range(3)))
    w.commit(w.rows())
    w = store.begin_pool({})
    assert w.round == 1
    pool = store.read_pool()
    assert len(pool) == 3 and all(list(p) == ["composite"] for p in pool[S.PANELS])
    assert [p for _, p in store.load_panels(pool)][2] == {"composite": triplet(2)["composite"]}
    assert store.committed_rounds() == []


def test_manifest_reads_with_pandas_duckdb_and_webdataset(tmp_path):
    import duckdb
    import pandas as pd
    import webdataset as wds

    store = RoundStore(str(tmp_path))
    _commit(store, 0)
    manifest = tmp_path / "rounds/round-0000/manifest.parquet"
    assert len(pd.read_parquet(manifest)) == 4
    n, panels = duckdb.sql(f"select count(*), min(len(panels)) from read_parquet('{manifest}')").fetchall()[0]
    assert (n, panels) == (4, 3)
    shards = sorted({str(tmp_path / s) for s in store.read(0, "all")[S.SHARD]})
    got = {s["__key__"]: s for s in wds.WebDataset([f"file:{p}" for p in shards], shardshuffle=False)}
    assert len(got) == 6
    for key, s in got.items():
        assert {"composite.png", "logo.png", "object.png", "json"} <= set(s)
        assert json.loads(s["json"])["sample_id"] == key


def _plant_claim(store: RoundStore, round_: int, **holder):
    from layerloop.storage.fsutil import put_if_absent

    w = store.begin(round_, parent_round=None, adapter_id=None, config={})
    w.write_unit("u0", samples("c", 2))
    claim = f"{store.round_uri(round_)}/_work/CLAIM"
    assert put_if_absent(w.fs, claim, json.dumps({"writer": "other", "at": "2026-01-01T00:00:00", **holder}).encode())
    return w


def test_claim_of_a_dead_local_writer_is_taken_over(tmp_path):
    import socket
    import subprocess
    import sys

    store = RoundStore(str(tmp_path / "store"))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    w = _plant_claim(store, 0, host=socket.gethostname(), pid=int(gone.stdout))
    w.commit(w.rows())  # a kill -9 during commit no longer blocks the resumed run until gc
    assert store.committed_rounds() == [0]


@pytest.mark.parametrize("holder", ["live-pid", "other-host", "no-pid"])
def test_claim_of_a_live_or_remote_writer_still_conflicts(tmp_path, holder):
    import os
    import socket

    store = RoundStore(str(tmp_path / "store"))
    fields = {"live-pid": {"host": socket.gethostname(), "pid": os.getppid()},
              "other-host": {"host": "elsewhere.invalid", "pid": 999999}, "no-pid": {}}[holder]
    w = _plant_claim(store, 0, **fields)
    with pytest.raises(CommitConflictError, match="being committed by writer other"):
        w.commit(w.rows())
    assert store.committed_rounds() == []


def test_bit_rot_is_named_on_read_and_verify_lists_every_damaged_member(tmp_path, bit_rot):
    from layerloop.storage.errors import CorruptShardError

    store = RoundStore(str(tmp_path / "store"))
    _commit(store, 0)
    rows = store.read(0, "all").sort_values(S.SAMPLE_ID)
    first, second = rows.iloc[0], rows.iloc[1]
    shard = tmp_path / "store" / first[S.SHARD]
    assert second[S.SHARD] == first[S.SHARD]  # two samples per shard here
    bit_rot(shard, f"{first[S.KEY]}.logo.png")
    bit_rot(shard, f"{second[S.KEY]}.object.png")
    with pytest.raises(CorruptShardError) as caught:
        list(store.load_panels(store.training_view(0)))
    message = str(caught.value)
    assert message.startswith("round 0: ") and first[S.SHARD] in message
    assert f"member {first[S.KEY]}.logo.png does not match its recorded sha256" in message
    assert "restore it from a backup" in message
    problems = store.verify()
    assert len(problems) == 2 and all(p.startswith("round 0: ") and first[S.SHARD] in p for p in problems)
    assert f"{second[S.KEY]}.object.png" in problems[1]
