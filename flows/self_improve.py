"""The self-improving loop as a Prefect flow: `self_improve` runs rounds 1..N, each a `round` subflow.

A round is tasks/recipe.py's ROUND (measure adapter r-1 and its control, generate, judge, cycle, commit,
report), executed as Prefect tasks by `PrefectRunner`; tasks/runtime/driver.py executes the same list
without Prefect. With loop.executor: local, units run one after another on purpose: the round holds the
strict `gpu` slot around them, and the model is shared per process. With loop.executor: ray, the round runs
on a RayTaskRunner and each stage's units run at once on Ray workers, each unit with its own resources
instead of the slot (tasks/runtime/executor.py); the commit stays single and last.
"""
from __future__ import annotations

import time

from prefect import flow, get_run_logger

from ..tasks import recipe
from ..tasks.config import PipelineConfig
from ..tasks.runtime import executor, publish
from ..tasks.runtime.run_lock import store_run_lock
from ..tasks.runtime.runner import PrefectRunner
from ..tasks.runtime.secrets import apply_secret_env
from ..tasks.stages.handles import is_committed, next_round
from .seed import seed


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
                runner = PrefectRunner(cfg)
                with runner.gpu(cfg):
                    recipe.measure(cfg, cfg.loop.rounds, runner)
        return publish.publish_table(cfg)


@flow(name="round", flow_run_name="round-{round_:04d}", log_prints=True)
def improve_round(cfg: PipelineConfig, round_: int) -> dict:
    """One round of the recipe; a committed round is never rewritten (rerun = no-op)."""
    if is_committed(cfg, round_):
        return {"round": round_, "skipped": True}
    start = time.perf_counter()
    planned = recipe.round_units(cfg, round_)
    progress = publish.Progress(round_, recipe.unit_count(planned[1]), executor.run_units)
    publish.say(f"round {round_} of {cfg.loop.rounds}: adapter {round_ - 1} is trained and measured first, "
                f"then {progress.total} units are generated, judged and cycled")
    done = recipe.run_round(cfg, round_, PrefectRunner(cfg, progress.run),
                            execution=lambda results: executor.summary(cfg, results), planned=planned)
    measured = done.of("evaluate-adapter")[0]
    publish.publish_round(cfg, round_, done.reported, measured["metrics"])
    wall = time.perf_counter() - start
    get_run_logger().info("round %d committed (%s) in %.1f s", round_, done.committed, wall)
    timings = {**done.timings(), "commit": done.committed["seconds"],
               "report": done.reported["seconds"] if done.reported else 0.0}
    return {"round": round_, "skipped": False, "wall_s": wall, "timings": timings, "task_runs": done.task_runs}
