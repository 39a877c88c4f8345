"""What a user sees when a run meets bad input: one `error:` line and exit code 2, not Prefect's logs.

Run as the user runs it (`python -m layerloop.flows`, a real process), because the noise the issue saw
came from everything a process prints: Prefect's run loggers, plain tracebacks and typer's rich one.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _layerloop(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("LAYERLOOP", "PREFECT_LOGGING"))}  # the CLI's own defaults apply
    return subprocess.run([sys.executable, "-m", "layerloop.flows", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=300, env={**base, "PYTHONPATH": str(REPO), **env})


def _lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


def test_run_with_a_seeds_path_that_does_not_exist_is_one_line(tmp_path):
    proc = _layerloop(["run", "--store", str(tmp_path / "store")], tmp_path,
                      LAYERLOOP__LOOP__SEEDS_PATH=str(tmp_path / "nope"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert _lines(proc) == [f"error: loop.seeds_path: input path {tmp_path / 'nope'} does not exist — fix the "
                            "path in the config file, LAYERLOOP__LOOP__SEEDS_PATH or the flag that sets it "
                            "(--debug shows the traceback)"]


def test_run_and_seed_without_seeds_path_are_one_line(tmp_path):
    for command in ("run", "seed"):
        proc = _layerloop([command, "--store", str(tmp_path / "store")], tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = _lines(proc)
        assert len(lines) == 1 and lines[0].startswith("error: loop.seeds_path is not set"), lines


def test_debug_shows_the_traceback(tmp_path):
    proc = _layerloop(["--debug", "run", "--store", str(tmp_path / "store")], tmp_path,
                      LAYERLOOP__LOOP__SEEDS_PATH=str(tmp_path / "nope"))
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "does not exist" in proc.stderr
    env_debug = _layerloop(["seed", "--store", str(tmp_path / "store")], tmp_path, LAYERLOOP_DEBUG="1")
    assert env_debug.returncode == 1 and "Traceback" in env_debug.stderr


def test_bad_input_found_inside_the_flow_is_one_line_too(tmp_path, prefect_harness):
    """Every seed item is unreadable: the ingest task fails inside the Prefect flow run."""
    from prefect.settings import PREFECT_API_URL

    item = tmp_path / "seeds" / "s0"
    item.mkdir(parents=True)
    for panel in ("composite", "logo", "object"):
        (item / f"{panel}.png").write_bytes(b"not a png")
    proc = _layerloop(["seed", "--store", str(tmp_path / "store")], tmp_path,
                      LAYERLOOP__LOOP__SEEDS_PATH=str(tmp_path / "seeds"), PREFECT_API_URL=PREFECT_API_URL.value())
    lines = _lines(proc)
    assert proc.returncode == 2, "\n".join(lines)
    assert len(lines) == 1 and lines[0].startswith("error: no valid items in") and "not_an_image" in lines[0], lines


def test_every_command_gets_prefects_offline_settings_before_prefect_starts(tmp_path, monkeypatch):
    """`eval` used to start Prefect without them and log `ERROR ... Failed to send telemetry` offline."""
    from typer.testing import CliRunner

    from layerloop.flows.cli.main import app

    for name in ("PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_LOGGING_LEVEL"):
        monkeypatch.setenv(name, "unset")  # recorded first, so what the command sets is undone afterwards
        monkeypatch.delenv(name)
    result = CliRunner().invoke(app, ["rounds", "list", "--store", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["PREFECT_LOGGING_LEVEL"] == "CRITICAL"  # without --debug: no run logs around errors


def test_an_option_the_object_store_does_not_take_is_one_line(tmp_path):
    """s3fs builds its client on first use: a wrong store.storage_options key is caught when the store is
    opened, not as a traceback mid-run."""
    (tmp_path / "layerloop.yaml").write_text("store:\n  uri: s3://bucket/store\n  storage_options:\n    retries: 1\n")
    proc = _layerloop(["rounds", "list"], tmp_path, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y")
    lines = _lines(proc)
    assert proc.returncode == 2, "\n".join(lines)
    assert len(lines) == 1 and lines[0].startswith("error: cannot open store 's3://bucket/store': "
                                                   "store.storage_options ['retries']: "), lines
    assert "unexpected keyword argument 'retries'" in lines[0] and "s3fs.S3FileSystem" in lines[0]
