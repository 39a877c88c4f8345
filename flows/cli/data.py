"""Data commands of the `layerloop` CLI: init, synth, ingest-seeds, ingest-pool, rounds list/show, verify, gc.

The store is `--store` (or $LAYERLOOP_STORE), else `store.uri` in the one config precedence of
flows/cli/config.py (./layerloop.yaml or --config, then LAYERLOOP__* env). Bad input exits with code 2 and
a message saying what to fix. Model code (the synthetic renderer) is imported inside the commands.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from ...models.synthetic import SPLITS, WorldSlice, write_split
from ...storage.errors import RoundExistsError, RoundNotFoundError
from ...tasks.config import default_yaml_text
from ...tasks.stages.panels import rgba_members
from .config import CONFIG_OPT, STORE_OPT, fail, load, open_store


rounds_app = typer.Typer(help="List committed rounds or describe one.", no_args_is_help=True)


def _open(store: Optional[str], config: Optional[Path]):
    """The store (and config) a data command works on, in the one precedence (flows/cli/config.py)."""
    cfg = load(config, store=store)
    return open_store(cfg), cfg.store


def _progress(description: str) -> tuple[Any, Callable[[int, int], None]]:
    """A rich progress bar and the (done, total) callback that drives it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False)
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


def init(store: Optional[str] = STORE_OPT,
         config_out: Path = typer.Option(Path("layerloop.yaml"), "--config-out", help="where to write the config"),
         force: bool = typer.Option(False, help="overwrite an existing config file")) -> None:
    """Create the store folders and write a commented default layerloop.yaml."""
    st, _ = _open(store, None)
    root = st.init()
    typer.echo(f"store ready: {root}")
    if config_out.exists() and not force:
        typer.echo(f"kept existing {config_out} (use --force to overwrite)")
        return
    config_out.write_text(default_yaml_text({"store": {"uri": store}} if store else None))
    typer.echo(f"wrote {config_out} (store.uri: {store or st.uri}): edit it, then `layerloop ingest-seeds PATH` "
               "and `layerloop run`")


def synth(split: str = typer.Argument(..., metavar="SPLIT",
                                     help="seeds (labeled triplets), pool (composites only), test (held out, reports only) "
                                          "or dev (held out, for choosing recipes and defaults)"),
          n: int = typer.Option(100, "--n", min=1, help="number of items"),
          size: int = typer.Option(32, "--size", min=16, help="panel size in pixels (32 tiny world, 512 FLUX)"),
          seed: int = typer.Option(0, "--seed", help="base seed; each split has its own RNG stream"),
          out: Path = typer.Option(..., "--out", help="output folder: <out>/<id>/{composite,logo,object}.png + meta.json"),
          kinds: Optional[list[str]] = typer.Option(None, "--kind", help="only these product kinds (repeat); "
                                                    "e.g. seeds from a narrow slice, pool and test from everything"),
          shapes: Optional[list[str]] = typer.Option(None, "--shape", help="only these logo shapes (repeat)"),
          words: Optional[list[str]] = typer.Option(None, "--word", help="only these logo words (repeat)"),
          logos: int = typer.Option(1, "--logos", min=1, max=2, help="logos per product: 2 gives the K=3 "
                                    "schema logo_1 | logo_2 | object (model.layers must match)")) -> None:
    """Render synthetic items with ground truth (procedural products with warped, shaded logos)."""
    if split not in SPLITS:
        fail(f"split must be one of {', '.join(SPLITS)}; got {split!r}")

    try:
        where = WorldSlice(kinds=tuple(kinds) if kinds else None, shapes=tuple(shapes) if shapes else None,
                           words=tuple(words) if words else None)
    except ValueError as exc:
        fail(str(exc))
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


    with Progress(SpinnerColumn(), TextColumn(f"rendering {n} {split} items"), TimeElapsedColumn()) as bar:
        bar.add_task("synth", total=None)
        try:
            ids = write_split(split, n, size, seed, str(out), where, logos)
        except ValueError as exc:
            fail(str(exc))
    typer.echo(f"wrote {len(ids)} {split} items ({where.describe()}) to {out}")


