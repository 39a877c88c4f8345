"""Thin Prefect @task wrappers over the plain stage functions (tasks/stages/): retries for transient failures, nothing else.

Each wrapper runs one stage on one unit (a batch), never one image. The strict `gpu` slot is held by
the flow around its GPU stages (tasks/gpu_slot.py). No tags: Prefect 3.9 asks the server for a tag
concurrency slot on every tagged task run (~80 ms each here, half of a small round's overhead). Results
are small JSON-able dicts (ids, URIs, counts, seconds); nothing is persisted by Prefect because the round
store is the source of truth for resume (a rerun skips units whose output is already there).
Flows call each task by its name; `with_retries(task, cfg)` gives it the run's retry policy. The model
stages run through `executor.on_worker`: on a Ray worker the unit's model goes to the GPU Ray assigned it,
and every result says which process ran it (tasks/placement.py).
"""
from __future__ import annotations

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from layerloop.storage.fsutil import is_disk_full
from layerloop.tasks.config import PipelineConfig
from layerloop.tasks.placement import on_worker
from layerloop.tasks.stages import adapter, commit, consistency, generation, ingest, judging, summary
from layerloop.tasks.stages.handles import Unit

# Errors that a second try can fix: I/O hiccups, timeouts, a server or object store briefly away.
# Bad input (ValueError and its subclasses), missing files and a full disk are never retried: they need a
# person (a judge that cannot score, JudgeUnavailable, is a RuntimeError: not retried either).
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _PERMANENT_OS_ERRORS) or is_disk_full(exc):
        return False
    return isinstance(exc, (OSError, TimeoutError, ConnectionError))


def _retry_transient(task_, task_run, state) -> bool:
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we classify, never swallow: Prefect re-raises
        return is_transient(exc)
    return False


# retries here are LoopConfig's defaults; a run applies its own through with_retries
_COMMON = dict(persist_result=False, cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
               retry_condition_fn=_retry_transient)


@task(name="ingest-seeds", task_run_name="ingest-seeds", **_COMMON)
def ingest_seeds_task(cfg: PipelineConfig) -> dict:
    return ingest.ingest_seeds(cfg)


@task(name="train-adapter", task_run_name="train-adapter-{round_}", **_COMMON)
def train_adapter_task(cfg: PipelineConfig, round_: int) -> dict:
    return on_worker(adapter.train_adapter, cfg, round_)


@task(name="evaluate-adapter", task_run_name="evaluate-adapter-{round_}", **_COMMON)
def evaluate_adapter_task(cfg: PipelineConfig, round_: int) -> dict:
    return on_worker(adapter.evaluate_adapter, cfg, round_)


@task(name="train-control", task_run_name="train-control-{round_}", **_COMMON)
def train_control_task(cfg: PipelineConfig, round_: int) -> dict:
    return on_worker(adapter.train_control, cfg, round_)


@task(name="evaluate-control", task_run_name="evaluate-control-{round_}", **_COMMON)
def evaluate_control_task(cfg: PipelineConfig, round_: int) -> dict:
    return on_worker(adapter.evaluate_control, cfg, round_)


@task(name="generate", task_run_name="generate-{round_}-{unit}", **_COMMON)
def generate_task(cfg: PipelineConfig, round_: int, unit: Unit) -> dict:
    return on_worker(generation.generate, cfg, round_, unit)


@task(name="judge", task_run_name="judge-{round_}-{unit}", **_COMMON)
def judge_task(cfg: PipelineConfig, round_: int, unit: Unit) -> dict:
    return on_worker(judging.judge, cfg, round_, unit)


@task(name="cycle-generated", task_run_name="cycle-{round_}-{unit}", **_COMMON)
def cycle_generated_task(cfg: PipelineConfig, round_: int, unit: Unit) -> dict:
    return on_worker(consistency.cycle_generated, cfg, round_, unit)


@task(name="cycle-pool", task_run_name="cycle-{round_}-{unit}", **_COMMON)
def cycle_pool_task(cfg: PipelineConfig, round_: int, unit: Unit) -> dict:
    return on_worker(consistency.cycle_pool, cfg, round_, unit)


@task(name="commit-round", task_run_name="commit-{round_}", **_COMMON)
def commit_round_task(cfg: PipelineConfig, round_: int, info: dict) -> dict:
    return commit.commit_round(cfg, round_, info)


@task(name="report", task_run_name="report-{round_}", **_COMMON)
def report_task(cfg: PipelineConfig, round_: int) -> dict:
    return summary.report(cfg, round_)


@task(name="selection-table", task_run_name="selection-table", **_COMMON)
def selection_table_task(cfg: PipelineConfig) -> list[dict]:
    return summary.selection_table(cfg)


def with_retries(task_: Task, cfg: PipelineConfig) -> Task:
    """`task_` with the run's retry policy (loop.task_retries, loop.task_retry_delay_s); call it by name:
    `with_retries(train_adapter_task, cfg)(cfg, round_)`."""
    return task_.with_options(retries=cfg.loop.task_retries, retry_delay_seconds=cfg.loop.task_retry_delay_s)
