"""Child process for the gpu guard tests (run as a script, never imported by pytest).

  guard_proc.py hold LOCKFILE            take the gpu host lock, print READY, hold it until the parent kills
                                         it or closes our stdin (no clock: a slow test cannot outlast it)
  guard_proc.py leak-then-take CONFIG    under the ephemeral API: take a gpu slot and drop its lease id (a
                                         leak no record knows), then enter gpu_slot: print HELD
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from layerloop.storage.locks import HostLock  # noqa: E402


def hold(path: str) -> None:
    lock = HostLock(path)
    if not lock.try_acquire()[0]:
        raise SystemExit("the lock was taken")
    print("READY", flush=True)
    sys.stdin.read()


def leak_then_take(config: str) -> None:
    from prefect.client.orchestration import get_client

    from layerloop.tasks.config import PipelineConfig
    from layerloop.tasks.runtime.gpu_slot import ensure_gpu_slot, gpu_slot

    cfg = PipelineConfig.model_validate(json.loads(config))
    ensure_gpu_slot(cfg)
    with get_client(sync_client=True) as client:
        client.increment_concurrency_slots_with_lease(names=[cfg.loop.gpu_slot], slots=1, mode="concurrency",
                                                      lease_duration=60)
        print("LEAKED", client.read_global_concurrency_limit_by_name(cfg.loop.gpu_slot).active_slots, flush=True)
    with gpu_slot(cfg):
        print("HELD", flush=True)


if __name__ == "__main__":
    {"hold": hold, "leak-then-take": leak_then_take}[sys.argv[1]](*sys.argv[2:])
