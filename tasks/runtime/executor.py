"""Where a round's work runs: in this process, one unit after another (loop.executor: local), or fanned out
over a Ray cluster through prefect-ray's RayTaskRunner (loop.executor: ray).

local: the flow holds the strict `gpu` slot around its GPU stages (tasks/runtime/gpu_slot.py) and calls each task
in order; the model is built once per process (tasks/stages/handles.py).

ray: `session(cfg)` joins the cluster at loop.ray.address (or starts a local Ray) once per flow run; the
round subflow runs on a RayTaskRunner that finds it; every unit of a stage is submitted at once with
`prefect_ray.context.remote_options`: loop.ray.num_cpus / num_gpus per unit (Ray's resources give each
unit its own GPU, so the `gpu` slot is not taken: it would serialize the cluster), max_retries (a unit
whose worker died runs again; its files make that safe), and max_calls=0 for GPU units (Ray's default 1
starts a new process, so a new model, per GPU task). A reused worker may be handed another GPU than its
last one (measured: it happens between stages), so GPU workers run with Ray's
RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES and each unit puts its model on the GPU Ray assigned it
(tasks/runtime/placement.py, the worker's side); the per-process model cache is keyed by the device, so a
worker moved to another GPU rebuilds there instead of computing on a GPU it does not hold. Training and
evaluation are submitted the same way (one GPU task each). Commit, report and artifacts stay in the flow's process: the commit
stays single and last. Ray and prefect-ray are imported only here, and only under loop.executor: ray.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Callable, ContextManager, Iterator

from ..config import ConfigError, PipelineConfig
from .gpu_slot import ensure_gpu_slot, gpu_slot
from .placement import NOSET_CUDA


def uses_ray(cfg: PipelineConfig) -> bool:
    return cfg.loop.executor == "ray"


def ensure_guard(cfg: PipelineConfig) -> None:
    """The local executor's strict gpu slot must exist; under Ray there is none to make."""
    if not uses_ray(cfg):
        ensure_gpu_slot(cfg)


def gpu_guard(cfg: PipelineConfig) -> ContextManager:
    """Around a flow's GPU stages: the strict gpu slot (local), or nothing (Ray schedules the GPUs)."""
    if uses_ray(cfg):
        return nullcontext()

    return gpu_slot(cfg)


def _ray():
    try:
        import prefect_ray  # noqa: F401 - checked here so the error names the extra, not a deep import
        import ray
    except ImportError:
        raise ConfigError("loop.executor is ray but Ray is not installed here: pip install 'layerloop[ray]' "
                          "(or set loop.executor: local)") from None
    return ray


def _api_url_for_workers() -> str | None:
    """The Prefect API the driver uses when it is an ephemeral one (no PREFECT_API_URL): workers on this
    machine report there instead of each starting their own. A set PREFECT_API_URL reaches them anyway."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


def init_kwargs(cfg: PipelineConfig) -> dict[str, Any]:
    """What `ray.init` gets for this run (the address apart)."""
    r = cfg.loop.ray
    env = dict((r.runtime_env.get("env_vars") or {}))
    if r.num_gpus > 0 and r.reuse_workers:
        env[NOSET_CUDA] = "1"  # units bind their model to their GPU themselves (see the module docstring)
    api = _api_url_for_workers()
    if api:
        env["PREFECT_API_URL"] = api
    kwargs: dict[str, Any] = {"namespace": "layerloop", "runtime_env": {**r.runtime_env, "env_vars": env}}
    if r.address is None:
        kwargs.update(num_cpus=r.local_cpus, num_gpus=r.local_gpus, include_dashboard=False)
    return kwargs


@contextmanager
def session(cfg: PipelineConfig) -> Iterator[None]:
    """Ray joined or started once per flow run (not per round); stops only the Ray this call started. A Ray
    already up in this process (a test's or a bench's) is used as it is. Credentials of loop.secret_env
    must be in the environment before (tasks/runtime/secrets.py): a local Ray's workers inherit it here."""
    if not uses_ray(cfg):
        yield
        return
    ray = _ray()
    if ray.is_initialized():
        yield
        return
    ray.init(address=cfg.loop.ray.address, **init_kwargs(cfg))
    try:
        yield
    finally:
        ray.shutdown()


