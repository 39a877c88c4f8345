"""`layerloop run`, `layerloop seed` and `layerloop demo`: run the loop locally.

Config comes in the one precedence of flows/cli/config.py: built-in defaults (the demo's sizes for `demo`)
< ./layerloop.yaml or --config < LAYERLOOP__* env < flags. With PREFECT_API_URL set the flows report to that
server; otherwise Prefect starts an ephemeral one. Prefect, torch and the models are imported inside the
commands so `layerloop --help` stays fast. Each command holds the store's run lock before Prefect starts
(a second run fails at once naming the first), and the failures a person must act on (judge down, disk
full, a corrupted shard, the store or the GPU taken) end as one red `error:` line with exit code 1.
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import typer

from ...models.evaluation import identity_baseline
from ...models.judges.base import JudgeUnavailable
from ...models.synthetic import make_split, world_logos
from ...storage.errors import CorruptShardError, StoreFullError, StoreLockedError, StoreUnreachableError
from ...storage.fsutil import is_disk_full, is_unreachable, unreachable_message, write_bytes
from ...tasks.runtime.gpu_slot import GpuSlotBusy
from ...tasks.runtime.orchestration import orchestration_message
from ...tasks.runtime.run_lock import store_run_lock
from ...tasks.runtime.secrets import apply_secret_env
from ...tasks.stages import demo as demo_world
from ...tasks.stages.adapter import evaluate_adapter, evaluate_control, flatten_slices, seen_slices
from ...tasks.stages.handles import adapter_id, open_store
from ...tasks.stages.ingest import check_inputs
from .config import CONFIG_OPT, STORE_OPT, fail, given, load, prefect_env, user_errors

if TYPE_CHECKING:
    from ...tasks.config import PipelineConfig


@contextmanager
def guarded_run(cfg: "PipelineConfig") -> Iterator[None]:
    """A run of the loop from the command line: inputs checked before Prefect starts, the store held for the
    command (the flow takes the lock again, re-entrantly). Bad input is one `error:` line, exit 2; a failure
    that needs a person (judge down, disk full, corrupted shard, store or GPU taken) one line, exit 1."""

    with user_errors():
        if cfg.loop.secret_env:  # credentials from Prefect Secret blocks, before anything opens the store

            prefect_env()
            apply_secret_env(cfg)
        _check_inputs(cfg)
        try:
            with store_run_lock(cfg):
                yield
        except (JudgeUnavailable, StoreFullError, CorruptShardError, StoreLockedError, StoreUnreachableError,
                GpuSlotBusy) as exc:
            fail(str(exc), code=1)
        except Exception as exc:
            fail(_needs_a_person(cfg, exc), code=1)


def _needs_a_person(cfg: "PipelineConfig", exc: Exception) -> str:
    """The `error:` line of a failure the store's own messages did not name: a full disk elsewhere, the
    S3 store's server not answering where the flow read it (listing rounds, reading a unit), or the Prefect
    API lost past its client's retries. Anything else is a bug and propagates with its traceback."""
    if isinstance(exc, OSError) and is_disk_full(exc):
        return (f"no space left on a disk the run writes to: {exc}. Free space, then rerun: finished units, "
                "parts and adapters are kept.")
    if is_unreachable(exc):
        return unreachable_message(cfg.store.uri, "running the loop", exc)
    lost_api = orchestration_message(exc)  # the Prefect server or its database away past the retries
    if lost_api is not None:
        return lost_api
    raise exc


