"""The openai backend against a real chat-completions HTTP server on localhost (scripted answers)."""
from __future__ import annotations

import logging

import pytest

from layerloop.models.judges.acceptance import decide_rows
from layerloop.models.judges.base import JudgeItem, results_to_frame
from layerloop.models.judges.config import CRITERIA, JudgeConfig, ThresholdConfig
from layerloop.models.judges.openai_judge import BadResponse, parse_scores
from layerloop.models.judges.registry import build_judge
from layerloop.models.judges.scripted_server import ScriptedChatServer

KEY = "sk-test-SECRET-0123456789"


# Nothing here races a clock: answers the client must get come back within a timeout far past any load
# (TIMEOUT_S), and a request that must time out is held by the server until it is released or stops.
TIMEOUT_S = 30.0
HELD_TIMEOUT_S = 2.0  # the client's timeout where a held request must time out (x3 attempts per run)


def judge_cfg(server, **over) -> JudgeConfig:
    section = dict(base_url=server.base_url, model="qwen-test", api_key_env="LAYERLOOP_TEST_KEY",
                   concurrency=4, timeout_s=TIMEOUT_S, max_retries=2, backoff_base_s=0.01, backoff_max_s=0.05)
    section.update(over)
    return JudgeConfig(backend="openai", openai=section)


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("LAYERLOOP_TEST_KEY", KEY)


def run_judge(cfg, its):
    with build_judge(cfg) as judge:
        return judge.score(its)


def items(triplets, n=None):
    return [JudgeItem(f"s{i}", triplets[i % len(triplets)], prompt="a red mug") for i in range(n or len(triplets))]


