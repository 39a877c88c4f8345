"""Crash safety and concurrency with real processes: SIGKILL mid-shard then resume; two committers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd

from layerloop.storage import schema as S
from layerloop.storage.rounds import RoundStore
from layerloop.storage.shards import TMP_PREFIX

from .proc_writer import UNITS, begin
from .helpers import samples

SCRIPT = str(Path(__file__).with_name("proc_writer.py"))
STABLE = [c for c in S.COLUMNS if c not in (S.SHARD, S.CREATED_AT)]  # shard names carry a random run id


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


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


def test_sigkill_mid_shard_then_resume_equals_uninterrupted_run(tmp_path):
    uri = str(tmp_path / "store")
    child = _spawn("crash", uri)
    _wait_for(child, "STALLED")
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    work_shards = tmp_path / "store/rounds/round-0000/_work/shards"
    debris = sorted(p.name for p in work_shards.iterdir() if p.name.startswith(("u1", TMP_PREFIX)))
    assert any(n.startswith(TMP_PREFIX) for n in debris) and any(n.startswith("u1") for n in debris)

    store = RoundStore(uri)
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

    assert not work_shards.exists()  # the commit re-packed every member into shards/: unit copies are gone
    shards = tmp_path / "store/rounds/round-0000/shards"
    referenced = set(resumed[S.SHARD].map(lambda s: s.rsplit("/", 1)[1]))
    assert {p.name for p in shards.iterdir()} == referenced
    removed = store.gc(grace_s=0)
    assert [Path(p).name for p in removed] == ["_work"]  # units, parts and claim of the committed round
    assert store.verify() == [] and store.gc(grace_s=0) == []


def test_gc_keeps_young_files_and_uncommitted_finished_units(tmp_path):
    store = RoundStore(str(tmp_path))
    w = begin(store)
    w.write_unit("u0", samples("a", 3))
    (tmp_path / "rounds/round-0000/_work/shards" / f"{TMP_PREFIX}stray.tar").write_bytes(b"x")
    assert store.gc(grace_s=3600) == []       # a live writer's files are young: kept
    removed = store.gc(grace_s=0)
    assert [Path(p).name for p in removed] == [f"{TMP_PREFIX}stray.tar"]
    assert w.unit_done("u0") and len(list(store.load_panels(w.rows()))) == 3


def test_two_processes_commit_the_same_round_exactly_one_wins(tmp_path):
    uri, go = str(tmp_path / "store"), str(tmp_path / "go")
    kids = {tag: _spawn("commit", uri, tag, go) for tag in ("left", "right")}
    for kid in kids.values():
        _wait_for(kid, "READY")
    Path(go).touch()
    said = {tag: kid.communicate(timeout=60)[0].strip() for tag, kid in kids.items()}
    winners = [t for t, s in said.items() if s == "WON"]
    losers = [t for t, s in said.items() if s.startswith("CONFLICT")]
    assert len(winners) == 1 and len(losers) == 1, said
    assert "round 0" in said[losers[0]]
    store = RoundStore(uri)
    assert store.committed_rounds() == [0]
    assert set(store.read(0, "all")[S.UNIT]) == {f"unit-{winners[0]}"}  # the loser wrote nothing public
    assert store.verify() == []
    store.gc(grace_s=0)
    assert store.verify() == [] and len(store.read(0, "all")) == 3
