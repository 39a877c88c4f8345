"""Does the pipeline learn the K=3 schema (composite | logo_1 | logo_2 | object) on the tiny world?

The demo's recipe (100 labeled seeds of mugs and bottles, 1,500 seed steps, then 600 per round, sampler 8
steps, every pool composite decomposed 6 times) on a two-logo world (`render_triplet(logos=2)`: the same
scenes with a second logo beside the first), one loop round with its control, through the plain driver
(tasks/runtime/driver.py, the stage functions the Prefect flow runs). Prints the held-out table: identity,
the seed adapter, the round-1 adapter and its control, per layer (PSNR, alpha IoU, layer edit distance).

    python research/two_logos.py --work two-logos-work --json research/results/two-logos.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLUMNS = ("psnr_logo_1", "psnr_logo_2", "psnr_object", "alpha_iou_logo_1", "alpha_iou_logo_2", "layer_edit")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="two-logos-work")
    p.add_argument("--eval-size", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--quick", action="store_true", help="smoke sizes: checks the script in seconds")
    return p.parse_args(argv)


def config(args, root: Path):
    from layerloop.tasks.config import deep_merge, load_config
    from layerloop.tasks.stages.demo import (DEMO_SIZES, DEMO_SLICE, demo_flags, make_inputs, smoke_overrides,
                                             two_logo_overrides)

    n_seeds, n_pool = (6, 6) if args.quick else (100, 96)
    inputs = make_inputs(str(root / "inputs"), n_seeds=n_seeds, n_pool=n_pool, seed_slice=DEMO_SLICE, logos=2)
    store = str(root / "store")
    base = smoke_overrides(store, inputs) if args.quick else deep_merge(DEMO_SIZES, demo_flags(store, inputs, 1))
    extra = {"loop": {"rounds": 1, "eval_size": 4 if args.quick else args.eval_size, "control": True,
                      "train_final": True}}
    return load_config(None, overrides=deep_merge(deep_merge(base, two_logo_overrides()), extra))


def table(cfg) -> list[dict]:
    from layerloop.flows.evaluate import evaluation_table
    from layerloop.tasks.stages.handles import open_store

    store = open_store(cfg)
    pairs = [("seed adapter (round 0)", store.adapter_uri(0)), ("round 1", store.adapter_uri(1)),
             ("control of round 1", store.control_adapter_uri(1))]
    return evaluation_table(cfg, pairs)


def main(argv=None) -> list[dict]:
    import torch

    from layerloop.tasks.runtime.driver import run_loop

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.work)
    cfg = config(args, root)
    start = time.perf_counter()
    run_loop(cfg)
    rows = table(cfg)
    print(f"two-logo world, 1 round, {cfg.loop.eval_size} test items, {time.perf_counter() - start:.0f} s")
    print("| adapter | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS))
    for r in rows:
        print(f"| {r['method']} | " + " | ".join(f"{r[c]:.3f}" for c in COLUMNS) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    return rows


if __name__ == "__main__":
    main()
