"""Scale-out of one round: the same round (fixed size, same seeds) with the local executor and with Ray on
1 and 2 workers, measured in one run; wall times, speed-ups and the per-unit overhead of each.

The seed flow runs once (untimed) and every variant runs round 1 on fresh copies of that store, so all
do the same work: 8 generate, 8 judge and 8 cycle-generated units, then 4 cycle-pool and 4 judge units on
the pool slice (batch 2). A Ray variant starts its local cluster before the clock (printed apart), then
runs the round twice: cold (the workers' process start, imports and model builds are in the wall, as in
a run's first round) and warm (workers and models reused, as from a run's second round on). All
manifests are compared: speed-ups are only reported for identical results.

  per-unit overhead = (wall x workers - stage seconds) / task runs

where stage seconds is the time the stage functions measured themselves (tasks/stages/handles.py
`timed`), summed over units: what each worker slot spent outside stage code per task run (Prefect and
Ray round-trips, serialization, worker start, waiting at the stage barriers).
Reports to $PREFECT_API_URL when set, else to an ephemeral server (started before timing).

    python bench/scale.py [--candidates 16] [--pool 8] [--sample-steps 4]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "prefect.server.concurrency.lease_storage.filesystem")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

VARIANTS = (("local", None), ("ray-1", 1), ("ray-2", 2))


def _config(store: str, inputs: dict, args, workers: int | None):
    from layerloop.tasks.config import deep_merge, load_config
    from layerloop.tasks.stages.demo import smoke_overrides

    loop = {"candidates_per_round": args.candidates, "pool_per_round": args.pool, "batch_size": 2}
    if workers is not None:
        loop.update(executor="ray", ray={"local_cpus": workers, "num_cpus": 1})
    over = deep_merge(smoke_overrides(store, inputs, rounds=1), {"loop": loop, "sample": {"steps": args.sample_steps}})
    return load_config(None, overrides=over)


def _manifest(store: str):
    from layerloop.storage import schema as S
    from layerloop.storage.rounds import RoundStore

    rows = RoundStore(store).read(1, "all").sort_values(S.SAMPLE_ID)
    return list(zip(rows[S.SAMPLE_ID], rows[S.CONTENT_HASH], rows[S.ACCEPTED]))


def _round(cfg) -> tuple[float, dict]:
    from layerloop.flows.self_improve import improve_round
    from layerloop.tasks.runtime import executor

    start = time.perf_counter()
    result = executor.round_flow(improve_round, cfg)(cfg, 1)
    return time.perf_counter() - start, result


def run_variant(name: str, workers: int | None, seeded: str, root: str, inputs: dict, args) -> dict:
    """Round 1 twice on fresh copies of the seeded store, on one cluster: cold (the workers start and build
    their models) then warm (they are reused, as from the second round of a run on). Ray starts first."""
    from layerloop.tasks.runtime import executor

    stores = [str(Path(root) / f"{name}-{kind}") for kind in ("cold", "warm")]
    for store in stores:
        shutil.copytree(seeded, store)
    cfgs = [_config(store, inputs, args, workers) for store in stores]
    start = time.perf_counter()
    with executor.session(cfgs[0]):
        ray_up = time.perf_counter() - start
        (cold, _), (warm, result) = _round(cfgs[0]), _round(cfgs[1])
    plain = sum(v for k, v in result["timings"].items() if k not in ("commit", "report"))
    slots, runs = workers or 1, result["task_runs"]
    return {"name": name, "workers": slots, "ray_up_s": ray_up if workers else 0.0, "cold_s": cold, "wall_s": warm,
            "stage_s": plain, "task_runs": runs, "overhead_ms": 1000 * (warm * slots - plain) / max(1, runs),
            "manifests": [_manifest(store) for store in stores]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=16, help="generated candidates (batch 2 -> units)")
    parser.add_argument("--pool", type=int, default=8, help="pool composites of the round")
    parser.add_argument("--sample-steps", type=int, default=4, help="sampler steps: the work per unit")
    args = parser.parse_args()
    import torch

    from layerloop.flows.seed import seed
    from layerloop.tasks.stages.demo import make_inputs

    torch.set_num_threads(1)  # Ray gives each worker 1 CPU (OMP_NUM_THREADS=1): the same here
    with tempfile.TemporaryDirectory(prefix="layerloop-scale-") as root:
        inputs = make_inputs(str(Path(root) / "in"), n_seeds=12, n_pool=16)
        seeded = str(Path(root) / "seeded")
        seed(_config(seeded, inputs, args, None))
        rows = [run_variant(name, workers, seeded, root, inputs, args) for name, workers in VARIANTS]
    same = all(m == rows[0]["manifests"][0] for r in rows for m in r["manifests"])
    print(f"machine: {os.cpu_count()} CPU cores; one round = {args.candidates} candidates + {args.pool} pool "
          f"composites, batch 2, {args.sample_steps} sampler steps; manifests identical: {same}")
    print(f"{'executor':<8} {'workers':>7} {'ray up s':>8} {'cold round s':>12} {'warm round s':>12} "
          f"{'stage s':>8} {'task runs':>9} {'overhead ms/unit':>16}")
    for r in rows:
        print(f"{r['name']:<8} {r['workers']:>7d} {r['ray_up_s']:>8.1f} {r['cold_s']:>12.2f} {r['wall_s']:>12.2f} "
              f"{r['stage_s']:>8.2f} {r['task_runs']:>9d} {r['overhead_ms']:>16.0f}")
    print("(stage s and overhead: the warm round; local is always warm: the seed flow built its model)")
    if not same:
        print("manifests differ between executors: no speed-up reported")
        sys.exit(1)
    (local, one, two), (_, one_cold, two_cold) = ([r[k] for r in rows] for k in ("wall_s", "cold_s"))
    print(f"speed-up, warm: local/ray-1 {local / one:.2f}x, local/ray-2 {local / two:.2f}x, "
          f"ray-1/ray-2 {one / two:.2f}x; cold: ray-1/ray-2 {one_cold / two_cold:.2f}x")


if __name__ == "__main__":
    main()
