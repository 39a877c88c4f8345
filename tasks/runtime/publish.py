"""What a round shows in Prefect: a progress artifact, the selection-rate table, a markdown summary and a
link to the HTML report. Called from flow bodies (needs a flow run context)."""
from __future__ import annotations

import os
import time
from typing import Callable

from ..config import PipelineConfig
from ..stages.handles import Unit, adapter_id

TABLE_KEY = "selection-rate"


class Progress:
    """A progress artifact per round, advanced after every finished unit of generate/judge/cycle.

    `run_units` runs a stage's units (tasks/executor.run_units: in order, or fanned out on Ray). Passed in,
    not imported: the executor imports the gpu guard, which imports this module.
    """

    every_s = 10.0  # a line at most this often (and after the last unit): logs see where a round is

    def __init__(self, round_: int, total_units: int, run_units: Callable, clock: Callable[[], float] = time.monotonic):
        from prefect.artifacts import create_progress_artifact

        self.round, self.total, self.done = round_, max(1, total_units), 0
        self.run_units, self.clock, self.stage = run_units, clock, ""
        self._t0 = self._last = clock()
        self.id = create_progress_artifact(progress=0.0, key=f"round-{round_:04d}-progress",
                                           description=f"round {round_}: generate, judge and cycle units")

    def run(self, task_fn: Callable, cfg: PipelineConfig, round_: int, units: list[Unit]) -> list[dict]:
        """Run the task once per unit and tick the progress artifact as units finish."""
        self.stage = str(getattr(task_fn, "name", getattr(task_fn, "__name__", "units")))
        if self.done == 0:  # the round trains its adapter and control first: their minutes are not units' pace
            self._t0 = self._last = self.clock()
        return self.run_units(task_fn, cfg, round_, units, on_done=self.tick)

    def tick(self) -> None:
        """One more unit finished: the artifact moves, and a line says so (throttled to every_s)."""
        from prefect.artifacts import update_progress_artifact

        self.done += 1
        update_progress_artifact(self.id, progress=100.0 * self.done / self.total)
        now = self.clock()
        if now - self._last >= self.every_s or self.done == self.total:
            self._last = now
            say(self.line(now - self._t0))

    def line(self, elapsed: float) -> str:
        """`round 2: 7/12 units (58 %), last cycle-pool, 95 s, ETA 68 s`."""
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        return (f"round {self.round}: {self.done}/{self.total} units ({100 * self.done // self.total} %), "
                f"last {self.stage}, {elapsed:.0f} s, ETA {eta:.0f} s")


def say(message: str) -> None:
    """Where the run is: an INFO line in the run's log, and on stderr when the console hides INFO lines."""
    import sys

    logged = False
    if "prefect" in sys.modules:
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            get_run_logger().info(message)
            logged = True
        except MissingContextError:
            pass
    if not logged or os.environ.get("PREFECT_LOGGING_LEVEL", "").upper() in ("WARNING", "ERROR", "CRITICAL"):
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


def notice(message: str) -> None:
    """Tell the person running the flow now: a warning in the run's log (the UI keeps it), and on stderr
    too when the console would not show it (outside a run, or the CLI's quiet Prefect logging)."""
    import os
    import sys

    logged = False
    if "prefect" in sys.modules:  # else no run can be going on: don't pay Prefect's import to print a line
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            get_run_logger().warning(message)
            logged = True
        except MissingContextError:
            pass
    if not logged or os.environ.get("PREFECT_LOGGING_LEVEL", "").upper() in ("ERROR", "CRITICAL"):
        # not print(): a flow with log_prints=True turns print into an INFO log line the console hides
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


def _link(uri: str) -> str:
    return uri if "://" in uri else "file://" + os.path.abspath(uri)


def publish_round(cfg: PipelineConfig, round_: int, reported: dict | None, heldout: dict) -> None:
    """Markdown summary and report link of a committed round, plus the refreshed selection-rate table."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    rows = publish_table(cfg)
    row = next(r for r in rows if r["round"] == round_)
    lines = [f"# layerloop round {round_}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in row.items() if k != "round"]
    lines += [f"| held-out {k} (adapter {adapter_id(max(0, round_ - 1))}) | {v:.3f} |"
              for k, v in heldout.items() if k.startswith("psnr_")]
    if reported:
        lines += ["", f"[HTML report]({_link(reported['paths']['html'])})"]
        create_link_artifact(link=_link(reported["paths"]["html"]), link_text=f"round {round_} report",
                             key=f"round-{round_:04d}-report", description="HTML report of the round")
    create_markdown_artifact(markdown="\n".join(lines), key=f"round-{round_:04d}-summary",
                             description=f"round {round_} summary")


def publish_table(cfg: PipelineConfig) -> list[dict]:
    """The `selection-rate` table artifact over every committed round; returns its rows."""
    from prefect.artifacts import create_table_artifact

    from .prefect_tasks import selection_table_task, with_retries

    rows = with_retries(selection_table_task, cfg)(cfg)
    create_table_artifact(table=rows, key=TABLE_KEY, description="selection rate and held-out PSNR per round")
    return rows