def _ingest(kind: str, path: str, store: Optional[str], config: Optional[Path]) -> None:
    from ...storage.ingest import IngestError, ingest_pool, ingest_seeds

    full = load(config, store=store)
    st, cfg = open_store(full), full.store
    # seeds: loop.validation_size of them become the held-out validation split, fixed from then on
    # and each carries its logo's RGBA matte, as the pipeline's own ingestion stores it
    extra = ({"validation_size": full.loop.validation_size, "derive": rgba_members,
              "layers": tuple(full.model.layers)} if kind == "seeds" else {})
    fn = ingest_seeds if kind == "seeds" else ingest_pool
    bar, update = _progress(f"ingesting {kind}")
    try:
        with bar:
            report = fn(path, st, cfg, progress=update, **extra)
    except RoundExistsError as exc:
        fail(f"{exc}. Seeds form round 0, which already exists: use a new --store to start over")
    except (IngestError, ValueError) as exc:
        fail(str(exc))
    where = f"round {report.round:04d}" if kind == "seeds" else f"pool batch {report.round:04d}"
    typer.echo(f"{where}: {report.accepted} accepted of {report.found} ({report.layout} layout), "
               f"{len(report.quarantined)} quarantined, {report.conversions} panel conversions -> {report.uri}")
    for reason, count in sorted(report.reasons.items()):
        typer.echo(f"  quarantined {count} x {reason}")


def ingest_seeds_cmd(path: str = typer.Argument(..., metavar="PATH",
                                                help="folder (<id>/composite.png ... or <id>_composite.png ...) or CSV"),
                     store: Optional[str] = STORE_OPT, config: Optional[Path] = CONFIG_OPT) -> None:
    """Validate labeled (composite, logo, object) triplets and commit the good ones as round 0000."""
    _ingest("seeds", path, store, config)


def ingest_pool_cmd(path: str = typer.Argument(..., metavar="PATH",
                                               help="folder of <id>/composite.png, <id>.png files, or CSV"),
                    store: Optional[str] = STORE_OPT, config: Optional[Path] = CONFIG_OPT) -> None:
    """Validate unlabeled composites and commit them as the next pool batch."""
    _ingest("pool", path, store, config)


def rounds_list(store: Optional[str] = STORE_OPT, config: Optional[Path] = CONFIG_OPT) -> None:
    """Table of committed rounds: lineage, accepted/rejected counts, selection rate."""
    from rich.console import Console
    from rich.table import Table

    st, _ = _open(store, config)
    table = Table("round", "parent", "adapter", "accepted", "rejected", "selection", "committed at")
    for r in st.committed_rounds():
        i = st.round_info(r)
        rate = "-" if i.get("selection_rate") is None else f"{i['selection_rate']:.0%}"
        table.add_row(f"{r:04d}", str(i.get("parent_round") if i.get("parent_round") is not None else "-"),
                      str(i.get("adapter_id") or "-"), str(i["accepted"]), str(i["rejected"]), rate,
                      str(i.get("committed_at", ""))[:19])
    if not table.row_count:
        typer.echo(f"no committed rounds in {st.uri}")
        return
    Console().print(table)


def rounds_show(round: int = typer.Argument(..., metavar="ROUND", help="round number, e.g. 0"),
                store: Optional[str] = STORE_OPT, config: Optional[Path] = CONFIG_OPT,
                as_json: bool = typer.Option(False, "--json", help="print round.json as JSON")) -> None:
    """Describe one committed round: lineage, counts by source and reason, shards, size, conversions."""
    st, _ = _open(store, config)
    try:
        info = st.round_info(round)
        rows = st.read(round, "all")
    except (RoundNotFoundError, ValueError) as exc:
        fail(f"{exc}; committed rounds: {st.committed_rounds()}")
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    for line in describe_round(info, rows):
        typer.echo(line)


