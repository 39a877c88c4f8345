"""A judge outage fails the round, not its data: against a real OpenAI-compatible HTTP server on localhost
that is down, half-broken or refusing the key, nothing is committed, and the rerun once it answers resumes
at the judge stage, reusing the generated units and the scores already stored."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from layerloop.models.judges.scripted_server import ScriptedChatServer

KEY = "sk-outage-SECRET-4242424242"


@pytest.fixture
def judged_cfg(tiny_cfg, monkeypatch):
    """The tiny loop judged by the openai backend at a localhost port nothing listens on (yet)."""
    monkeypatch.setenv("LAYERLOOP_TEST_KEY", KEY)
    with ScriptedChatServer() as probe:
        port = int(probe.base_url.rsplit(":", 1)[1].split("/")[0])
    judge = {"backend": "openai", "openai": {
        "base_url": f"http://127.0.0.1:{port}/v1", "model": "judge-test", "api_key_env": "LAYERLOOP_TEST_KEY",
        "timeout_s": 5.0, "max_retries": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.02}}
    cfg = tiny_cfg.model_validate({**tiny_cfg.model_dump(), "judge": judge})
    return cfg, port


def _store_files(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def _unit_bytes(cfg) -> dict[str, bytes]:
    units = Path(cfg.store.uri) / "rounds" / "round-0001" / "_work" / "units"
    return {p.name: p.read_bytes() for p in sorted(units.glob("*.parquet"))}


def test_judge_down_fails_the_round_then_the_rerun_resumes_at_the_judge(prefect_harness, judged_cfg, caplog):
    from layerloop.flows.self_improve import self_improve
    from layerloop.models.judges.base import JudgeUnavailable
    from layerloop.storage import schema as S
    from layerloop.tasks.stages.handles import open_store

    cfg, port = judged_cfg
    caplog.set_level(logging.DEBUG)
    with pytest.raises(JudgeUnavailable) as caught:
        self_improve(cfg)  # connection refused on every request
    message = str(caught.value)
    assert f"http://127.0.0.1:{port}/v1 (model judge-test)" in message
    assert "round 1 is not committed" in message and "connection error x2" in message
    store = open_store(cfg)
    assert store.committed_rounds() == [0]
    parts = Path(cfg.store.uri) / "rounds" / "round-0001" / "_work" / "parts"
    # stopped at the first unit: 2 unscored of the 6 candidates already pass 0.2
    assert sorted(p.name for p in (parts / "judge").iterdir()) == ["gen-0000.parquet"]
    assert not (parts / "cycle").exists()
    generated = _unit_bytes(cfg)

    with ScriptedChatServer(port=port) as srv:  # the judge is back, at the same URL
        rows = self_improve(cfg)
    assert [r["round"] for r in rows] == [0, 1]
    assert _unit_bytes(cfg).items() >= generated.items()  # generated units reused, not made again
    judged = store.read(1, "all")
    assert len(judged) == 6 and judged[S.SCORE_OVERALL].notna().all()
    assert not judged[S.REASON].fillna("").str.startswith("unscored").any()
    assert sorted(r["sample"] for r in srv.requests) == sorted(judged[S.SAMPLE_ID])  # each judged once
    assert KEY.encode() not in _store_files(Path(cfg.store.uri))
    assert KEY not in caplog.text


def test_a_half_broken_judge_is_judged_again_only_where_it_failed(prefect_harness, judged_cfg):
    from layerloop.flows.self_improve import self_improve
    from layerloop.models.judges.base import JudgeUnavailable
    from layerloop.storage import schema as S
    from layerloop.tasks.stages.handles import open_store

    cfg, port = judged_cfg
    failing = {"r0001-gen-0000-0000", "r0001-gen-0001-0002"}  # one per unit: no unit is wholly unscored
    with ScriptedChatServer(port=port) as srv:
        srv.planner = lambda sid: ["500"] if sid in failing else ["ok"]
        with pytest.raises(JudgeUnavailable, match=r"already 2 of the 6 candidates .* HTTP 500 x2"):
            self_improve(cfg)
    assert open_store(cfg).committed_rounds() == [0]
    with ScriptedChatServer(port=port) as srv:
        self_improve(cfg)
    assert set(r["sample"] for r in srv.requests if r["sample"].startswith("r0001-gen")) == failing
    judged = open_store(cfg).read(1, "all")
    assert len(judged) == 6 and judged[S.SCORE_OVERALL].notna().all()


def test_commit_refuses_too_many_unscored_and_judging_again_fixes_it(prefect_harness, judged_cfg):
    """The commit's own check, with the plain stages: judged under a lenient share, committed under 0.2."""
    from layerloop.flows.seed import seed
    from layerloop.models.judges.base import JudgeUnavailable
    from layerloop.tasks.stages import consistency, generation, judging
    from layerloop.tasks.stages.commit import commit_round
    from layerloop.tasks.stages.handles import open_store, units

    cfg, port = judged_cfg
    lenient = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"max_unscored_fraction": 1.0})})
    seed(cfg)
    gen = units("gen", cfg.loop.candidates_per_round, cfg.loop.batch_size)
    pool = units("pool", len(consistency.round_pool(open_store(cfg), cfg, 1)), cfg.loop.batch_size)
    with ScriptedChatServer(port=port) as srv:
        srv.planner = lambda sid: ["truncated"] if sid.startswith("r0001-gen-0000") else ["ok"]
        for unit in gen:
            generation.generate(cfg, 1, unit)
            judging.judge(lenient, 1, unit)
            consistency.cycle_generated(cfg, 1, unit)
        for unit in pool:
            consistency.cycle_pool(cfg, 1, unit)
            judging.judge(lenient, 1, unit)
    with pytest.raises(JudgeUnavailable, match=r"round 1 is not committed: 2 of 6 candidates are unscored "
                                               r"\(33%\).* errors by kind: truncated JSON x2"):
        commit_round(cfg, 1, {})
    assert open_store(cfg).committed_rounds() == [0]
    with ScriptedChatServer(port=port) as srv:
        for unit in gen + pool:
            judging.judge(cfg, 1, unit)
    assert sorted(r["sample"] for r in srv.requests) == ["r0001-gen-0000-0000", "r0001-gen-0000-0001"]
    commit_round(cfg, 1, {})
    assert open_store(cfg).committed_rounds() == [0, 1]


