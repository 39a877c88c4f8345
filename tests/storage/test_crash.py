"""Crash safety and concurrency with real processes, on a local path and on s3:// (moto over HTTP):
SIGKILL mid-shard then resume; two committers; a writer alive but silent past its claim's lease; several
processes writing units of one round at once."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from layerloop.storage import schema as S
from layerloop.storage.rounds import RoundStore
from layerloop.storage.shards import TMP_PREFIX

from .helpers import samples, wait_until_takeable
from .proc_writer import UNITS, begin

SCRIPT = str(Path(__file__).with_name("proc_writer.py"))
STABLE = [c for c in S.COLUMNS if c not in (S.SHARD, S.CREATED_AT)]  # shard names carry a random run id


def _spawn(*args: str, spot=None) -> subprocess.Popen:
    """proc_writer.py with `args`; with `spot`, in the env that reaches its store (an S3 endpoint)."""
    env = spot.child_env() if spot is not None else {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _wait_for(proc: subprocess.Popen, word: str) -> str:
    line = proc.stdout.readline()
    if word not in line:
        raise AssertionError(f"child said {line!r}; stderr: {proc.stderr.read()}")
    return line


def _full_run(uri: str):
    w = begin(RoundStore(uri))
    for unit, (prefix, n) in UNITS.items():
        w.write_unit(unit, samples(prefix, n))
    w.commit(w.rows())
    return RoundStore(uri).read(0, "all")


def _canon(df: pd.DataFrame) -> pd.DataFrame:
    out = df[STABLE].sort_values(S.SAMPLE_ID).reset_index(drop=True)
    for col in (S.PANELS, S.SHA256, S.SIZES, S.CONVERSIONS):
        out[col] = out[col].map(list)
    return out


def _names(store: RoundStore, rel: str) -> set[str]:
    path = f"{store.round_dir(0)}/{rel}"
    return {p.rsplit("/", 1)[1] for p in store.fs.ls(path, detail=False)} if store.fs.exists(path) else set()


def test_sigkill_mid_shard_then_resume_equals_uninterrupted_run(spot, tmp_path):
    child = _spawn("crash", spot.uri, spot=spot)
    _wait_for(child, "STALLED")
    child.kill()
    child.wait(timeout=30)
    store = spot.store()
    debris = _names(store, "_work/shards")
    assert any(n.startswith("u1") for n in debris)  # u1's first shard is there, its unit table is not
    if spot.uri.startswith("/"):  # local shards are written under a temp name; S3 shards are one whole PUT
        assert any(n.startswith(TMP_PREFIX) for n in debris)

    assert store.committed_rounds() == []  # the crashed round does not exist for readers
    w = begin(store)
    assert w.unit_done("u0") and not w.unit_done("u1")
    u0_before = w.rows()[S.SHARD].tolist()
    for unit, (prefix, n) in UNITS.items():
        w.write_unit(unit, samples(prefix, n))
    assert w.rows().query("unit == 'u0'")[S.SHARD].tolist() == u0_before  # u0 was not rewritten
    w.commit(w.rows())

    resumed = store.read(0, "all")
    reference = _full_run(str(tmp_path / "ref"))
    pd.testing.assert_frame_equal(_canon(resumed), _canon(reference))
    assert len(resumed) == sum(n for _, n in UNITS.values()) and not resumed[S.SAMPLE_ID].duplicated().any()
    assert store.verify() == []
    assert len(list(store.load_panels(resumed))) == len(resumed)

    assert _names(store, "_work/shards") == set()  # the commit re-packed every member into shards/
    assert _names(store, "shards") == set(resumed[S.SHARD].map(lambda s: s.rsplit("/", 1)[1]))
    removed = store.gc(grace_s=0)
    assert [p.rsplit("/", 1)[1] for p in removed] == ["_work"]  # units, parts and claim of the committed round
    assert store.verify() == [] and store.gc(grace_s=0) == []


def test_gc_keeps_young_files_and_uncommitted_finished_units(spot):
    store = spot.store()
    w = begin(store)
    w.write_unit("u0", samples("a", 3))
    store.fs.pipe_file(f"{store.round_dir(0)}/_work/shards/{TMP_PREFIX}stray.tar", b"x")
    assert store.gc(grace_s=3600) == []       # a live writer's files are young: kept
    removed = store.gc(grace_s=0)
    assert [p.rsplit("/", 1)[1] for p in removed] == [f"{TMP_PREFIX}stray.tar"]
    assert w.unit_done("u0") and len(list(store.load_panels(w.rows()))) == 3


def test_two_processes_commit_the_same_round_exactly_one_wins(spot, tmp_path):
    go = str(tmp_path / "go")
    kids = {tag: _spawn("commit", spot.uri, tag, go, spot=spot) for tag in ("left", "right")}
    for kid in kids.values():
        _wait_for(kid, "READY")
    Path(go).touch()
    said = {tag: kid.communicate(timeout=120)[0].strip() for tag, kid in kids.items()}
    winners = [t for t, s in said.items() if s == "WON"]
    losers = [t for t, s in said.items() if s.startswith("CONFLICT")]
    assert len(winners) == 1 and len(losers) == 1, said
    assert "round 0" in said[losers[0]]
    store = spot.store()
    assert store.committed_rounds() == [0]
    assert set(store.read(0, "all")[S.UNIT]) == {f"unit-{winners[0]}"}  # the loser wrote nothing public
    assert store.verify() == []
    store.gc(grace_s=0)
    assert store.verify() == [] and len(store.read(0, "all")) == 3


def test_claim_of_a_live_but_silent_writer_ends_with_its_lease(spot, tmp_path):
    """A writer elsewhere that stopped renewing (here: alive, waiting) no longer blocks the round once its
    lease has run out; the resumer commits, and the old holder, waking, publishes nothing."""
    go = str(tmp_path / "go")
    holder = _spawn("hold", spot.uri, "2", go, spot=spot)
    _wait_for(holder, "CLAIMED")
    store = spot.store()
    w = begin(store)
    w.write_unit("unit-resumer", samples("resumer", 2))
    wait_until_takeable(store.fs, f"{store.round_dir(0)}/_work")  # the holder is alive (same host, live pid): only its lease ends the claim
    w.commit(w.rows().query("unit == 'unit-resumer'"))
    Path(go).touch()
    said = holder.communicate(timeout=120)[0].strip()
    assert said.startswith("CONFLICT") and "already committed" in said, said
    assert set(store.read(0, "all")[S.UNIT]) == {"unit-resumer"} and store.verify() == []


def test_several_processes_write_units_of_one_round_at_once(spot, tmp_path):
    """Units are distinct files (shards with a random run id, then the unit table last), so writers on
    several machines can fill one round together; a unit written twice keeps one table (the other copy's
    shards are orphans, dropped with the unit copies at commit)."""
    go = str(tmp_path / "go")
    kids = [_spawn("units", spot.uri, tag, go, spot=spot) for tag in ("p0", "p1", "p2")]
    for kid in kids:
        _wait_for(kid, "READY")
    Path(go).touch()
    for kid in kids:
        out, err = kid.communicate(timeout=180)
        assert out.strip() == "DONE", err
    store = spot.store()
    w = begin(store)
    rows = w.rows()
    assert sorted(w.units()) == sorted([f"p{p}-{i}" for p in range(3) for i in range(3)] + ["shared"])
    assert len(rows) == 9 * 3 + 4 and not rows[S.SAMPLE_ID].duplicated().any()
    w.commit(rows)
    assert len(store.read(0, "all")) == 31 and store.verify() == []
    assert _names(store, "_work/shards") == set()
