"""Prompt sets: deterministic built-in generator, versioning, and the openai generator on a local server."""
from __future__ import annotations

import json

import pytest

from layerloop.models.judges.config import OpenAIJudgeConfig
from layerloop.models.judges.scripted_server import ScriptedChatServer
from layerloop.models.prompts import builtin_prompts, load_prompt_set, openai_prompts, write_prompt_set
from layerloop.models.synthetic import KINDS


def test_builtin_is_deterministic_distinct_and_covers_every_kind():
    a, b = builtin_prompts(60, seed=3), builtin_prompts(60, seed=3)
    assert a.prompts == b.prompts and a.version == b.version
    assert len(set(a.prompts)) == 60
    for kind in KINDS:
        assert sum(f" {kind} with " in p for p in a.prompts) == 10
    assert builtin_prompts(60, seed=4).version != a.version


def test_write_load_round_trip_and_tamper_detection(tmp_path):
    ps = builtin_prompts(5)
    path = write_prompt_set(ps, tmp_path / "sets" / "p.json")
    assert load_prompt_set(path).prompts == ps.prompts
    data = json.loads(path.read_text())
    data["prompts"][0] = "a different prompt"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not match"):
        load_prompt_set(path)
    path.write_text('{"prompts": []}')
    with pytest.raises(ValueError, match="non-empty list"):
        load_prompt_set(path)


def test_bad_n():
    with pytest.raises(ValueError, match="n must be"):
        builtin_prompts(0)


def test_openai_generator_against_local_server(monkeypatch):
    monkeypatch.setenv("LAYERLOOP_TEST_KEY", "sk-prompt-key")
    counter = iter(range(1000))

    def respond(payload):
        k = next(counter)
        # the first answer repeats an item: the generator must de-duplicate and ask again
        items = [{"product": f"glass bottle {k}-{i}", "logo": "a green leaf logo"} for i in range(3)]
        return json.dumps({"items": items + items[:1]})

    with ScriptedChatServer() as srv:
        srv.responder = respond
        srv.plans = {"prompts-0": ["500", "ok"]}
        cfg = OpenAIJudgeConfig(base_url=srv.base_url, api_key_env="LAYERLOOP_TEST_KEY", backoff_base_s=0.01,
                                structured_output="vllm")
        ps = openai_prompts(7, cfg, chunk=3)
    assert ps.generator == "openai" and len(ps.prompts) == 7 and len(set(ps.prompts)) == 7
    assert ps.prompts[0] == "a glass bottle 0-0 with a green leaf logo"
    assert srv.requests[0]["payload"]["structured_outputs"]["json"]["required"] == ["items"]


def test_openai_generator_gives_up_with_a_clear_error(monkeypatch):
    monkeypatch.setenv("LAYERLOOP_TEST_KEY", "sk-prompt-key")
    with ScriptedChatServer(default="malformed") as srv:
        cfg = OpenAIJudgeConfig(base_url=srv.base_url, api_key_env="LAYERLOOP_TEST_KEY", max_retries=1,
                                backoff_base_s=0.01)
        with pytest.raises(ValueError, match="prompt generation failed: malformed JSON"):
            openai_prompts(3, cfg)
