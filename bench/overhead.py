"""Prefect's share of a round's wall time: (round wall - sum of plain stage-function time) / round wall.

Runs the seed flow once (not timed), then round 1 as the `round` subflow, on two sizes of the tiny
world: `smoke` (2 training steps: the worst case for overhead) and `demo` (the `layerloop demo` sizes).
The plain time is what the stage functions measured themselves (tasks/stages/handles.py `timed`); the rest is
Prefect: task/subflow runs, state round-trips, artifacts. Goal: <= 5 % at demo size.
Reports to $PREFECT_API_URL when set, else to an ephemeral server (started before timing).

    python bench/overhead.py [--sizes smoke demo]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "prefect.server.concurrency.lease_storage.filesystem")


def _config(size: str, root: str):
    from layerloop.tasks.config import deep_merge, load_config
    from layerloop.tasks.stages.demo import DEMO_SIZES, demo_flags, make_inputs, smoke_overrides

    inputs = make_inputs(str(Path(root) / "in"), n_seeds=12, n_pool=16)
    if size == "demo":
        flags = deep_merge(demo_flags(str(Path(root) / "store"), inputs, rounds=1), {"loop": {"train_final": False}})
        return load_config(None, defaults=DEMO_SIZES, overrides=flags)
    over = deep_merge(smoke_overrides(str(Path(root) / "store"), inputs, rounds=1),
                      {"loop": {"candidates_per_round": 8, "pool_per_round": 4}})
    return load_config(None, overrides=over)


def measure(size: str) -> dict:
    """Seed (untimed), then one timed round; returns wall, plain and overhead numbers."""
    from layerloop.flows.seed import seed
    from layerloop.flows.self_improve import improve_round

    with tempfile.TemporaryDirectory(prefix="layerloop-bench-") as root:
        cfg = _config(size, root)
        seed(cfg)
        start = time.perf_counter()
        result = improve_round(cfg, 1)
        outer = time.perf_counter() - start
    plain = sum(result["timings"].values())
    return {"size": size, "wall_s": outer, "inner_wall_s": result["wall_s"], "plain_s": plain,
            "task_runs": result["task_runs"], "overhead_s": outer - plain,
            "share": (outer - plain) / outer, "ms_per_task": 1000 * (outer - plain) / max(1, result["task_runs"] + 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["smoke", "demo"], choices=["smoke", "demo"])
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = [measure(size) for size in args.sizes]
    print(f"{'size':<6} {'round wall s':>12} {'plain s':>8} {'prefect s':>9} {'task runs':>9} "
          f"{'ms/run':>7} {'prefect share':>13}")
    for r in rows:
        print(f"{r['size']:<6} {r['wall_s']:>12.2f} {r['plain_s']:>8.2f} {r['overhead_s']:>9.2f} "
              f"{r['task_runs']:>9d} {r['ms_per_task']:>7.1f} {100 * r['share']:>12.1f} %")
    print("goal: prefect share <= 5 % of a round's wall time at demo size")


if __name__ == "__main__":
    main()
