"""Inputs and config of `layerloop demo`: a synthetic tiny world (seeds + unlabeled pool) on CPU.

Sizes are chosen so seed + 3 rounds fit in ~10 minutes on 2 CPU cores: the seed LoRA gets the
learning benchmark's recipe at half its steps (cosine lr 5e-3, rank 16, loss on the generated panels),
each later adapter continues from the previous one for a few hundred steps (docs/flows.md has the numbers).
"""
from __future__ import annotations

from pathlib import Path

DEMO_SEEDS = 100  # the paper's seed set size
DEMO_POOL = 48
DEMO_SEED = 7

# The demo's built-in defaults, laid over PipelineConfig's (a config file, env and flags still win).
# The seed adapter trains 1500 steps; each later one continues from it for round_train_steps.
DEMO_SIZES = {
    "train": {"steps": 1500, "batch_size": 4, "lr": 5e-3, "checkpoint_every": 250,
              "cycle_weight": 0.1, "cycle_warmup_steps": 1000},
    "lora": {"rank": 16},
    "sample": {"steps": 6, "batch_size": 12},
    "loop": {"candidates_per_round": 12, "pool_per_round": 12, "batch_size": 12, "eval_size": 12,
             "train_final": True, "round_train_steps": 300},
}


def input_paths(root: str) -> dict[str, str]:
    """Where make_inputs renders the seeds and the pool under root."""
    return {"seeds": str(Path(root) / "seeds"), "pool": str(Path(root) / "pool")}


def make_inputs(root: str, *, n_seeds: int = DEMO_SEEDS, n_pool: int = DEMO_POOL, panel_size: int = 32,
                seed: int = DEMO_SEED) -> dict[str, str]:
    """Render labeled seeds and an unlabeled pool under root (idempotent: same files every time)."""
    from layerloop.models.synthetic import write_split

    paths = input_paths(root)
    for split, n in (("seeds", n_seeds), ("pool", n_pool)):
        if not (Path(paths[split]) / ".complete").exists():
            write_split(split, n, panel_size, seed, paths[split])
            (Path(paths[split]) / ".complete").write_text(f"{n}\n")
    return paths


def demo_flags(store: str, inputs: dict[str, str], rounds: int) -> dict:
    """What the demo's own flags set: its store, its rendered inputs, its number of rounds."""
    return {"store": {"uri": store},
            "loop": {"rounds": rounds, "seeds_path": inputs["seeds"], "pool_path": inputs["pool"]}}


def smoke_overrides(store: str, inputs: dict[str, str], rounds: int = 1) -> dict:
    """The smallest useful loop (tests, the deployment check, the overhead bench): seconds per round."""
    return {
        "store": {"uri": store},
        "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 1, "cycle_warmup_steps": 0},
        "sample": {"steps": 2, "batch_size": 4},
        "lora": {"rank": 2},
        "loop": {"rounds": rounds, "seeds_path": inputs["seeds"], "pool_path": inputs["pool"],
                 "candidates_per_round": 4, "pool_per_round": 2, "batch_size": 2, "eval_size": 2,
                 "validation_size": 2, "task_retries": 0},
    }
