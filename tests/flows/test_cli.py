"""`layerloop run/seed/demo`: a bad config stops before any work with exit code 2 and what to fix."""
from __future__ import annotations

from typer.testing import CliRunner

from layerloop.flows.cli import app


def test_run_with_bad_config_exits_2_naming_the_field(tmp_path):
    bad = tmp_path / "layerloop.yaml"
    bad.write_text("loop:\n  rounds: 0\n  colour: red\n")
    result = CliRunner().invoke(app, ["run", "--config", str(bad), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "loop.rounds" in result.output and "loop.colour: unknown field" in result.output
    assert not (tmp_path / "s").exists()  # nothing was started


def test_seed_with_missing_config_file_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["seed", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "not found" in result.output


def test_commands_are_registered():
    result = CliRunner().invoke(app, ["--help"])
    assert all(cmd in result.output for cmd in ("run", "seed", "demo"))