def print_table(rows: list[dict], title: str = "selection rate per round", *, store=None) -> None:
    """The per-round table in at most 100 columns: candidates, kept, selection rate, dataset, promotion, and the
    generating adapter's three key metrics beside its matched-compute control's. Every column of every round
    (all slices, validation, judge means, loop health) goes to <store>/selection_rate.csv, named below it."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    metrics = _key_metrics(rows)
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for col in ["round", "cand.", "kept", "rate", "data", "prom."]:
        table.add_column(col, justify="right")
    for m in metrics:
        table.add_column(f"{_metric_title(m)}\nr-1 / ctl", justify="right")
    for r in rows:
        rate = "-" if r["selection_rate"] is None else f"{100 * r['selection_rate']:.1f}%"
        promoted = {True: "yes", False: "no"}.get(r.get("promoted"), "-")
        cells = [r["round"], r["candidates"], r["accepted"], rate, r["dataset_size"], promoted]
        table.add_row(*[str(c) for c in cells + [_pair(r, m) for m in metrics]])
    Console(width=100).print(table)
    if store is not None and rows:
        typer.echo(f"every column: {write_table_csv(store, rows)}")


# key columns of the terminal table: the unseen / seen slices when the seeds came from a slice of the world
KEY_METRICS = (("psnr_object@unseen", "psnr_object@seen", "psnr_logo@unseen"), ("psnr_object", "psnr_logo", "iou_logo"))


def _key_metrics(rows: list[dict]) -> tuple[str, ...]:
    for choice in KEY_METRICS:
        if any(f"heldout_{choice[0]}" in r or f"validation_{choice[0]}" in r for r in rows):
            return choice
    return ()


def write_table_csv(store, rows: list[dict]) -> str:
    """Every column of the per-round table as <store>/selection_rate.csv (rewritten each run); its URL."""
    import csv
    import io

    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    path = f"{store.root}/selection_rate.csv"
    write_bytes(store.fs, path, buf.getvalue().encode())
    return store.url("selection_rate.csv")


def _metric_title(metric: str) -> str:
    name, _, part = metric.partition("@")
    return f"{name.replace('psnr_', '').replace('_', ' ')} {part}".strip() + (" dB" if name.startswith("psnr") else "")


def _pair(row: dict, metric: str) -> str:
    """'loop / control' of one metric: held-out when measured, else validation (no slice there)."""
    source = "heldout" if f"heldout_{metric}" in row else "validation"
    loop, control = row.get(f"{source}_{metric}"), row.get(f"control_{source}_{metric}")
    if loop is None:
        return "-"
    return f"{loop:.2f}" + (f" / {control:.2f}" if control is not None else "")


def run(config: Optional[Path] = CONFIG_OPT,
        rounds: Optional[int] = typer.Option(None, help="last round to run (a flag: beats loop.rounds)"),
        store: Optional[str] = STORE_OPT,
        wait: Optional[float] = typer.Option(None, "--wait", min=0, help="when another run holds the store, wait "
                                             "up to this many seconds for it (a flag: beats loop.store_lock_wait_s; "
                                             "default: fail at once naming it)")) -> None:
    """Run the self-improving loop: seed round if missing, then rounds up to loop.rounds."""
    flags = given("loop", rounds=rounds, store_lock_wait_s=wait)
    cfg = load(config, store=store, flags=flags)
    with guarded_run(cfg):
        from ..self_improve import self_improve

        rows = self_improve(cfg)
    print_table(rows, store=open_store(cfg))


def _check_inputs(cfg: "PipelineConfig") -> None:
    """Missing seed / pool inputs are found before Prefect starts (seconds, and no flow-run logs)."""
    check_inputs(cfg)
    prefect_env()


def seed(config: Optional[Path] = CONFIG_OPT, store: Optional[str] = STORE_OPT) -> None:
    """Ingest the labeled seeds as round 0 and train the seed LoRA (adapters/round-0000)."""
    cfg = load(config, store=store)
    with guarded_run(cfg):
        from ..seed import seed as seed_flow

        result = seed_flow(cfg)
    typer.echo(f"seed round committed; held-out metrics of the seed LoRA: {result['heldout']}")


def register(app: typer.Typer) -> None:
    """Add run, seed and demo to the main app."""
    app.command("run")(run)
    app.command("seed")(seed)
    app.command("demo")(demo)


def demo(store: str = typer.Option("demo-store", help="store of the demo (created if missing; a flag, "
                                                      "so it beats store.uri)"),
         inputs: str = typer.Option(".demo", help="where the synthetic seeds and pool are rendered"),
         rounds: int = typer.Option(2, help="rounds after the seed round (a flag: beats loop.rounds)"),
         fresh: bool = typer.Option(False, help="delete the demo store first"),
         config: Optional[Path] = CONFIG_OPT) -> None:
    """Tiny world on CPU: synthesize seeds + pool, run seed + N rounds, print the per-round table.

    Its built-in defaults are the demo's sizes; a config file and LAYERLOOP__* env change them as for `run`,
    and --store, --inputs and --rounds (with their defaults) are flags, so they always apply.
    """
    import time


    start = time.perf_counter()
    cfg = load(config, defaults=demo_world.DEMO_SIZES,
               flags=demo_world.demo_flags(store, demo_world.input_paths(inputs), rounds))
    demo_world.make_inputs(inputs, n_pool=rounds * cfg.loop.pool_per_round, seed_slice=demo_world.DEMO_SLICE)
    if fresh and Path(store).exists():
        shutil.rmtree(store)
    prefect_env()
    from ..self_improve import self_improve

    with guarded_run(cfg):
        rows = self_improve(cfg)
    print_table(rows, store=open_store(cfg))
    if cfg.loop.eval_size:
        _print_heldout("identity baseline (composite as every layer)", _identity(cfg))
    last = cfg.loop.rounds
    if cfg.loop.train_final and cfg.loop.eval_size:
        _print_heldout(f"final adapter {adapter_id(last)} (trained on rounds 0..{last})",
                       evaluate_adapter(cfg, last)["metrics"])
        if cfg.loop.control:
            _print_heldout("its control (the same steps on the labeled seeds alone)",
                           evaluate_control(cfg, last)["heldout"])
    typer.echo(f"report: {open_store(cfg).round_uri(last)}/report.html")
    typer.echo(f"demo took {time.perf_counter() - start:.0f} s")


def _identity(cfg: "PipelineConfig") -> dict:

    items = make_split("test", cfg.loop.eval_size, cfg.model.panel_size, cfg.loop.eval_seed,
                       logos=world_logos(cfg.model.layers))
    return flatten_slices(identity_baseline(items, slices=seen_slices(open_store(cfg))))


def _print_heldout(label: str, metrics: dict) -> None:
    import textwrap

    text = (f"held-out PSNR, {label}: " + ", ".join(f"{k.removeprefix('psnr_').replace('@', ' ')} {v:.2f} dB"
                                                     for k, v in sorted(metrics.items()) if k.startswith("psnr_")))
    typer.echo(textwrap.fill(text, 100, subsequent_indent="  "))  # the terminal table's 100 columns
