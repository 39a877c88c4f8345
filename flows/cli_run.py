"""`layerloop run`, `layerloop seed` and `layerloop demo`: run the loop locally.

Config comes in the one precedence of flows/cli_config.py: built-in defaults (the demo's sizes for `demo`)
< ./layerloop.yaml or --config < LAYERLOOP__* env < flags. With PREFECT_API_URL set the flows report to that
server; otherwise Prefect starts an ephemeral one. Prefect, torch and the models are imported inside the
commands so `layerloop --help` stays fast. Each command holds the store's run lock before Prefect starts
(a second run fails at once naming the first), and the failures a person must act on (judge down, disk
full, a corrupted shard, the store or the GPU taken) end as one red `error:` line with exit code 1.
"""
from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import typer

from layerloop.flows.cli_config import CONFIG_OPT, STORE_OPT, fail, load

if TYPE_CHECKING:
    from layerloop.tasks.config import PipelineConfig


def _prefect_env() -> None:
    """Settings for local runs; must be set before prefect is imported."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # Ephemeral servers keep slot leases in memory but the slot counts in the shared SQLite DB: a run
    # killed while holding the gpu slot would leak it for good. On disk, any later server expires it.
    os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE",
                          "prefect.server.concurrency.lease_storage.filesystem")


@contextmanager
def guarded_run(cfg: "PipelineConfig") -> Iterator[None]:
    """Hold the store for the command (the flow takes the lock again, re-entrantly); a failure that needs a
    person is one `error:` line, exit 1 (its traceback is in the Prefect log)."""
    from layerloop.models.judges.base import JudgeUnavailable
    from layerloop.storage.errors import CorruptShardError, StoreFullError, StoreLockedError
    from layerloop.storage.fsutil import is_disk_full
    from layerloop.tasks.gpu_slot import GpuSlotBusy
    from layerloop.tasks.run_lock import store_run_lock

    try:
        with store_run_lock(cfg):
            yield
    except (JudgeUnavailable, StoreFullError, CorruptShardError, StoreLockedError, GpuSlotBusy) as exc:
        fail(str(exc), code=1)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        fail(f"no space left on a disk the run writes to: {exc}. Free space, then rerun: finished units, "
             "parts and adapters are kept.", code=1)


def print_table(rows: list[dict], title: str = "selection rate per round") -> None:
    """The per-round table: candidates, accepted, selection rate, held-out per-layer PSNR."""
    from rich.console import Console
    from rich.table import Table

    psnr_cols = sorted({k for r in rows for k in r if k.startswith("heldout_psnr_")})
    table = Table(title=title)
    for col in ["round", "candidates", "accepted", "selection rate", "cycle kept", "dataset"] + \
               [c.replace("heldout_", "held-out ") + " (adapter r-1)" for c in psnr_cols]:
        table.add_column(col, justify="right")
    for r in rows:
        rate = "-" if r["selection_rate"] is None else f"{100 * r['selection_rate']:.1f} %"
        cells = [r["round"], r["candidates"], r["accepted"], rate, r["cycle_kept"], r["dataset_size"]]
        cells += [f"{r[c]:.2f}" if r.get(c) is not None else "-" for c in psnr_cols]
        table.add_row(*[str(c) for c in cells])
    Console(width=None if sys.stdout.isatty() else 160).print(table)  # pipes default to 80 columns


def run(config: Optional[Path] = CONFIG_OPT,
        rounds: Optional[int] = typer.Option(None, help="last round to run (a flag: beats loop.rounds)"),
        store: Optional[str] = STORE_OPT,
        wait: Optional[float] = typer.Option(None, "--wait", min=0, help="when another run holds the store, wait "
                                             "up to this many seconds for it (a flag: beats loop.store_lock_wait_s; "
                                             "default: fail at once naming it)")) -> None:
    """Run the self-improving loop: seed round if missing, then rounds up to loop.rounds."""
    flags = {"loop": {k: v for k, v in (("rounds", rounds), ("store_lock_wait_s", wait)) if v is not None}}
    cfg = load(config, store=store, flags=flags)
    _prefect_env()
    with guarded_run(cfg):
        from layerloop.flows.self_improve import self_improve

        rows = self_improve(cfg)
    print_table(rows)


def seed(config: Optional[Path] = CONFIG_OPT, store: Optional[str] = STORE_OPT) -> None:
    """Ingest the labeled seeds as round 0 and train the seed LoRA (adapters/round-0000)."""
    cfg = load(config, store=store)
    _prefect_env()
    with guarded_run(cfg):
        from layerloop.flows.seed import seed as seed_flow

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
         rounds: int = typer.Option(3, help="rounds after the seed round (a flag: beats loop.rounds)"),
         fresh: bool = typer.Option(False, help="delete the demo store first"),
         config: Optional[Path] = CONFIG_OPT) -> None:
    """Tiny world on CPU: synthesize seeds + pool, run seed + N rounds, print the per-round table.

    Its built-in defaults are the demo's sizes; a config file and LAYERLOOP__* env change them as for `run`,
    and --store, --inputs and --rounds (with their defaults) are flags, so they always apply.
    """
    import time

    from layerloop.tasks import demo as demo_world

    start = time.perf_counter()
    cfg = load(config, defaults=demo_world.DEMO_SIZES,
               flags=demo_world.demo_flags(store, demo_world.input_paths(inputs), rounds))
    demo_world.make_inputs(inputs)
    if fresh and Path(store).exists():
        shutil.rmtree(store)
    _prefect_env()
    from layerloop.flows.self_improve import self_improve
    from layerloop.tasks.stages.adapter import evaluate_adapter
    from layerloop.tasks.stages.handles import adapter_id, open_store

    with guarded_run(cfg):
        rows = self_improve(cfg)
    print_table(rows)
    if cfg.loop.eval_size:
        _print_heldout("identity baseline (composite as every layer)", _identity(cfg))
    last = cfg.loop.rounds
    if cfg.loop.train_final and cfg.loop.eval_size:
        _print_heldout(f"final adapter {adapter_id(last)} (trained on rounds 0..{last})",
                       evaluate_adapter(cfg, last)["metrics"])
    typer.echo(f"report: {open_store(cfg).round_uri(last)}/report.html")
    typer.echo(f"demo took {time.perf_counter() - start:.0f} s")


def _identity(cfg: "PipelineConfig") -> dict:
    from layerloop.models.evaluation import identity_baseline
    from layerloop.models.synthetic import make_split

    return identity_baseline(make_split("test", cfg.loop.eval_size, cfg.model.panel_size, cfg.loop.eval_seed))


def _print_heldout(label: str, metrics: dict) -> None:
    typer.echo(f"held-out PSNR, {label}: "
               + ", ".join(f"{k.removeprefix('psnr_')} {v:.2f} dB" for k, v in sorted(metrics.items())
                           if k.startswith("psnr_")))
