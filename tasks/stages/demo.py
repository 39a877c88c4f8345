"""Inputs and config of `layerloop demo`: a synthetic tiny world (seeds + unlabeled pool) on CPU.

The world is shifted as a real user's is: the 100 labeled seeds show only mugs and bottles, the unlabeled
pool and the held-out test set every kind, so the loop has something to learn and the table reports the
kinds the seeds showed ("seen") apart from the rest ("unseen"), each adapter beside its matched-compute
control. Sizes are chosen so seed + 2 rounds fit in ~10 minutes on 2 CPU cores: the seed LoRA gets the
learning benchmark's recipe at half its steps (cosine lr 5e-3, rank 16, loss on the generated panels),
each later adapter (and control) continues for bench/loop.py's 600 steps; at 300 the restarted learning
rate cost more than the steps gave (docs/flows.md has the numbers).
"""
from __future__ import annotations

from pathlib import Path

from ...models.config import TWO_LOGO_LAYERS, TWO_LOGO_PROMPT_TEMPLATES
from ...models.synthetic import WorldSlice, write_split

DEMO_SEEDS = 100  # the paper's seed set size
DEMO_POOL = 192  # 2 rounds x 96
DEMO_SEED = 7
DEMO_SLICE = {"kinds": ["mug", "bottle"]}  # what the labeled seeds show; pool and test show everything

# The demo's built-in defaults, laid over PipelineConfig's (a config file, env and flags still win).
# The seed adapter trains 1500 steps; each later one continues from it for round_train_steps.
DEMO_SIZES = {
    "train": {"steps": 1500, "batch_size": 4, "lr": 5e-3, "checkpoint_every": 250},
    "lora": {"rank": 16},
    "sample": {"steps": 8, "batch_size": 16},
    "loop": {"pool_per_round": 96, "batch_size": 16, "eval_size": 48, "validation_size": 10, "control": True,
             "train_final": True, "round_train_steps": 600},
}


def input_paths(root: str) -> dict[str, str]:
    """Where make_inputs renders the seeds and the pool under root."""
    return {"seeds": str(Path(root) / "seeds"), "pool": str(Path(root) / "pool")}


def make_inputs(root: str, *, n_seeds: int = DEMO_SEEDS, n_pool: int = DEMO_POOL, panel_size: int = 32,
                seed: int = DEMO_SEED, seed_slice: dict | None = None, logos: int = 1) -> dict[str, str]:
    """Render labeled seeds (from `seed_slice`, None = the whole world) and an unlabeled pool (the whole
    world) under root; idempotent: the same files every time, re-rendered when the request changes.
    `logos=2`: two logos per product, for the two_logo_overrides() schema."""
    import shutil


    paths = input_paths(root)
    for split, n, where in (("seeds", n_seeds, WorldSlice(**(seed_slice or {}))), ("pool", n_pool, WorldSlice())):
        done = Path(paths[split]) / ".complete"
        want = f"{n} {panel_size} {seed} {where.describe()}" + (f" logos={logos}" if logos != 1 else "") + "\n"
        if not done.exists() or done.read_text() != want:
            shutil.rmtree(paths[split], ignore_errors=True)
            write_split(split, n, panel_size, seed, paths[split], where, logos)
            done.write_text(want)
    return paths


def two_logo_overrides() -> dict:
    """The K=3 layer schema (logo_1 | logo_2 | object) on the same tiny base: four-panel prompts, a judge
    that reads any number of logos (the default cycle judge does)."""
    return {"model": {"layers": list(TWO_LOGO_LAYERS), "prompt_templates": dict(TWO_LOGO_PROMPT_TEMPLATES)}}


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