def describe_round(info: dict, rows: Any) -> list[str]:
    """Human summary lines of a round (used by `rounds show`)."""
    from ...storage import schema as S

    acc = rows[rows[S.ACCEPTED].astype(bool)]
    lines = [f"round {info['round']:04d} at {info['uri']}",
             f"  parent round: {info.get('parent_round')}   adapter: {info.get('adapter_id')}",
             f"  committed at: {info.get('committed_at')}   schema v{info.get('schema_version')}",
             f"  samples: {info['accepted']} accepted, {info['rejected']} rejected"
             + (f" (selection rate {info['selection_rate']:.1%})" if info.get("selection_rate") is not None else ""),
             f"  shards: {rows[S.SHARD].nunique()}   bytes: {int(sum(sum(s) for s in rows[S.SIZES]))}"]
    if len(rows):
        lines.append(f"  panel size: {sorted(set(zip(rows[S.WIDTH], rows[S.HEIGHT])))}")
        lines.append("  by source: " + ", ".join(f"{k}={v}" for k, v in rows[S.SOURCE].value_counts().items()))
    if len(acc) and acc[S.KIND].notna().any():
        lines.append("  kinds (accepted): " + ", ".join(f"{k}={v}" for k, v in acc[S.KIND].value_counts().items()))
    lines += [f"  rejected {n} x {kind}" for kind, n in _rejections(rows, S).items()]
    conv = sum(len(c) for c in rows[S.CONVERSIONS])
    if conv:
        lines.append(f"  input conversions recorded: {conv}")
    if info.get("info"):
        lines.append("  info (all of it: --json):")
        lines += [f"    {key}: {_short(value)}" for key, value in info["info"].items()]
    return lines


def _rejections(rows: Any, S: Any) -> dict[str, int]:
    """Rejections counted by cause (the reason without its measured scores), most frequent first."""
    from ...models.judges.acceptance import reason_kind

    kinds = rows.loc[~rows[S.ACCEPTED].astype(bool), S.REASON].map(reason_kind).replace("", "(no reason)")
    return kinds.value_counts().to_dict()


def _short(value: Any, width: int = 100) -> str:
    """One line of compact JSON, cut at `width` characters with an ellipsis that says so."""
    text = json.dumps(value, default=str, separators=(", ", ": "))
    return text if len(text) <= width else text[:width - 2] + " …"


def verify(round: Optional[int] = typer.Option(None, "--round", help="only this round (default: all + pool)"),
           store: Optional[str] = STORE_OPT, config: Optional[Path] = CONFIG_OPT) -> None:
    """Re-hash every shard member against the manifests; exit 1 when anything does not match."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


    st, _ = _open(store, config)
    with Progress(SpinnerColumn(), TextColumn("verifying"), TimeElapsedColumn()) as bar:
        bar.add_task("verify", total=None)
        try:
            problems = st.verify(round)
        except RoundNotFoundError as exc:
            fail(f"{exc}; committed rounds: {st.committed_rounds()}")
    for p in problems:
        typer.secho(p, fg=typer.colors.RED)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"ok: every member matches its sha256 ({st.uri})")


def gc(grace: float = typer.Option(3600.0, help="keep unreferenced files younger than this many seconds "
                                                "(a running writer's shards); 0 when no writer is active"),
       store: Optional[str] = STORE_OPT, config: Optional[Path] = CONFIG_OPT) -> None:
    """Remove orphans left by crashed writers: temp files, unreferenced shards, stale commit claims."""
    st, _ = _open(store, config)
    removed = st.gc(grace_s=grace)
    for p in removed:
        typer.echo(f"removed {p}")
    typer.echo(f"gc: removed {len(removed)} path(s)")


def register(app: typer.Typer) -> None:
    """Add the data commands to the main app."""
    app.command("init")(init)
    app.command("synth")(synth)
    app.command("ingest-seeds")(ingest_seeds_cmd)
    app.command("ingest-pool")(ingest_pool_cmd)
    rounds_app.command("list")(rounds_list)
    rounds_app.command("show")(rounds_show)
    app.add_typer(rounds_app, name="rounds")
    app.command("verify")(verify)
    app.command("gc")(gc)
