"""PipelineConfig: composition, YAML + env overrides, clear errors, the commented default file."""
from __future__ import annotations

import yaml
import pytest

from layerloop.tasks.config import ConfigError, PipelineConfig, default_yaml_text, env_overrides, load_config


def test_defaults_compose_every_section():
    cfg = load_config(None, environ={})
    assert set(PipelineConfig.model_fields) == {"store", "model", "lora", "train", "sample", "judge",
                                                "thresholds", "loop"}
    assert cfg.model.backbone == "tiny" and cfg.loop.rounds >= 1


def test_yaml_then_env_then_overrides(tmp_path):
    path = tmp_path / "layerloop.yaml"
    path.write_text("loop:\n  rounds: 5\n  candidates_per_round: 7\ntrain:\n  steps: 3\n")
    env = {"LAYERLOOP__LOOP__ROUNDS": "6", "LAYERLOOP__JUDGE__CYCLE__ERROR_SCALE": "0.5", "OTHER": "x"}
    cfg = load_config(path, environ=env, overrides={"train": {"steps": 4}})
    assert (cfg.loop.rounds, cfg.loop.candidates_per_round, cfg.train.steps) == (6, 7, 4)
    assert cfg.judge.cycle.error_scale == 0.5


def test_env_values_parse_as_yaml():
    got = env_overrides({"LAYERLOOP__LOOP__PROMPTS": "[a cup, a hat]", "LAYERLOOP__LOOP__REPORT": "false"})
    assert got == {"loop": {"prompts": ["a cup", "a hat"], "report": False}}


@pytest.mark.parametrize("text,needle", [
    ("loop:\n  roundz: 2\n", "loop.roundz: unknown field"),
    ("loop:\n  rounds: 0\n", "loop.rounds: Input should be greater than or equal to 1"),
    ("model:\n  panel_size: 33\n", "model.panel_size"),
    ("bogus: {}\n", "bogus: unknown field"),
    ("- just a list\n", "top level must be a mapping"),
    ("loop: [unclosed\n", "not valid YAML"),
])
def test_bad_config_says_what_to_fix(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert needle in str(err.value)


def test_the_old_cycle_threshold_field_names_the_new_one(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("loop:\n  cycle_error_threshold: 0.1\n")
    with pytest.raises(ConfigError, match=r"loop.cycle_error_threshold moved to thresholds.max_cycle_error"):
        load_config(path, environ={})


def test_missing_file_and_bad_env_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigError, match="LAYERLOOP__SECTION__FIELD"):
        load_config(None, environ={"LAYERLOOP__ROUNDS": "2"})


def test_default_yaml_is_commented_and_round_trips():
    text = default_yaml_text()
    assert PipelineConfig.model_validate(yaml.safe_load(text)) == PipelineConfig()
    for section in PipelineConfig.model_fields:
        assert f"\n{section}:" in text
    # every field line is preceded by a comment line
    lines = text.splitlines()
    fields = [i for i, line in enumerate(lines) if line.strip() and not line.strip().startswith("#")
              and not line.endswith(":")]
    assert fields and all(lines[i - 1].strip().startswith("#") for i in fields)


def test_prompt_set_is_product_by_logo_unless_given():
    cfg = PipelineConfig()
    assert len(cfg.loop.prompt_set()) == len(cfg.loop.products) * len(cfg.loop.logos)
    cfg2 = load_config(None, environ={}, overrides={"loop": {"prompts": ["x"]}})
    assert cfg2.loop.prompt_set() == ["x"]


def test_prompt_set_from_file(tmp_path):
    from layerloop.models.prompts import PromptSet, write_prompt_set

    path = write_prompt_set(PromptSet(["a cup with a star", "a hat with a moon"], "builtin", {}), tmp_path / "p.json")
    cfg = load_config(None, environ={}, overrides={"loop": {"prompts_file": str(path)}})
    assert cfg.loop.prompt_set() == ["a cup with a star", "a hat with a moon"]


def _error(path=None, **kw) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, **{"environ": {}, **kw})
    return str(err.value)


def test_a_bad_env_value_names_the_variable_not_the_file(tmp_path):
    path = tmp_path / "layerloop.yaml"
    path.write_text("train:\n  steps: 3\n")
    msg = _error(path, environ={"LAYERLOOP__TRAIN__STEPS": "abc", "LAYERLOOP__LOOP__ROUNDZ": "2"})
    assert "train.steps: Input should be a valid integer" in msg and "[env LAYERLOOP__TRAIN__STEPS]" in msg
    assert "loop.roundz: unknown field" in msg and "[env LAYERLOOP__LOOP__ROUNDZ]" in msg
    assert str(path) not in msg


def test_a_bad_file_value_names_the_file_and_line(tmp_path):
    path = tmp_path / "layerloop.yaml"
    path.write_text("# comment\nloop:\n  rounds: 2\n  colour: red\ntrain:\n  steps: -1\n")
    msg = _error(path, environ={"LAYERLOOP__LOOP__ROUNDS": "3"})
    assert f"loop.colour: unknown field (typo?) — remove it or fix its name [{path}:4]" in msg
    assert f"train.steps: Input should be greater than" in msg and f"[{path}:6]" in msg


def test_a_flag_and_the_callers_defaults_are_named_as_such(tmp_path):
    assert "loop.rounds: Input should be greater than or equal to 1 (got 0) [command-line flag]" in \
        _error(overrides={"loop": {"rounds": 0}})
    assert "[defaults]" in _error(defaults={"train": {"steps": 0}})


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "layerloop.yaml"
    path.write_text("loop:\n  rounds: 2\n  prompts: [a, b\ntrain:\n  steps: 3\n")
    msg = _error(path)
    assert msg.startswith(f"config file {path}:4:") and "not valid YAML" in msg and "<unicode string>" not in msg


def test_init_leaves_the_research_levers_out_and_each_still_loads(tmp_path):
    import yaml

    from layerloop.tasks.config import lab_levers

    levers = lab_levers()
    assert {"train.anchor_fraction", "loop.consensus_draws", "judge.cycle.error_scale"} <= set(levers)
    written = yaml.safe_load(default_yaml_text())

    def has(data, path):
        head, _, rest = path.partition(".")
        return head in data and (not rest or (isinstance(data[head], dict) and has(data[head], rest)))

    assert [p for p in levers if has(written, p)] == []
    assert has(written, "train.cycle_weight") and has(written, "loop.rounds")  # product fields stay
    path = tmp_path / "layerloop.yaml"
    path.write_text("train:\n  anchor_fraction: 0.875\nloop:\n  consensus_draws: 3\n")
    cfg = load_config(path, environ={})
    assert (cfg.train.anchor_fraction, cfg.loop.consensus_draws) == (0.875, 3)  # set, a lever is honoured
