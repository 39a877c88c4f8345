"""One way for a test to wait on another process: poll a condition with a generous deadline and fail with
what that process said, as soon as it has ended without getting there (no fixed sleeps, no narrow windows)."""
from __future__ import annotations

import subprocess
import time
from typing import Callable


def wait_until(ready: Callable[[], bool], what: str, *, proc: subprocess.Popen | None = None,
               output: Callable[[], str] = str, timeout: float = 240.0, poll_s: float = 0.05) -> None:
    """Return once `ready()` holds; AssertionError naming `what` (and `output()`) when `proc` ended first or
    `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (rc={proc.returncode}) before {what}:\n{output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s:\n{output()}")
        time.sleep(poll_s)
