"""The Runner of the flows: tasks/recipe.py's stages executed as Prefect task runs (tasks/runtime/prefect_tasks.py),
here or on Ray workers (tasks/runtime/executor.py). The plain one, without Prefect, is tasks/runtime/driver.py's."""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable

from prefect import Task

from ..config import PipelineConfig
from ..recipe import Stage
from ..stages.handles import Unit
from . import executor
from .prefect_tasks import task_of, with_retries


class PrefectRunner:
    """Executes stages as Prefect task runs with one run's retry policy: GPU stages through the executor
    (here in order, or on a Ray worker), unit stages through `run_units` (a progress bar's, when given)."""

    def __init__(self, cfg: PipelineConfig, run_units: Callable | None = None):
        self.cfg, self.tasks = cfg, {}
        self.run_units_fn = run_units or executor.run_units

    def task(self, stage: Stage) -> Task:
        if stage not in self.tasks:
            self.tasks[stage] = with_retries(task_of(stage), self.cfg)
        return self.tasks[stage]

    def run(self, stage: Stage, cfg: PipelineConfig, *args) -> dict:
        if stage.gpu:
            return executor.call(self.task(stage), cfg, cfg, *args)
        return self.task(stage)(cfg, *args)

    def run_units(self, stage: Stage, cfg: PipelineConfig, round_: int, units: list[Unit]) -> list[dict]:
        return self.run_units_fn(self.task(stage), cfg, round_, units)

    def gpu(self, cfg: PipelineConfig) -> AbstractContextManager:
        return executor.gpu_guard(cfg)
