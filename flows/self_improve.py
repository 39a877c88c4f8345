"""The self-improving loop as a Prefect flow: `self_improve` runs rounds 1..N, each a `round` subflow.

Round r: make sure adapter r-1 exists (trained on training_view(r-1)) -> measure it on the validation split
and held-out data, and promote it or keep the current adapter -> (loop.control) train and measure the
matched-compute control -> generate candidates with the current adapter -> judge -> cycle (generated
composites and a slice of the unlabeled pool) -> commit round r -> report -> artifacts. The work lives in
tasks/stages/; these bodies only sequence task calls (tasks/stages/driver.py runs the same sequence without
Prefect, for benchmarks and machines without it). With loop.executor: local, units run one after another
on purpose: the round holds the strict `gpu` slot around them, and the model is shared per process. With
loop.executor: ray, the round runs on a RayTaskRunner and each stage's units run at once on Ray workers,
each unit with its own resources instead of the slot (tasks/executor.py); the commit stays single and last.
"""
from __future__ import annotations

import time

from prefect import flow, get_run_logger

from layerloop.flows.seed import seed
from layerloop.tasks import executor, publish
from layerloop.tasks.config import PipelineConfig
from layerloop.tasks.prefect_tasks import (commit_round_task, cycle_generated_task, cycle_pool_task,
                                           evaluate_adapter_task, evaluate_control_task, generate_task, judge_task,
                                           report_task, train_adapter_task, train_control_task, with_retries)
from layerloop.tasks.run_lock import store_run_lock
from layerloop.tasks.secrets import apply_secret_env
from layerloop.tasks.stages.commit import round_info
from layerloop.tasks.stages.consistency import round_pool
from layerloop.tasks.stages.handles import is_committed, next_round, open_store, stage_seconds, units


@flow(name="self-improve", log_prints=True)
def self_improve(config: PipelineConfig = PipelineConfig()) -> list[dict]:
    """Run rounds after the latest committed one up to loop.rounds; returns the selection-rate rows.

    Holds the store's run lock throughout: a second run on the store fails at once naming this one.
    """
    cfg = config
    apply_secret_env(cfg)  # credentials (loop.secret_env) before anything opens the store or starts Ray
    with store_run_lock(cfg):
        executor.ensure_guard(cfg)
        with executor.session(cfg):  # Ray (loop.executor: ray) starts once per run, not per round
            if not is_committed(cfg, 0):
                seed(cfg)
            for r in range(next_round(cfg), cfg.loop.rounds + 1):
                executor.round_flow(improve_round, cfg)(cfg, r)
            if cfg.loop.train_final:
                with executor.gpu_guard(cfg):
                    executor.call(with_retries(train_adapter_task, cfg), cfg, cfg, cfg.loop.rounds)
                    executor.call(with_retries(evaluate_adapter_task, cfg), cfg, cfg, cfg.loop.rounds)
                    control(cfg, cfg.loop.rounds)
        return publish.publish_table(cfg)


def control(cfg: PipelineConfig, adapter_round: int) -> dict | None:
    """The matched-compute control of adapter `adapter_round` (loop.control), trained and measured."""
    if not cfg.loop.control:
        return None
    if adapter_round >= 1:
        executor.call(with_retries(train_control_task, cfg), cfg, cfg, adapter_round)
    return executor.call(with_retries(evaluate_control_task, cfg), cfg, cfg, adapter_round)


@flow(name="round", flow_run_name="round-{round_:04d}", log_prints=True)
def improve_round(cfg: PipelineConfig, round_: int) -> dict:
    """One round of the recipe; a committed round is never rewritten (rerun = no-op)."""
    if is_committed(cfg, round_):
        return {"round": round_, "skipped": True}
    start = time.perf_counter()
    n_pool = len(round_pool(open_store(cfg), cfg, round_))
    gen_units = units("gen", cfg.loop.candidates_per_round, cfg.loop.batch_size)
    pool_units = units("pool", n_pool, cfg.loop.batch_size)
    progress = publish.Progress(round_, 3 * len(gen_units) + 2 * len(pool_units), executor.run_units)
    with executor.gpu_guard(cfg):
        trained = executor.call(with_retries(train_adapter_task, cfg), cfg, cfg, round_ - 1)
        measured = executor.call(with_retries(evaluate_adapter_task, cfg), cfg, cfg, round_ - 1)
        controlled = control(cfg, round_ - 1)
        generated = progress.run(with_retries(generate_task, cfg), cfg, round_, gen_units)
        judged = progress.run(with_retries(judge_task, cfg), cfg, round_, gen_units)
        cycled = progress.run(with_retries(cycle_generated_task, cfg), cfg, round_, gen_units)
        pooled = progress.run(with_retries(cycle_pool_task, cfg), cfg, round_, pool_units)
        judged_pool = progress.run(with_retries(judge_task, cfg), cfg, round_, pool_units)
    timings = stage_seconds(train=[trained], evaluate=[measured], generate=generated,
                                    judge=judged + judged_pool, cycle=cycled + pooled)
    info = round_info(cfg, round_, trained=trained, measured=measured, control=controlled, pool_used=n_pool,
                      timings=timings)
    info["execution"] = executor.summary(cfg, [trained, measured, *generated, *judged, *cycled, *pooled,
                                               *judged_pool])
    committed = with_retries(commit_round_task, cfg)(cfg, round_, info)
    reported = with_retries(report_task, cfg)(cfg, round_) if cfg.loop.report else None
    publish.publish_round(cfg, round_, reported, measured["metrics"])
    wall = time.perf_counter() - start
    get_run_logger().info("round %d committed (%s) in %.1f s", round_, committed, wall)
    timings.update(commit=committed["seconds"], report=reported["seconds"] if reported else 0.0)
    return {"round": round_, "skipped": False, "wall_s": wall, "timings": timings,
            "task_runs": 4 + len(generated + judged + cycled + pooled + judged_pool) + bool(reported)}
