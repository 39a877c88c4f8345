"""Inputs and config of `layerloop demo`: a synthetic tiny world (seeds + unlabeled pool) on CPU.

Sizes are chosen so seed + 3 rounds fit in ~10 minutes on 2 CPU cores; they are demo sizes, not a
recipe for good decomposition (the issue note reports how the numbers move and why).
"""
from __future__ import annotations

from pathlib import Path

from flows.config import PipelineConfig, load_config

DEMO_SEEDS = 24
DEMO_POOL = 48
DEMO_SEED = 7


def make_inputs(root: str, *, n_seeds: int = DEMO_SEEDS, n_pool: int = DEMO_POOL, panel_size: int = 32,
                seed: int = DEMO_SEED) -> dict[str, str]:
    """Render labeled seeds and an unlabeled pool under root (idempotent: same files every time)."""
    from models.synthetic import write_split

    paths = {"seeds": str(Path(root) / "seeds"), "pool": str(Path(root) / "pool")}
    for split, n in (("seeds", n_seeds), ("pool", n_pool)):
        if not (Path(paths[split]) / ".complete").exists():
            write_split(split, n, panel_size, seed, paths[split])
            (Path(paths[split]) / ".complete").write_text(f"{n}\n")
    return paths


def demo_config(store: str, inputs: dict[str, str], rounds: int = 3, overrides: dict | None = None) -> PipelineConfig:
    """Tiny-world config of the demo: demo sizes < env LAYERLOOP__* < `overrides` (nested dict)."""
    base = {
        "store": {"uri": store},
        # each adapter continues from the previous one, so adapter r has seen 30 * (r + 1) steps
        "train": {"steps": 30, "batch_size": 4, "checkpoint_every": 10, "cycle_warmup_steps": 10},
        "sample": {"steps": 6, "batch_size": 12},
        "loop": {"rounds": rounds, "seeds_path": inputs["seeds"], "pool_path": inputs["pool"],
                 "candidates_per_round": 12, "pool_per_round": 12, "batch_size": 12, "eval_size": 12,
                 "train_final": True},
    }
    from flows.config import deep_merge, env_overrides

    return load_config(None, environ={}, overrides=deep_merge(deep_merge(base, env_overrides()), overrides or {}))


def smoke_overrides(store: str, inputs: dict[str, str], rounds: int = 1) -> dict:
    """The smallest useful loop (tests, the deployment check, the overhead bench): seconds per round."""
    return {
        "store": {"uri": store},
        "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 1, "cycle_warmup_steps": 0},
        "sample": {"steps": 2, "batch_size": 4},
        "lora": {"rank": 2},
        "loop": {"rounds": rounds, "seeds_path": inputs["seeds"], "pool_path": inputs["pool"],
                 "candidates_per_round": 4, "pool_per_round": 2, "batch_size": 2, "eval_size": 2,
                 "task_retries": 0},
    }
