"""The global `gpu` concurrency slot: make sure the limit exists, and hold it around a flow's GPU stages.

Two flows never share one card by accident: GPU work runs inside `gpu_slot(cfg)`, a strict Prefect global
concurrency limit of 1 (named by loop.gpu_slot). Flows take it once around a round's GPU stages, not per
task: inside a task run, Prefect 3.9 frees a slot asynchronously, so the next task's acquire waited
2-6 s here (vs ~30 ms from the flow body). Called from flow bodies; prefect is imported inside.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from layerloop.tasks.config import ConfigError, PipelineConfig


class GpuSlotBusy(RuntimeError):
    """The gpu slot stayed taken longer than loop.gpu_wait_s."""


def ensure_gpu_slot(cfg: PipelineConfig) -> None:
    """The strict `gpu` limit must exist before a GPU stage asks for it: create it, or say how to."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(cfg.loop.gpu_slot)
            return
        except ObjectNotFound:
            if not cfg.loop.create_gpu_slot:
                raise ConfigError(
                    f"global concurrency limit {cfg.loop.gpu_slot!r} does not exist on this Prefect server: run "
                    f"`prefect gcl create {cfg.loop.gpu_slot} --limit 1` or set loop.create_gpu_slot: true"
                ) from None
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=cfg.loop.gpu_slot, limit=1))


@contextmanager
def gpu_slot(cfg: PipelineConfig) -> Iterator[None]:
    """Hold the strict global concurrency slot around GPU work (see the module docstring)."""
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