def round_flow(flow_: Any, cfg: PipelineConfig) -> Any:
    """The round subflow as this run executes it: itself (local), or on a RayTaskRunner (ray)."""
    if not uses_ray(cfg):
        return flow_
    _ray()
    from prefect_ray import RayTaskRunner

    return flow_.with_options(task_runner=RayTaskRunner(address=cfg.loop.ray.address, init_kwargs=init_kwargs(cfg)))


def remote_options(cfg: PipelineConfig) -> dict[str, Any]:
    """The Ray options of one unit: its resources, its retries after a worker died, worker reuse."""
    r = cfg.loop.ray
    opts: dict[str, Any] = {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus, "max_retries": r.max_retries}
    if r.num_gpus > 0 and r.reuse_workers:
        opts["max_calls"] = 0  # unlimited: Ray's default for GPU tasks is 1 process per task
    return opts


def run_units(task_: Any, cfg: PipelineConfig, round_: int, units: list, on_done: Callable[[], None] | None = None
              ) -> list[dict]:
    """One task run per unit: in order here (local), or all at once on the cluster (ray). Results come
    back in unit order; under Ray every unit finishes (and keeps its files) before a failure is raised."""
    tick = on_done or (lambda: None)
    if not uses_ray(cfg):
        results = []
        for unit in units:
            results.append(task_(cfg, round_, unit))
            tick()
        return results
    from prefect_ray.context import remote_options as ray_options

    with ray_options(**remote_options(cfg)):
        futures = [task_.submit(cfg, round_, unit) for unit in units]
    for future in futures:
        future.wait()
        tick()
    return [future.result() for future in futures]


def call(task_: Any, cfg: PipelineConfig, *args: Any) -> Any:
    """One task run: here (local), or on a worker with a unit's resources (ray), e.g. training. Under Ray
    it goes through the flow's RayTaskRunner, or, in a flow on another runner (seed, the final adapter),
    through one pointed at the session's cluster."""
    if not uses_ray(cfg):
        return task_(*args)
    _ray()
    from prefect.context import FlowRunContext
    from prefect.utilities.callables import get_call_parameters
    from prefect_ray import RayTaskRunner
    from prefect_ray.context import remote_options as ray_options

    ctx = FlowRunContext.get()
    with ray_options(**remote_options(cfg)):
        if ctx is not None and isinstance(ctx.task_runner, RayTaskRunner):
            return task_.submit(*args).result()
        with RayTaskRunner(address=cfg.loop.ray.address, init_kwargs=init_kwargs(cfg)) as runner:
            return runner.submit(task_, get_call_parameters(task_.fn, args, {})).result()


def summary(cfg: PipelineConfig, results: list[dict]) -> dict:
    """Which processes ran a round's tasks (round.json `execution`): per process the units it ran, the
    GPUs Ray gave it and the models it had built by its last one (1 backbone each when reuse works)."""
    procs: dict[str, dict] = {}
    for result in results:
        w = (result or {}).get("worker")
        if not w:
            continue
        p = procs.setdefault(f"{w['host']}:{w['pid']}", {"units": 0, "gpu_ids": set(), "backbones": 0, "judges": 0})
        p["units"] += 1
        p["gpu_ids"].update(w.get("gpu_ids", []))
        p["backbones"] = max(p["backbones"], w.get("backbones", 0))
        p["judges"] = max(p["judges"], w.get("judges", 0))
    for p in procs.values():
        p["gpu_ids"] = sorted(p["gpu_ids"])
    return {"executor": cfg.loop.executor, "processes": procs}
