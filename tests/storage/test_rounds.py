"""Round store: commit protocol, reading back, lineage, training view, verify, artifacts, commit claims;
on a local path, memory:// and s3:// (moto) through the `store` / `spot` fixtures of conftest.py."""
from __future__ import annotations

import datetime
import json
import os
import socket
import time

import pytest

from layerloop.storage import schema as S
from layerloop.storage.errors import CommitConflictError, RoundExistsError, RoundNotFoundError
from layerloop.storage.lease import CommitClaim
from layerloop.storage.rounds import COMMITTED, RoundStore

from .helpers import dead_pid, samples, triplet, wait_until_takeable


def _commit(store: RoundStore, round_: int, n: int = 6, parent=None, prefix=None, units=2):
    w = store.begin(round_, parent_round=parent, adapter_id=None if parent is None else f"a{parent}",
                    config={"round": round_}, shard_max_samples=2)
    per = n // units
    for u in range(units):
        w.write_unit(f"u{u}", samples(f"{prefix or 'r'}{round_}-{u}", per, accepted=lambda i: i % 3 != 2))
    return w, w.commit(w.rows(), {"stage_seconds": {"train": 1.5}})


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


def test_verify_finds_tampered_member_and_manifest(store):
    _commit(store, 0)
    shard = store.read(0)[S.SHARD].iloc[0]
    path = f"{store.root}/{shard}"
    data = bytearray(store.fs.cat_file(path))
    data[512 + 20] ^= 0xFF  # inside the first member's payload (right after its header)
    store.fs.pipe_file(path, bytes(data))
    problems = store.verify(0)
    assert len(problems) == 1 and shard in problems[0]
    store.fs.pipe_file(f"{store.round_dir(0)}/manifest.parquet", b"garbage")
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


def _plant_claim(store: RoundStore, round_: int, lease_left_s: float = 3600.0, **holder):
    """Round `round_` with one finished unit and generation 1 of its commit claim held by writer "other"."""
    from layerloop.storage.fsutil import put_if_absent

    w = store.begin(round_, parent_round=None, adapter_id=None, config={})
    w.write_unit("u0", samples("c", 2))
    expires = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=lease_left_s)).isoformat()
    claim = f"{store.round_dir(round_)}/_work/claims/000001.json"
    assert put_if_absent(store.fs, claim, json.dumps({"writer": "other", "expires_at": expires, **holder}).encode())
    return w


@pytest.mark.parametrize("holder, lease_left_s", [
    ("dead-local-pid", 3600.0),   # kill -9 mid-commit, resumed on the same machine: no wait
    ("other-host", -1.0),         # a writer elsewhere whose lease ran out: the object-store case
    ("live-pid", -1.0),           # alive but silent past its lease (stalled): its claim ends too
])
def test_takeable_claim_is_taken_over_by_the_next_generation(store, holder, lease_left_s):
    fields = {"dead-local-pid": {"host": socket.gethostname(), "pid": dead_pid()},
              "other-host": {"host": "elsewhere.invalid", "pid": 999999},
              "live-pid": {"host": socket.gethostname(), "pid": os.getppid()}}[holder]
    w = _plant_claim(store, 0, lease_left_s, **fields)
    w.commit(w.rows())
    assert store.committed_rounds() == [0]
    claims = sorted(p.rsplit("/", 1)[1] for p in store.fs.glob(f"{store.round_dir(0)}/_work/claims/*.json"))
    assert claims == ["000001.json", "000002.json"]  # taken over beside the old claim, never by deleting it


@pytest.mark.parametrize("holder", ["live-pid", "other-host", "no-pid"])
def test_claim_within_its_lease_conflicts(store, holder):
    fields = {"live-pid": {"host": socket.gethostname(), "pid": os.getppid()},
              "other-host": {"host": "elsewhere.invalid", "pid": 999999}, "no-pid": {}}[holder]
    w = _plant_claim(store, 0, **fields)
    with pytest.raises(CommitConflictError, match="being committed by writer other"):
        w.commit(w.rows())
    assert store.committed_rounds() == []
    assert store.gc(grace_s=0) == []  # a live claim is not gc's to remove


def test_gc_removes_a_claim_whose_lease_ran_out(store):
    _plant_claim(store, 0, -1.0, host="elsewhere.invalid", pid=1)
    removed = store.gc(grace_s=0)
    assert [p.rsplit("/", 2)[-2:] for p in removed] == [["_work", "claims"]]


def test_a_writer_that_stalls_past_its_lease_is_fenced_out(store):
    """The rule itself: B takes over A's expired claim; A, waking, may not publish (check() stops it)."""
    work = f"{store.round_dir(0)}/_work"
    a = CommitClaim(store.fs, work, "round 0", writer="A", lease_s=1.0)
    a.acquire()
    with pytest.raises(CommitConflictError, match="being committed by writer A"):
        CommitClaim(store.fs, work, "round 0", writer="B", lease_s=60.0).acquire()
    wait_until_takeable(store.fs, work)
    b = CommitClaim(store.fs, work, "round 0", writer="B", lease_s=60.0)
    b.acquire()
    assert b.generation == 2
    with pytest.raises(CommitConflictError, match="ran \\(nearly\\) out"):
        a.check()
    a.expires_at = time.time() + 60.0  # even with time left (skewed clock), the newer generation fences it
    with pytest.raises(CommitConflictError, match="taken over by writer B"):
        a.check()
    b.check()  # the new holder goes on


def test_lease_must_be_positive(store):
    with pytest.raises(ValueError, match="lease_s"):
        CommitClaim(store.fs, "x", "round 0", lease_s=0)


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
