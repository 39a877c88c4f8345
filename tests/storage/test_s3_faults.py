"""The S3 server goes away in the middle of a commit (a real server, stopped and started again on its port
with its data: tests/storage/moto_ctl.py), with the writer in a real process: the commit stops with
StoreUnreachableError, nothing is published, and a retry of the commit in the same process (what a task
retry does) commits at once instead of waiting out its own dead claim's lease. Plus the rule that names
an S3 outage (`is_unreachable`), on the errors botocore raises for a port with nobody behind it."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layerloop.storage import schema as S
from layerloop.storage.errors import StoreUnreachableError
from layerloop.storage.fsutil import is_unreachable, reachable
from layerloop.storage.rounds import COMMITTED, MANIFEST, RoundStore

from .s3 import BUCKET, CREDENTIALS, StoppableS3, free_port

SCRIPT = str(Path(__file__).with_name("proc_writer.py"))
N_SAMPLES = 400  # 200 unit shards to re-pack (2 samples a shard): a commit of seconds, caught mid-way
REPACKED_AT_STOP = 10  # of the ~200 committed shards: the server stops in the middle of the re-pack
PAUSE_S = 5.0  # the server stays away after the commit gave up; only "it comes back" matters here


@pytest.fixture
def stoppable(tmp_path, monkeypatch):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    with StoppableS3(tmp_path) as server:
        server.make_bucket(BUCKET)
        yield server


def _read_line(proc: subprocess.Popen, word: str) -> str:
    """The writer's next line, which must start with `word` (a hang is pytest-timeout's to end)."""
    line = proc.stdout.readline()
    if not line.startswith(word):
        raise AssertionError(f"writer said {line!r}, not {word}; stderr: {proc.stderr.read()[-3000:]}")
    return line.strip()


def test_store_away_mid_commit_publishes_nothing_and_the_retry_commits_at_once(stoppable, tmp_path):
    uri = f"s3://{BUCKET}/mid-commit/store"
    store = RoundStore(uri, stoppable.storage_options)
    go, back = tmp_path / "go", tmp_path / "back"
    env = {**os.environ, **stoppable.env, "PYTHONUNBUFFERED": "1"}
    writer = subprocess.Popen([sys.executable, SCRIPT, "outage", uri, str(N_SAMPLES), str(go), str(back)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _read_line(writer, "READY")
        claim = f"{store.round_dir(0)}/_work/claims/000001.json"
        go.touch()
        deadline = time.monotonic() + 120
        # the commit has claimed the round and re-packed some of its shards (one PUT each): stop it there
        while (repacked_before := len(store.fs.glob(f"{store.round_dir(0)}/shards/*"))) < REPACKED_AT_STOP:
            assert writer.poll() is None and time.monotonic() < deadline, "the commit never got to re-packing"
            time.sleep(0.02)
        stoppable.stop()
        stopped = time.monotonic()
        said = _read_line(writer, "UNREACHABLE")
        gave_up_after = time.monotonic() - stopped
        time.sleep(PAUSE_S)
        stoppable.start()

        # nothing of the stopped commit is visible: no COMMITTED (hence no round), its claim still there
        assert store.committed_rounds() == [] and not store.fs.exists(f"{store.round_dir(0)}/{COMMITTED}")
        assert store.fs.exists(claim) and not store.fs.exists(f"{store.round_dir(0)}/{MANIFEST}")
        assert REPACKED_AT_STOP <= repacked_before < N_SAMPLES // 2
        print(f"gave up after {gave_up_after:.1f} s, {repacked_before} shards re-packed before the stop: {said}")
        assert f"the store {uri} could not be reached while committing round 0 (" in said
        assert "round in progress is not committed" in said

        back.touch()
        assert _read_line(writer, "WON") == "WON"  # no 120 s wait for its own abandoned claim
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    rows = store.read(0, "all")
    assert len(rows) == N_SAMPLES and rows[S.SAMPLE_ID].is_unique
    assert store.fs.exists(f"{store.round_dir(0)}/{MANIFEST}") and store.verify() == []
    assert store.fs.exists(f"{store.round_dir(0)}/_work/claims/000002.json")  # taken over, never deleted
    # the stopped commit's re-packed shards were cleared by the retry: every shard left is the manifest's
    shards = {p.rsplit("/", 1)[1] for p in store.fs.glob(f"{store.round_dir(0)}/shards/*")}
    assert shards == set(rows[S.SHARD].map(lambda s: s.rsplit("/", 1)[1]))


def test_botocore_no_answer_is_named_unreachable_and_other_errors_are_not(monkeypatch):
    """A port with nobody behind it: what s3fs raises is `is_unreachable`, `reachable` makes it one
    StoreUnreachableError naming the store and the step (a ConnectionError, so retried as transient);
    an S3 answer (a missing object) is not an outage."""
    import s3fs

    from layerloop.tasks.runtime.prefect_tasks import is_transient

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    fs = s3fs.S3FileSystem(endpoint_url=f"http://127.0.0.1:{free_port()}", skip_instance_cache=True)
    with pytest.raises(Exception) as raw:
        fs.pipe_file(f"{BUCKET}/k", b"x")
    assert is_unreachable(raw.value) and is_transient(raw.value)
    with pytest.raises(StoreUnreachableError) as named:
        with reachable("s3://b/store", "writing unit u0 of round 3"):
            raise raw.value
    assert str(named.value).startswith("the store s3://b/store could not be reached while writing unit u0 of round 3 (")
    assert isinstance(named.value, ConnectionError) and named.value.__cause__ is raw.value
    assert not is_unreachable(FileNotFoundError("k")) and not is_unreachable(ConnectionRefusedError("judge"))
    with pytest.raises(FileNotFoundError):
        with reachable("s3://b/store", "reading"):
            raise FileNotFoundError("k")