def test_a_refused_key_stops_the_round_at_its_first_unit(prefect_harness, judged_cfg, caplog):
    from layerloop.flows.self_improve import self_improve
    from layerloop.models.judges.base import JudgeUnavailable
    from layerloop.tasks.stages.handles import open_store

    cfg, port = judged_cfg
    caplog.set_level(logging.DEBUG)
    with ScriptedChatServer(port=port, default="401") as srv:
        with pytest.raises(JudgeUnavailable, match="answered HTTP 401, which no retry can fix: the server refused"):
            self_improve(cfg)
    assert {r["sample"] for r in srv.requests} <= {"r0001-gen-0000-0000", "r0001-gen-0000-0001"}
    assert len(srv.requests) <= 2  # one request per item of the first unit at most: nothing retried
    assert open_store(cfg).committed_rounds() == [0]
    assert not (Path(cfg.store.uri) / "rounds" / "round-0001" / "_work" / "parts").exists()
    assert srv.requests[0]["auth"] == f"Bearer {KEY}" and KEY not in caplog.text


def test_the_cli_ends_a_judge_outage_with_one_line_and_exit_code_1(judged_cfg, tmp_path):
    """What `layerloop run` (and a scheduler watching its exit code) sees when the judge is down: a real
    process, so Prefect's console logging is the CLI's own (quiet), under its own ephemeral API."""
    import json
    import os
    import subprocess
    import sys

    cfg, port = judged_cfg
    config = tmp_path / "judged.yaml"
    config.write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(LAYERLOOP_TEST_KEY=KEY, PREFECT_HOME=str(tmp_path / "prefect-home"))
    done = subprocess.run([sys.executable, "-c", "from layerloop.flows.cli.main import main; main()", "run",
                           "--config", str(config)], env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "round 1 is not committed" in errors[0], output
    assert f"http://127.0.0.1:{port}/v1" in errors[0] and "connection error" in errors[0], errors[0]
    assert "Traceback" not in output and KEY not in output
