"""A gate in front of the loop's unit functions on Ray workers, so a test kills a worker while a unit is
certainly running on it (an event, not a polling window).

Ray runs `install` in every worker it starts (runtime_env `worker_process_setup_hook`, with the gate's folder
in GATE_ENV). While the folder holds `armed` and not `released`, a unit announces itself as
`running-<pid>` and waits; the test kills that pid, then writes `released` and every unit goes on (the
killed unit's retry included).
"""
from __future__ import annotations

import functools
import os
import signal
from pathlib import Path

from tests.waiting import wait_until

GATE_ENV = "LAYERLOOP_TEST_RAY_GATE"
UNIT_FUNCTIONS = (("generation", "generate"), ("judging", "judge"),
                  ("consistency", "cycle_generated"), ("consistency", "cycle_pool"))
WAIT_S = 300.0  # generous: a loaded 2-core machine starts Ray workers slowly


def runtime_env(gate: Path) -> dict:
    """The Ray runtime_env that installs the gate in the workers (they import this file from the repo)."""
    repo = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    return {"worker_process_setup_hook": f"{__name__}.install",
            "env_vars": {GATE_ENV: str(gate), "PYTHONPATH": path}}


def install() -> None:
    """Wrap the unit functions of this worker's stage modules (resolved by name when a task arrives)."""
    import importlib

    gate = Path(os.environ[GATE_ENV])
    for module_name, name in UNIT_FUNCTIONS:
        module = importlib.import_module(f"layerloop.tasks.stages.{module_name}")
        setattr(module, name, _gated(getattr(module, name), gate))


def _gated(fn, gate: Path):
    @functools.wraps(fn)
    def unit(*args, **kwargs):
        if (gate / "armed").exists():
            (gate / f"running-{os.getpid()}").write_text(fn.__name__)
            wait_until((gate / "released").exists, "the gate's release", timeout=WAIT_S)
        return fn(*args, **kwargs)
    return unit


class Gate:
    """The test's side: arm, wait for a running unit, kill its worker, release the rest."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def arm(self) -> None:
        (self.folder / "armed").write_text("")

    def kill_first_unit(self) -> tuple[int, str]:
        """SIGKILL the first worker that announced a running unit; returns (pid, unit function)."""
        wait_until(lambda: any(self.folder.glob("running-*")), f"a unit reached the gate in {self.folder}",
                   timeout=WAIT_S)
        running = sorted(self.folder.glob("running-*"))
        pid = int(running[0].name.split("-", 1)[1])
        os.kill(pid, signal.SIGKILL)
        return pid, running[0].read_text()

    def release(self) -> None:
        (self.folder / "released").write_text("")
