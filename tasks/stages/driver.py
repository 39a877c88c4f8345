"""The whole loop without Prefect: the seed round, then rounds 1..N, in the very order of flows/self_improve.py.

For benchmarks (bench/loop.py) and machines where Prefect is not installed (the lent GPU machine): the same
plain stage functions the Prefect tasks wrap, called in the same sequence, so a number measured here is a
number of the pipeline. No gpu slot, retries or artifacts: those are the flow's.
"""
from __future__ import annotations

import time
from typing import Callable

from layerloop.tasks.config import PipelineConfig
from layerloop.tasks.stages import adapter, commit, consistency, generation, ingest, judging, summary
from layerloop.tasks.stages.handles import is_committed, next_round, open_store, stage_seconds, units


def run_loop(cfg: PipelineConfig, log: Callable[[str], None] = print) -> list[dict]:
    """Seed round (once), rounds up to loop.rounds, the final adapter; returns the selection-rate rows."""
    if not is_committed(cfg, 0):
        ingest.ingest_seeds(cfg)
    adapter.train_adapter(cfg, 0)
    adapter.evaluate_adapter(cfg, 0)
    for r in range(next_round(cfg), cfg.loop.rounds + 1):
        start = time.perf_counter()
        run_round(cfg, r)
        log(f"round {r} committed in {time.perf_counter() - start:.0f} s")
    if cfg.loop.train_final:
        adapter.train_adapter(cfg, cfg.loop.rounds)
        adapter.evaluate_adapter(cfg, cfg.loop.rounds)
        run_control(cfg, cfg.loop.rounds)
    return summary.selection_table(cfg)


def run_control(cfg: PipelineConfig, adapter_round: int) -> dict | None:
    if not cfg.loop.control:
        return None
    if adapter_round >= 1:
        adapter.train_control(cfg, adapter_round)
    return adapter.evaluate_control(cfg, adapter_round)


def run_round(cfg: PipelineConfig, round_: int) -> dict:
    """One round: the flow's improve_round, task for task."""
    n_pool = len(consistency.round_pool(open_store(cfg), cfg, round_))
    gen_units = units("gen", cfg.loop.candidates_per_round, cfg.loop.batch_size)
    pool_units = units("pool", n_pool, cfg.loop.batch_size)
    trained = adapter.train_adapter(cfg, round_ - 1)
    measured = adapter.evaluate_adapter(cfg, round_ - 1)
    controlled = run_control(cfg, round_ - 1)
    generated = [generation.generate(cfg, round_, u) for u in gen_units]
    judged = [judging.judge(cfg, round_, u) for u in gen_units]
    cycled = [consistency.cycle_generated(cfg, round_, u) for u in gen_units]
    pooled = [consistency.cycle_pool(cfg, round_, u) for u in pool_units]
    judged += [judging.judge(cfg, round_, u) for u in pool_units]
    timings = stage_seconds(train=[trained], evaluate=[measured], generate=generated, judge=judged,
                            cycle=cycled + pooled)
    info = commit.round_info(cfg, round_, trained=trained, measured=measured, control=controlled,
                             pool_used=n_pool, timings=timings)
    committed = commit.commit_round(cfg, round_, info)
    if cfg.loop.report:
        summary.report(cfg, round_)
    return committed
