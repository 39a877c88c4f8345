"""The `layerloop` commands and their one config loader (flows/cli/config.py).

Every command that reads config reads it the same way: built-in defaults < ./layerloop.yaml in the working
directory (or --config FILE, which replaces it) < LAYERLOOP__* env < flags; a bad config is one red
`error:` message and exit code 2, before any work starts.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from prefect import flow  # noqa: F401 - sets up Prefect logging on the real stderr, not on CliRunner's temporary one
import pytest
import typer
import yaml
from typer.testing import CliRunner

from layerloop.flows.cli.main import app
from layerloop.flows.cli.config import PRECEDENCE, load
from layerloop.tasks.stages.demo import smoke_overrides

BAD = "loop:\n  rounds: 0\n  colour: red\n"
# One invocation of every command that reads config (arguments that pass their own checks first).
CONFIG_COMMANDS = {
    "run": ["run"], "seed": ["seed"], "demo": ["demo"], "init": ["init"],
    "ingest-seeds": ["ingest-seeds", "seeds"], "ingest-pool": ["ingest-pool", "pool"],
    "rounds list": ["rounds", "list"], "rounds show": ["rounds", "show", "0"], "verify": ["verify"], "gc": ["gc"],
    "prompts": ["prompts", "--n", "2", "--out", "p.json", "--backend", "openai"],
    "calibrate": ["calibrate", "--judge", "oracle", "--labels", "synthetic"],
    "review export": ["review", "export", "0", "--out", "review"],
    "review import": ["review", "import", "review.csv"],
    "report": ["report", "0"], "eval": ["eval"], "ablate": ["ablate"],
    "decompose": ["decompose", "x.png", "--out", "out"], "synthesize": ["synthesize", "a.png", "b.png", "--out", "c.png"],
    "rebrand": ["rebrand", "a.png", "b.png", "--out", "c.png"],
}


def _invoke(args: list[str], env: dict | None = None):
    return CliRunner().invoke(app, args, env=env)


def test_commands_are_registered():
    result = _invoke(["--help"])
    assert all(cmd in result.output for cmd in ("run", "seed", "demo"))


@pytest.mark.parametrize("name", sorted(CONFIG_COMMANDS))
def test_every_command_reads_the_working_directory_file_and_stops_on_a_bad_one(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerloop.yaml").write_text(BAD)
    (tmp_path / "review.csv").write_text("sample_id,decision,reviewer\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = _invoke(CONFIG_COMMANDS[name])
    assert result.exit_code == 2, result.output
    assert "error: invalid layerloop config" in result.output and "loop.colour: unknown field" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # stopped before any work


def test_a_missing_config_file_is_named(tmp_path):
    result = _invoke(["seed", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "nope.yaml not found" in result.output


def _config_options() -> dict[str, str]:
    """Command path -> the help of its --config option."""
    found = {}

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])
        found.update({" ".join(path): p.help for p in getattr(cmd, "params", []) if "--config" in p.opts})

    walk(typer.main.get_command(app), [])
    return found


def test_each_config_option_documents_the_precedence():
    helps = _config_options()
    assert set(helps) == set(CONFIG_COMMANDS) - {"init"}  # init writes the file; its store comes the same way
    assert all(PRECEDENCE in text and "./layerloop.yaml" in text for text in helps.values()), helps


def test_precedence_defaults_file_env_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LAYERLOOP__LOOP__ROUNDS", raising=False)
    assert load(None).loop.rounds == 3  # built-in default
    (tmp_path / "layerloop.yaml").write_text("loop:\n  rounds: 5\n  batch_size: 3\n")
    assert (load(None).loop.rounds, load(None).loop.batch_size) == (5, 3)  # the working directory's file
    other = tmp_path / "other.yaml"
    other.write_text("loop:\n  rounds: 6\n")
    replaced = load(other)  # --config replaces ./layerloop.yaml: none of its fields apply
    assert (replaced.loop.rounds, replaced.loop.batch_size) == (6, 8)
    monkeypatch.setenv("LAYERLOOP__LOOP__ROUNDS", "7")
    assert load(None).loop.rounds == 7  # env beats the file
    assert load(None, flags={"loop": {"rounds": 8}}).loop.rounds == 8  # a flag beats env
    assert load(None, defaults={"loop": {"batch_size": 9, "eval_size": 4}}).loop.eval_size == 4  # command default
    assert load(None, defaults={"loop": {"batch_size": 9}}).loop.batch_size == 3  # ... under the file


@pytest.fixture
def two_stores(tmp_path, tiny_inputs):
    """Store A with the seeds committed as round 0, and an empty store B."""
    a, b = tmp_path / "A", tmp_path / "B"
    assert _invoke(["ingest-seeds", tiny_inputs["seeds"], "--store", str(a)]).exit_code == 0
    assert _invoke(["init", "--store", str(b), "--config-out", str(tmp_path / "unused.yaml")]).exit_code == 0
    return a, b


def test_data_judge_and_report_commands_follow_the_precedence(two_stores, tmp_path, monkeypatch):
    a, b = two_stores
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "layerloop.yaml").write_text(f"store:\n  uri: {a}\n")
    monkeypatch.delenv("LAYERLOOP_STORE", raising=False)
    listed = _invoke(["rounds", "list"])  # data command: the file's store
    assert listed.exit_code == 0 and "0000" in listed.output, listed.output
    exported = _invoke(["review", "export", "0", "--out", "review", "--random", "2"])  # judge command
    assert exported.exit_code == 0 and json.loads(exported.output)["n"] == 2, exported.output
    reported = _invoke(["report", "0"])  # report command
    assert reported.exit_code == 0 and (a / "rounds" / "round-0000" / "report.html").is_file(), reported.output

    env = {"LAYERLOOP__STORE__URI": str(b)}
    listed = _invoke(["rounds", "list"], env=env)  # env beats the file
    assert listed.exit_code == 0 and f"no committed rounds in {b}" in listed.output, listed.output
    listed = _invoke(["rounds", "list", "--store", str(a)], env=env)  # the flag beats env
    assert listed.exit_code == 0 and "0000" in listed.output
    listed = _invoke(["rounds", "list"], env={**env, "LAYERLOOP_STORE": str(a)})  # the flag's own env var
    assert listed.exit_code == 0 and "0000" in listed.output


def test_run_uses_the_working_directory_file_under_env_and_flags(prefect_harness, tiny_inputs, tmp_path,
                                                                 monkeypatch):
    import torch

    torch.set_num_threads(1)  # as the flow tests do: seconds, not minutes, on a shared small box
    work, in_file, in_env = tmp_path / "work", tmp_path / "file-store", tmp_path / "env-store"
    work.mkdir()
    monkeypatch.chdir(work)
    settings = smoke_overrides(str(in_file), tiny_inputs, rounds=2)
    (work / "layerloop.yaml").write_text(yaml.safe_dump(settings))
    env = {"LAYERLOOP__STORE__URI": str(in_env), "LAYERLOOP__LOOP__ROUNDS": "3"}
    result = _invoke(["run", "--rounds", "1"], env=env)
    assert result.exit_code == 0, result.output
    from layerloop.storage.rounds import RoundStore

    # the file's sizes ran (a default config would train 300 steps), env moved the store, --rounds won
    assert RoundStore(str(in_env)).committed_rounds() == [0, 1] and not in_file.exists()
    info = RoundStore(str(in_env)).round_info(1)
    assert info["config"]["train"]["steps"] == settings["train"]["steps"]
    assert info["config"]["loop"]["rounds"] == 1 and Path(info["config"]["store"]["uri"]) == in_env


def _commands() -> dict[str, "click.Command"]:
    """Every leaf command of the app by its path, e.g. 'review export'."""
    found = {}

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            found[" ".join(path)] = cmd

    walk(typer.main.get_command(app), [])
    return found


def test_help_names_every_argument_in_capitals():
    for path, cmd in _commands().items():
        args = [p for p in cmd.params if p.param_type_name == "argument"]
        usage = _invoke([*path.split(), "--help"]).output.split("Usage:")[1].splitlines()[0]
        for arg in args:
            assert arg.metavar and arg.metavar == arg.metavar.upper() and f"{{{arg.metavar}}}" in usage, (path, usage)


def _readme_forms() -> list[str]:
    """Command forms the README shows: the command table's entries and the code blocks' `layerloop` lines."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    after = text[text.index("Every command ("):].splitlines()[1:]
    table = after[1:after.index("", 1)]  # the table right below that line
    forms = [f.replace("\\|", "|") for row in table[2:] for f in re.findall(r"`([^`]+)`", row)]
    return forms + [line.split("#")[0].strip()[len("layerloop "):] for line in text.splitlines()
                    if line.startswith("layerloop ")]


def test_readme_shows_what_each_command_requires():
    commands = _commands()
    checked = 0
    for form in _readme_forms():
        words = shlex.split(form)
        path = next((p for p in sorted(commands, key=len, reverse=True) if words[:len(p.split())] == p.split()), None)
        assert path is not None, f"README shows `{form}`, which is no command"
        cmd, rest = commands[path], words[len(path.split()):]
        required = [p for p in cmd.params if p.required]
        for opt in (p for p in required if p.param_type_name == "option"):
            assert set(opt.opts) & set(rest), f"README's `{form}` lacks the required {opt.opts[0]}"
        takes_value = {o for p in cmd.params if p.param_type_name == "option" and not p.is_flag for o in p.opts}
        positional = [w for i, w in enumerate(rest) if not w.startswith("-") and (i == 0 or rest[i - 1] not in takes_value)]
        n_args = sum(1 for p in required if p.param_type_name == "argument")
        assert len(positional) >= n_args, f"README's `{form}` lacks required argument(s) of `{path}`"
        checked += 1
    assert checked >= 25
