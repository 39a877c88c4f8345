"""Prefect tasks made from tasks/recipe.py's stages: one task per stage, made on first use.

Retries for transient failures, nothing else; each run covers one unit (a batch), never one image. The
strict `gpu` slot is held by the flow around its GPU stages (tasks/runtime/gpu_slot.py). No tags: Prefect
3.9 asks the server for a tag concurrency slot on every tagged task run (~80 ms each here, half of a small
round's overhead). Results are small JSON-able dicts (ids, URIs, counts, seconds); nothing is persisted by
Prefect because the round store is the source of truth for resume (a rerun skips units whose output is
already there). Flows execute the stage lists through `runner.PrefectRunner(cfg)`, which applies the run's
retry policy once. The GPU stages run through `placement.on_worker`: on a Ray worker the unit's model goes
to the GPU Ray assigned it, and every result says which process ran it.
"""
from __future__ import annotations

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from ...storage.fsutil import is_disk_full, is_unreachable
from .. import recipe
from ..config import PipelineConfig
from ..recipe import Stage
from ..reporting import summary
from ..stages.handles import Unit
from .placement import on_worker

# Errors that a second try can fix: I/O hiccups, timeouts, a server or object store briefly away.
# Bad input (ValueError and its subclasses), missing files and a full disk are never retried: they need a
# person (a judge that cannot score, JudgeUnavailable, is a RuntimeError: not retried either).
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _PERMANENT_OS_ERRORS) or is_disk_full(exc):
        return False
    # botocore's "no answer" errors (an S3 store away) are no OSError: named by is_unreachable
    return isinstance(exc, (OSError, TimeoutError, ConnectionError)) or is_unreachable(exc)


def _retry_transient(task_, task_run, state) -> bool:
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we classify, never swallow: Prefect re-raises
        return is_transient(exc)
    return False


# retries here are LoopConfig's defaults; a run applies its own through with_retries
_COMMON = dict(persist_result=False, cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
               retry_condition_fn=_retry_transient)


def _task(stage: Stage) -> Task:
    """The Prefect task of one stage; its runs are named `<label>-<round>[-<unit>]` (the GPU stages run
    placed on their worker's device, the others as they are)."""
    fn = stage.fn
    if stage.over in (recipe.OVER_GEN, recipe.OVER_POOL):
        def body(cfg: PipelineConfig, round_: int, unit: Unit) -> dict:
            return on_worker(fn, cfg, round_, unit)
        run_name = stage.run_label + "-{round_}-{unit}"
    elif stage is recipe.COMMIT:
        def body(cfg: PipelineConfig, round_: int, info: dict) -> dict:
            return fn(cfg, round_, info)
        run_name = stage.run_label + "-{round_}"
    elif stage is recipe.INGEST:
        def body(cfg: PipelineConfig) -> dict:
            return fn(cfg)
        run_name = stage.run_label
    else:
        def body(cfg: PipelineConfig, round_: int) -> dict:
            return on_worker(fn, cfg, round_) if stage.gpu else fn(cfg, round_)
        run_name = stage.run_label + "-{round_}"
    body.__name__ = body.__qualname__ = stage.name.replace("-", "_")
    body.__doc__ = fn.__doc__
    return task(name=stage.name, task_run_name=run_name, **_COMMON)(body)


_TASKS: dict[Stage, Task] = {}


def task_of(stage: Stage) -> Task:
    """The one Prefect task of `stage`, made on first use (a stage added to the recipe needs nothing here)."""
    if stage not in _TASKS:
        _TASKS[stage] = _task(stage)
    return _TASKS[stage]


@task(name="selection-table", task_run_name="selection-table", **_COMMON)
def selection_table_task(cfg: PipelineConfig) -> list[dict]:
    return summary.selection_table(cfg)


def with_retries(task_: Task, cfg: PipelineConfig) -> Task:
    """`task_` with the run's retry policy (loop.task_retries, loop.task_retry_delay_s)."""
    return task_.with_options(retries=cfg.loop.task_retries, retry_delay_seconds=cfg.loop.task_retry_delay_s)
