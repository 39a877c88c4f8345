"""The whole loop without Prefect: the seed round, then rounds 1..N, executing tasks/recipe.py's stage lists
in this process, as flows/self_improve.py executes them as Prefect tasks.

For benchmarks (bench/loop.py), tests and machines where Prefect is not installed (the lent GPU machine): the
same plain stage functions in the same order, so a number measured here is a number of the pipeline. No gpu
slot, retries or artifacts: those are the flow's.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Callable

from .. import recipe
from ..config import PipelineConfig
from ..reporting import summary
from ..stages.handles import Unit, is_committed, next_round


class PlainRunner:
    """Each stage called here, one unit after another."""

    def run(self, stage: recipe.Stage, cfg: PipelineConfig, *args) -> dict:
        return stage.fn(cfg, *args)

    def run_units(self, stage: recipe.Stage, cfg: PipelineConfig, round_: int, units: list[Unit]) -> list[dict]:
        return [stage.fn(cfg, round_, unit) for unit in units]

    def gpu(self, cfg: PipelineConfig) -> nullcontext:
        return nullcontext()


def run_round(cfg: PipelineConfig, round_: int) -> dict:
    """One round (tasks/recipe.py's ROUND) in this process; returns its commit."""
    return recipe.run_round(cfg, round_, PlainRunner()).committed


def run_loop(cfg: PipelineConfig, log: Callable[[str], None] = print, runner: PlainRunner | None = None
             ) -> list[dict]:
    """Seed round (once), rounds up to loop.rounds, the final adapter; returns the selection-rate rows.
    `runner`: a PlainRunner subclass that watches each stage call (bench/loop.py counts model compute)."""
    runner = runner or PlainRunner()
    if not is_committed(cfg, 0):
        runner.run(recipe.INGEST, cfg)
    recipe.measure(cfg, 0, runner, recipe.SEED)
    for r in range(next_round(cfg), cfg.loop.rounds + 1):
        start = time.perf_counter()
        recipe.run_round(cfg, r, runner)
        log(f"round {r} committed in {time.perf_counter() - start:.0f} s")
    if cfg.loop.train_final:
        recipe.measure(cfg, cfg.loop.rounds, runner)
    return summary.selection_table(cfg)
