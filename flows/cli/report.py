"""User-facing commands over committed work: `report` (a round's report), `eval` (the held-out table), `ablate`.

Config and store come in the one precedence of flows/cli/config.py. Heavy libraries (torch, diffusers,
prefect) are imported inside the commands.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .config import ANCHOR_OPT, CONFIG_OPT, DRAWS_OPT, STORE_OPT, fail, given, load, open_store, prefect_env, user_errors


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("report")(report_cmd)
    app.command("eval")(eval_cmd)
    app.command("ablate")(ablate_cmd)


def report_cmd(round: int = typer.Argument(..., metavar="ROUND", help="committed round to report on"),
               store: Optional[str] = STORE_OPT, config: Optional[Path] = CONFIG_OPT) -> None:
    """Rebuild report.html / report.json / selection_rate.png of a committed round."""
    from ...tasks.reporting.report import build_report

    cfg = load(config, store=store)
    try:
        paths = build_report(open_store(cfg), round)
    except ValueError as exc:
        fail(str(exc))
    for kind, path in paths.items():
        typer.echo(f"{kind}: {path}")


def eval_cmd(adapter: Optional[list[str]] = typer.Option(None, "--adapter", "-a",
                                                          help="round number or adapter dir; repeatable; "
                                                               "default: every round's adapter"),
             out: Path = typer.Option(Path("eval"), "--out", "-o", help="directory for eval.md/.csv/.json"),
             n: Optional[int] = typer.Option(None, "--n", help="held-out items (default loop.eval_size)"),
             seed: Optional[int] = typer.Option(None, "--seed", help="held-out split seed (default loop.eval_seed)"),
             prefect: bool = typer.Option(True, "--prefect/--no-prefect", help="run as a Prefect flow (artifact)"),
             draws: Optional[int] = DRAWS_OPT, anchor: Optional[bool] = ANCHOR_OPT,
             store: Optional[str] = STORE_OPT, config: Optional[Path] = CONFIG_OPT) -> None:
    """Held-out table: identity baseline, round 0, each round, final (markdown, CSV, Prefect artifact)."""
    from .. import evaluate as ev

    cfg = load(config, store=store, flags=given("sample", draws=draws, anchor=anchor))
    prefect_env()  # offline, Prefect's telemetry service would log an ERROR on every run
    with user_errors():  # an unknown adapter (AdapterNotFound) included
        if prefect:
            result = ev.evaluate(cfg, adapters=adapter or None, out_dir=str(out), n=n, seed=seed)
            rows, paths = result["rows"], result["paths"]
        else:
            pairs = [ev.resolve_adapter(a, cfg) for a in adapter] if adapter else ev.default_rows(cfg)
            rows = ev.evaluation_table(cfg, pairs, n=n, seed=seed)
            paths = ev.write_outputs(rows, str(out))
            typer.echo(ev.to_markdown(rows))
    typer.echo(f"written: {', '.join(paths.values())}")


def ablate_cmd(seeds: list[int] = typer.Option([0, 1], "--seed", help="repeat with these seeds (>= 2 for spread)"),
               rounds: int = typer.Option(1, "--rounds", help="self-improving rounds of the iterative configs"),
               out: Path = typer.Option(Path("ablation"), "--out", "-o", help="work + result directory"),
               config: Optional[Path] = CONFIG_OPT) -> None:
    """The paper's four configurations on the same seeds, with the held-out comparison table.

    Its built-in defaults are a demo-sized tiny world (flows/ablate.py ABLATION_DEFAULTS).
    """
    from ..ablate import ABLATION_DEFAULTS, run_ablation

    cfg = load(config, defaults=ABLATION_DEFAULTS)
    prefect_env()
    with user_errors():
        result = run_ablation(cfg, seeds=list(seeds), rounds=rounds, work_dir=str(out))
    typer.echo(result["markdown"])
    typer.echo(f"written: {', '.join(result['paths'].values())}")
