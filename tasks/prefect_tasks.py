"""Thin Prefect @task wrappers over tasks/stages.py: retries for transient failures, the GPU slot.

Each wrapper runs one stage on one unit (a batch), never one image. The strict `gpu` slot is held by
the flow around its GPU stages (see gpu_slot). No tags: Prefect 3.9 asks the server for a tag concurrency
slot on every tagged task run (~80 ms each here, half of a small round's overhead). Results are
small JSON-able dicts (ids, URIs, counts, seconds); nothing is persisted by Prefect because the round
store is the source of truth for resume (a rerun skips units whose output is already there).
"""
from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace
from typing import Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE

from layerloop.tasks import stages
from layerloop.tasks.config import PipelineConfig

# Errors that a second try can fix: I/O hiccups, timeouts, a server or object store briefly away.
# Bad input (ValueError and its subclasses) and missing files are never retried: they need a person.
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    return isinstance(exc, (OSError, TimeoutError, ConnectionError))


def _retry_transient(task_, task_run, state) -> bool:
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we classify, never swallow: Prefect re-raises
        return is_transient(exc)
    return False


class GpuSlotBusy(RuntimeError):
    """The gpu slot stayed taken longer than loop.gpu_wait_s."""


@contextmanager
def gpu_slot(cfg: PipelineConfig) -> Iterator[None]:
    """Hold the strict global concurrency slot around GPU work, so two flows never share one card.

    Flows take it once around a round's GPU stages, not per task: inside a task run, Prefect 3.9 frees
    a slot asynchronously, so the next task's acquire waited 2-6 s here (vs ~30 ms from the flow body).
    """
    from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError
    from prefect.concurrency.sync import concurrency

    name = cfg.loop.gpu_slot
    try:
        with concurrency(name, occupy=1, strict=True, lease_duration=cfg.loop.gpu_lease_s,
                         timeout_seconds=cfg.loop.gpu_wait_s):
            yield
    except AcquireConcurrencySlotTimeoutError:  # the body takes no slot, so this is the wait above
        raise GpuSlotBusy(
            f"waited {cfg.loop.gpu_wait_s:.0f} s for the global concurrency slot {name!r}: another run is using the "
            f"GPU, or a crashed run still holds it (ephemeral servers keep leases in memory, so a dead one never "
            f"frees its slot). Inspect: `prefect gcl inspect {name}`; reset when nothing runs: "
            f"`prefect gcl update {name} --active-slots 0`") from None


_COMMON = dict(persist_result=False, cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
               retry_condition_fn=_retry_transient)


@task(name="ingest-seeds", task_run_name="ingest-seeds", **_COMMON)
def ingest_seeds_task(cfg: PipelineConfig) -> dict:
    return stages.ingest_seeds(cfg)


@task(name="train-adapter", task_run_name="train-adapter-{round_}", **_COMMON)
def train_adapter_task(cfg: PipelineConfig, round_: int) -> dict:
    return stages.train_adapter(cfg, round_)


@task(name="evaluate-adapter", task_run_name="evaluate-adapter-{round_}", **_COMMON)
def evaluate_task(cfg: PipelineConfig, round_: int) -> dict:
    return stages.evaluate_adapter(cfg, round_)


@task(name="generate", task_run_name="generate-{round_}-{unit}", **_COMMON)
def generate_task(cfg: PipelineConfig, round_: int, unit: str) -> dict:
    return stages.generate(cfg, round_, unit)


@task(name="judge", task_run_name="judge-{round_}-{unit}", **_COMMON)
def judge_task(cfg: PipelineConfig, round_: int, unit: str) -> dict:
    return stages.judge(cfg, round_, unit)


@task(name="cycle-generated", task_run_name="cycle-{round_}-{unit}", **_COMMON)
def cycle_generated_task(cfg: PipelineConfig, round_: int, unit: str) -> dict:
    return stages.cycle_generated(cfg, round_, unit)


@task(name="cycle-pool", task_run_name="cycle-{round_}-{unit}", **_COMMON)
def cycle_pool_task(cfg: PipelineConfig, round_: int, unit: str) -> dict:
    return stages.cycle_pool(cfg, round_, unit)


@task(name="commit-round", task_run_name="commit-{round_}", **_COMMON)
def commit_task(cfg: PipelineConfig, round_: int, info: dict) -> dict:
    return stages.commit(cfg, round_, info)


@task(name="report", task_run_name="report-{round_}", **_COMMON)
def report_task(cfg: PipelineConfig, round_: int) -> dict:
    return stages.report(cfg, round_)


@task(name="selection-table", task_run_name="selection-table", **_COMMON)
def selection_table_task(cfg: PipelineConfig) -> list[dict]:
    return stages.selection_table(cfg)


TASKS = {"ingest_seeds": ingest_seeds_task, "train": train_adapter_task, "evaluate": evaluate_task,
         "generate": generate_task, "judge": judge_task, "cycle_generated": cycle_generated_task,
         "cycle_pool": cycle_pool_task, "commit": commit_task, "report": report_task,
         "selection_table": selection_table_task}


def configured(cfg: PipelineConfig) -> SimpleNamespace:
    """The tasks with the run's retry policy (loop.task_retries / task_retry_delay_s), by short name."""
    opts = dict(retries=cfg.loop.task_retries, retry_delay_seconds=cfg.loop.task_retry_delay_s)
    return SimpleNamespace(**{name: t.with_options(**opts) for name, t in TASKS.items()})
