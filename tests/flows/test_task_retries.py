"""A stage's Prefect task retries what may pass (a dropped connection, a timeout) and not what cannot (a full
disk, a missing file, bad input): the stage's real task options (tasks/runtime/prefect_tasks.py) on a real
ephemeral Prefect API, with the run's retry policy applied as flows apply it (with_retries)."""
from __future__ import annotations

import errno

import pytest

CALLS: dict[str, int] = {}


def _flaky(kind: str):
    def stage_fn(cfg, round_: int) -> dict:
        CALLS[kind] = CALLS.get(kind, 0) + 1
        if kind == "connection" and CALLS[kind] == 1:
            raise ConnectionResetError("the object store dropped the connection")
        if kind == "timeout" and CALLS[kind] == 1:
            raise TimeoutError("read timed out")
        if kind == "disk":
            raise OSError(errno.ENOSPC, "No space left on device")
        if kind == "missing":
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "seeds/x.png")
        if kind == "bad input":
            raise ValueError("loop.seeds_path is not set")
        return {"calls": CALLS[kind]}
    return stage_fn


@pytest.mark.parametrize("kind, calls, passes", [("connection", 2, True), ("timeout", 2, True), ("disk", 1, False),
                                                 ("missing", 1, False), ("bad input", 1, False)])
def test_transient_failures_are_retried_and_permanent_ones_are_not(prefect_harness, tiny_cfg, kind, calls, passes):
    from prefect import flow

    from layerloop.tasks.recipe import OVER_ROUND, Stage
    from layerloop.tasks.runtime.prefect_tasks import task_of, with_retries

    cfg = tiny_cfg.model_copy(update={"loop": tiny_cfg.loop.model_copy(update={"task_retries": 2,
                                                                                "task_retry_delay_s": 0})})
    stage = Stage(f"flaky-{kind.replace(' ', '-')}", _flaky(kind), OVER_ROUND, gpu=False)

    @flow
    def one_stage():
        return with_retries(task_of(stage), cfg)(cfg, 1)

    CALLS.pop(kind, None)
    if passes:
        assert one_stage() == {"calls": calls}
    else:
        with pytest.raises((OSError, ValueError)):
            one_stage()
    assert CALLS[kind] == calls
