"""Processes of a local Ray cluster this test process started: find them by their parentage and title
(/proc, Linux) and stop whatever outlives ray.shutdown()."""
from __future__ import annotations

import os
import signal
from pathlib import Path


def _ppid_and_title(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1]), title


def descendants(root: int) -> dict[int, str]:
    """pid -> command line of every live process below `root`."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _ppid_and_title(int(entry.name))) is not None:
            table[int(entry.name)] = info
    out: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, title) in table.items():
            if ppid == parent and pid not in out:
                out[pid] = title
                frontier.append(pid)
    return out


def ray_processes(before: set[int]) -> set[int]:
    """This process's descendants that Ray started: new since `before` (the descendants before ray.init)
    and running Ray's code (raylet, gcs_server, ray::workers, its dashboard and monitors)."""
    return {pid for pid, title in descendants(os.getpid()).items()
            if pid not in before and ("ray::" in title or "/ray/" in title)}


def kill_leftovers(pids: set[int]) -> list[int]:
    """SIGKILL those of `pids` still alive (processes this test started); returns the ones killed."""
    killed = []
    for pid in sorted(pids):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return killed
