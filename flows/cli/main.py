"""The `layerloop` command line: one typer app; each area registers its own commands.

Command modules import heavy libraries (torch, diffusers, prefect) inside the commands, so
`layerloop --help` stays fast.
"""
from __future__ import annotations

import typer

from . import data, judge, layers, report, run
from .config import prefect_env, set_debug

app = typer.Typer(
    name="layerloop",
    help="Cycle-consistent layered image decomposition as a self-improving, versioned data pipeline.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", envvar="LAYERLOOP_DEBUG",
                                        help="on an error, show the traceback and Prefect's logs instead of "
                                             "one line")) -> None:
    """Cycle-consistent layered image decomposition as a self-improving, versioned data pipeline."""
    set_debug(debug)
    prefect_env()


def _register_commands() -> None:
    for module in (data, judge, run, report, layers):
        module.register(app)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    app()
