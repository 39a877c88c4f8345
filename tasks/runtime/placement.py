"""The worker's side of a unit (tasks/runtime/executor.py is the driver's): which process runs it, and on which GPU.

Every model stage's task calls `on_worker(stage, cfg, ...)`. In this process (loop.executor: local) it
changes nothing. In a Ray worker that holds a GPU and sees every GPU of its node (the executor sets Ray's
RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES for reused GPU workers) it sets model.device to that GPU, so
the model lands on the GPU Ray assigned this unit, also when Ray hands a reused worker another GPU than
its last one. The result carries where it ran (host, pid, GPU ids) and how many models that process has
built so far. Ray is never imported here: only looked up when the process already runs it.
"""
from __future__ import annotations

import os
import socket
import sys
from typing import Any, Callable

from ..config import PipelineConfig
from ..stages.handles import builds

NOSET_CUDA = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"


def torch_index(gpu_id: Any, visible: str | None) -> int:
    """Torch's index of the GPU Ray calls `gpu_id`: its position in the node's CUDA_VISIBLE_DEVICES when
    one is set (Ray's ids are then those entries), else the id itself."""
    ids = [v.strip() for v in (visible or "").split(",") if v.strip()]
    if ids:
        if str(gpu_id) not in ids:
            raise ValueError(f"Ray assigned GPU {gpu_id}, which is not in CUDA_VISIBLE_DEVICES={visible}")
        return ids.index(str(gpu_id))
    return int(gpu_id)


def _in_ray_worker() -> Any:
    """The ray module when this process is a Ray worker running a task, else None (never imports ray)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    return ray


def placed(cfg: PipelineConfig) -> tuple[PipelineConfig, dict]:
    """(cfg for this process, where it runs). In a Ray worker that holds a GPU and sees every GPU of its
    node (NOSET), model.device becomes that GPU, so the model lands on the GPU Ray assigned this unit."""
    where: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname()}
    ray = _in_ray_worker()
    if ray is None:
        return cfg, where
    gpu_ids = ray.get_gpu_ids()
    where["gpu_ids"] = [str(g) for g in gpu_ids]
    if not gpu_ids or os.environ.get(NOSET_CUDA) != "1" or cfg.model.device not in ("auto", "cuda"):
        return cfg, where
    import torch

    if not torch.cuda.is_available():  # logical GPUs of a CPU test cluster
        return cfg, where
    device = f"cuda:{torch_index(gpu_ids[0], os.environ.get('CUDA_VISIBLE_DEVICES'))}"
    where["device"] = device
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"device": device})}), where


def on_worker(stage: Callable[..., dict], cfg: PipelineConfig, *args: Any) -> dict:
    """Run a stage function in this task's process, placed on its GPU; its result says which process ran it
    and how many models that process has built so far (a scale-out run checks: once per worker)."""
    cfg, where = placed(cfg)
    out = stage(cfg, *args)
    return {**out, "worker": {**where, **builds()}}
