"""How every `layerloop` command gets its config and its store, and the one way a command reports bad input.

One precedence for every command, lowest first:
  built-in defaults (PipelineConfig's; `demo` and `ablate` lay their own sizes on top)
  < the config file: --config FILE, else ./layerloop.yaml when the working directory has one
  < LAYERLOOP__SECTION__FIELD=value environment variables
  < command-line flags (--store or its env LAYERLOOP_STORE, --rounds, ...).
A bad config or bad input prints `error: ...` in red on stderr and exits with code 2: one line, also when
the bad input is only found deep inside a flow (`user_errors`), and without Prefect's run logs. The
global `--debug` flag (or LAYERLOOP_DEBUG=1) shows the traceback and Prefect's logs instead.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NoReturn, Optional

import typer

from ...tasks.config import ConfigError, deep_merge, load_config
from ...tasks.runtime.orchestration import ride_out_database_restarts
from ...tasks.stages.handles import open_store as open_config_store

if TYPE_CHECKING:
    from ...storage.rounds import RoundStore
    from ...tasks.config import PipelineConfig

DEFAULT_FILE = Path("layerloop.yaml")
PRECEDENCE = "built-in defaults < this file < LAYERLOOP__SECTION__FIELD env < flags"

CONFIG_OPT = typer.Option(None, "--config", "-c",
                          help=f"config file (default: ./layerloop.yaml when present). Precedence: {PRECEDENCE}")
STORE_OPT = typer.Option(None, "--store", envvar="LAYERLOOP_STORE",
                         help="store root: local path or fsspec URL (s3://bucket/prefix); a flag, so it beats "
                              "store.uri from the file and LAYERLOOP__STORE__URI")

DRAWS_OPT = typer.Option(None, "--draws", help="draws per image from independent noise, averaged per pixel: "
                                               "decompositions, and syntheses where a composite is made "
                                               "(sample.draws; N draws cost N times one)")
ANCHOR_OPT = typer.Option(None, "--anchor/--no-anchor", help="keep the object equal to the input outside the "
                                                             "logo's footprint (sample.anchor)")
COMPOSE_ANCHOR_OPT = typer.Option(None, "--anchor/--no-anchor", help="keep the composite equal to the object "
                                  "outside where the model printed the logo (sample.anchor)")


# Bad input: what the project raises for it (ValueError subclasses, docs/INTERFACES.md) and paths that are not there.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
DEBUG_HINT = "(--debug shows the traceback)"
_state = {"debug": False}


def set_debug(on: bool) -> None:
    """Set by the app's --debug flag before any command runs."""
    _state["debug"] = bool(on)


def debug() -> bool:
    return _state["debug"]


def prefect_env() -> None:
    """Settings of local Prefect runs; must be set before prefect is imported (the app does it first).

    Without --debug Prefect logs only what is CRITICAL: a task that fails on bad input would otherwise
    print its traceback several times (task run, flow run, subflow) around the one `error:` line.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline: its telemetry logs ERRORs
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING" if debug() else "CRITICAL")
    # Ephemeral servers keep slot leases in memory but the slot counts in the shared SQLite DB: a run
    # killed while holding the gpu slot would leak it for good. On disk, any later server expires it.
    os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE",
                          "prefect.server.concurrency.lease_storage.filesystem")
    # A fresh Prefect home migrates its SQLite DB before the ephemeral API answers: on 2 busy cores that
    # passes Prefect's 20 s default and the run dies before its first task.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    ride_out_database_restarts()  # a server whose PostgreSQL restarts answers 500 for a while: retry those


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input found while a command works (in a flow, a stage, the model factory) -> one `error:` line
    and exit 2; with --debug the exception propagates with its traceback. Bugs always propagate."""
    try:
        yield
    except USER_ERRORS as exc:
        if debug():
            raise
        fail(f"{_message(exc)} {DEBUG_HINT}")


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or exc}: {exc.filename}"
    return str(exc) or type(exc).__name__


def fail(message: str, code: int = 2) -> NoReturn:
    """The one error printer: `error: message` in red on stderr, then exit (2 = bad input or config)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def config_file(config: Optional[Path]) -> Optional[Path]:
    """--config when given (it replaces ./layerloop.yaml), else ./layerloop.yaml when present, else none."""
    if config is not None:
        return config
    return DEFAULT_FILE if DEFAULT_FILE.is_file() else None


def given(section: str, **values) -> dict:
    """The flags a user passed, as config overrides of one section ({} when none): unset flags are None."""
    passed = {k: v for k, v in values.items() if v is not None}
    return {section: passed} if passed else {}


def load(config: Optional[Path], *, store: Optional[str] = None, flags: Optional[dict] = None,
         defaults: Optional[dict] = None) -> "PipelineConfig":
    """The command's PipelineConfig in the one precedence; `store` is the --store flag, `flags` the others."""
    passed = deep_merge(flags or {}, {"store": {"uri": store}} if store else {})
    try:
        return load_config(config_file(config), defaults=defaults, overrides=passed)
    except ConfigError as exc:
        fail(str(exc))


def open_store(cfg: "PipelineConfig") -> "RoundStore":
    """The config's store; a bad URI or a missing fsspec backend (s3fs, ...) is one error line."""
    try:
        return open_config_store(cfg)
    except (ValueError, ImportError) as exc:
        fail(f"cannot open store {cfg.store.uri!r}: {exc}")