def test_scores_normalised_and_accepted(key_env, triplets):
    with ScriptedChatServer(scores={"logo_clean": 5, "object_clean": 4, "composite_consistent": 3,
                                    "realism": 1}) as srv:
        res = run_judge(judge_cfg(srv), items(triplets, 2))
    assert [r.error for r in res] == [None, None]
    assert res[0].scores == {"logo_clean": 1.0, "object_clean": 0.75, "composite_consistent": 0.5, "realism": 0.0}
    assert res[0].overall == pytest.approx(0.5625)
    request = srv.requests[0]
    assert request["auth"] == f"Bearer {KEY}"
    images = [c for c in request["payload"]["messages"][1]["content"] if c["type"] == "image_url"]
    assert len(images) == 3 and images[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert request["payload"]["response_format"]["json_schema"]["schema"]["required"] == [*CRITERIA, "comment"]


def test_vllm_structured_outputs_field(key_env, triplets):
    with ScriptedChatServer() as srv:
        run_judge(judge_cfg(srv, structured_output="vllm"), items(triplets, 1))
    payload = srv.requests[0]["payload"]
    assert "response_format" not in payload
    assert payload["structured_outputs"]["json"]["properties"]["realism"]["maximum"] == 5.0


@pytest.mark.parametrize("behaviour,expect", [
    ("hold", "timeout"), ("429", "HTTP 429"), ("500", "HTTP 500"), ("503", "HTTP 503"),
    ("malformed", "malformed JSON"), ("truncated", "truncated JSON"), ("schema", "schema violation"),
    ("whitespace", "truncated JSON"),
])
def test_failures_retry_then_unscored_never_accepted(key_env, triplets, behaviour, expect, caplog):
    caplog.set_level(logging.DEBUG)
    # a held answer never comes while the client waits (released when the server stops); the ok one for
    # s1 has HELD_TIMEOUT_S, which is ~1000x a localhost answer
    timeout = HELD_TIMEOUT_S if behaviour == "hold" else TIMEOUT_S
    with ScriptedChatServer() as srv:
        srv.plans = {"s0": [behaviour], "s1": ["ok"]}
        res = run_judge(judge_cfg(srv, timeout_s=timeout), items(triplets, 2))
        assert srv.attempts("s0") == 3 and srv.attempts("s1") == 1
    bad, good = res
    assert bad.overall is None and expect in bad.error and "after 3 attempts" in bad.error
    assert bad.details["attempts"] == 3 and good.error is None
    out = decide_rows(results_to_frame(res), ThresholdConfig(overall=0.0, logo_clean=0, object_clean=0,
                                                             composite_consistent=0, realism=0))
    assert list(out["accepted"]) == [False, True]
    assert out["reason"].iloc[0].startswith("unscored: ")
    retries = [r for r in caplog.records if "retrying" in r.getMessage() and "s0" in r.getMessage()]
    assert len(retries) == 2
    assert KEY not in caplog.text


def test_recovers_when_a_retry_succeeds(key_env, triplets):
    with ScriptedChatServer() as srv:
        srv.plans = {"s0": ["429", "500", "ok"]}
        res = run_judge(judge_cfg(srv), items(triplets, 1))
    assert res[0].error is None and res[0].details["attempts"] == 3


def test_client_errors_are_not_retried(key_env, triplets):
    with ScriptedChatServer() as srv:
        srv.plans = {"s0": ["400"]}
        res = run_judge(judge_cfg(srv), items(triplets, 1))
        assert srv.attempts("s0") == 1
    assert res[0].error == "HTTP 400 (not retried)"


def test_concurrency_bound_observed_at_server(key_env, triplets):
    # the server answers nothing until 3 requests are in flight at once: the peak is 3 by construction if
    # the client overlaps its requests at all, and more than 3 only if it breaks its bound
    with ScriptedChatServer(gate_in_flight=3) as srv:
        res = run_judge(judge_cfg(srv, concurrency=3), items(triplets, 12))
        assert srv.gate_open.is_set()
    assert all(r.error is None for r in res)
    assert srv.max_in_flight == 3


def test_key_never_in_results_repr_or_logs(key_env, triplets, caplog):
    caplog.set_level(logging.DEBUG)
    with ScriptedChatServer() as srv:
        srv.plans = {"s1": ["500"]}
        with build_judge(judge_cfg(srv)) as judge:
            res = judge.score(items(triplets, 2))
    assert srv.requests[0]["auth"] == f"Bearer {KEY}"  # the key was really sent ...
    text = repr(judge) + repr(judge.cfg) + repr(res) + results_to_frame(res).to_csv() + caplog.text
    assert KEY not in text  # ... and shows up nowhere else
    assert "SECRET" not in text


def test_missing_key_env_is_a_config_error(monkeypatch):
    monkeypatch.delenv("LAYERLOOP_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="LAYERLOOP_TEST_KEY is not set"):
        build_judge(JudgeConfig(backend="openai", openai={"api_key_env": "LAYERLOOP_TEST_KEY"}))


def test_client_kept_between_calls_and_closed(key_env, triplets):
    with ScriptedChatServer() as srv:
        judge = build_judge(judge_cfg(srv))
        first = judge.score(items(triplets, 2))
        client, loop = judge._client, judge._loop
        second = judge.score(items(triplets, 3))
        assert all(r.error is None for r in first + second)
        assert judge._client is client and judge._loop is loop  # one client, one loop for the judge's life
        judge.close()
    assert judge._client is None and client.is_closed() and not loop.alive


def test_works_inside_a_running_event_loop(key_env, triplets):
    import asyncio

    async def inside():
        with ScriptedChatServer() as srv:
            return run_judge(judge_cfg(srv), items(triplets, 2))

    assert all(r.error is None for r in asyncio.run(inside()))


@pytest.mark.parametrize("text,finish,match", [
    ("```json\n{\"logo_clean\": 5, \"object_clean\": \"4\", \"composite_consistent\": 3, \"realism\": 2}\n```",
     "stop", None),
    ("Here: {\"logo_clean\": 5, \"object_clean\": 4, \"composite_consistent\": 3, \"realism\": 2} hope it helps",
     "stop", None),
    ("[1, 2]", "stop", "expected an object"),
    ("{\"logo_clean\": null, \"object_clean\": 4, \"composite_consistent\": 3, \"realism\": 2}", "stop", "not a number"),
    ("{\"logo_clean\": 5, \"object_clean\": 4, \"composite_consistent\": 3, \"realism\": 0}", "stop", "outside"),
    ("", "length", "empty answer"),
    ("   \n\n   ", "length", "empty answer"),
    ("{\"logo_clean\": 5, \"obj", "length", "truncated"),
    (None, "stop", "empty answer"),
])
def test_parse_scores_table(text, finish, match):
    cfg = JudgeConfig().openai
    if match is None:
        assert parse_scores(text, finish, cfg) == {"logo_clean": 1.0, "object_clean": 0.75,
                                                   "composite_consistent": 0.5, "realism": 0.25}
    else:
        with pytest.raises(BadResponse, match=match):
            parse_scores(text, finish, cfg)


def test_key_from_prefect_secret_block(prefect_harness, triplets, caplog, monkeypatch):
    from prefect.blocks.system import Secret

    monkeypatch.delenv("LAYERLOOP_TEST_KEY", raising=False)
    Secret(value="sk-from-block-987654").save("layerloop-judge-key", overwrite=True)
    caplog.set_level(logging.DEBUG)
    with ScriptedChatServer() as srv:
        with build_judge(judge_cfg(srv, api_key_secret="layerloop-judge-key")) as judge:
            res = judge.score(items(triplets, 1))
    assert res[0].error is None and srv.requests[0]["auth"] == "Bearer sk-from-block-987654"
    assert "sk-from-block-987654" not in caplog.text + repr(judge) + repr(res)


@pytest.mark.parametrize("status,hint", [("401", "refused the API key"), ("403", "refused the API key"),
                                         ("404", "no such model or path")])
def test_errors_no_retry_fixes_stop_the_whole_batch_at_once(key_env, triplets, status, hint, caplog):
    from layerloop.models.judges.base import JudgeUnavailable

    caplog.set_level(logging.DEBUG)
    first: list[str] = []

    def plan(sample: str) -> list[str]:  # whichever item reaches the server first is refused; the rest are
        first[:] = first or [sample]     # held until the server stops, so no other item can ever finish
        return [status] if sample == first[0] else ["hold"]

    with ScriptedChatServer() as srv:
        srv.planner = plan
        with pytest.raises(JudgeUnavailable) as caught:
            run_judge(judge_cfg(srv, concurrency=2), items(triplets, 24))
        assert srv.attempts(first[0]) == 1  # never retried
        # the batch stopped: besides the refused one, only the requests in flight or taking its freed slot
        assert len(srv.requests) <= 3
    message = str(caught.value)
    assert f"judge endpoint {srv.base_url} (model qwen-test) answered HTTP {status}" in message
    assert hint in message and "uncommitted" in message
    assert KEY not in message + caplog.text


def test_unresolvable_host_stops_at_once(key_env, triplets):
    from layerloop.models.judges.base import JudgeUnavailable

    cfg = JudgeConfig(backend="openai", openai=dict(base_url="http://layerloop-judge.invalid:8000/v1",
                                                    api_key_env="LAYERLOOP_TEST_KEY", max_retries=3))
    with pytest.raises(JudgeUnavailable, match="layerloop-judge.invalid.*unresolvable host.*does not resolve"):
        run_judge(cfg, items(triplets, 3))


def test_connection_refused_is_retried_then_unscored_with_its_reason(key_env, triplets):
    with ScriptedChatServer() as srv:
        cfg = judge_cfg(srv)
    res = run_judge(cfg, items(triplets, 2))  # the server is gone: nothing listens on its port
    assert [r.error for r in res] == ["connection error: Connection refused (after 3 attempts)"] * 2


def test_endpoint_names_server_and_model_never_credentials():
    cfg = JudgeConfig(backend="openai", openai={"base_url": "https://user:pw@judge.example:8443/v1?api-key=zzz",
                                                "model": "m"})
    assert cfg.endpoint() == "openai-compatible server https://judge.example:8443/v1 (model m)"
    assert JudgeConfig().endpoint() == "the cycle judge"


@pytest.mark.parametrize("error,kind", [
    ("timeout (after 3 attempts)", "timeout"), ("HTTP 500 (after 5 attempts)", "HTTP 500"),
    ("connection error: Connection refused (after 3 attempts)", "connection error"),
    ("malformed JSON: no object in answer 'x' (after 3 attempts)", "malformed JSON"),
    ("truncated JSON (finish_reason=length): Expecting value at 3", "truncated JSON"),
    ("schema violation: missing ['realism']", "schema violation"), ("HTTP 400 (not retried)", "HTTP 400"),
    ("invalid item: missing panel(s) ['logo']", "invalid item"), (None, None),
])
def test_error_kinds(error, kind):
    from layerloop.models.judges.base import error_kind

    assert error_kind(error) == kind
