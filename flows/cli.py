"""The `layerloop` command line: one typer app; each area registers its own commands.

Command modules import heavy libraries (torch, diffusers, prefect) inside the commands, so
`layerloop --help` stays fast.
"""
from __future__ import annotations

import typer

app = typer.Typer(
    name="layerloop",
    help="Cycle-consistent layered image decomposition as a self-improving, versioned data pipeline.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _register_commands() -> None:
    from layerloop.flows import cli_data, cli_judge, cli_report, cli_run

    for module in (cli_data, cli_judge, cli_run, cli_report):
        module.register(app)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    app()
