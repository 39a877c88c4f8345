"""Which alpha matte turns a decomposed logo panel into the RGBA layer closest to the true logo?

Every method of `models.matting` mattes logo panels of (a) the renderer's true logo panel (the method's
own ceiling), (b) one decomposition by an adapter, (c) the per-pixel mean of 6 decompositions (what
`decompose --draws 6` writes). Each is scored against the renderer's true RGBA logo
(`models.synthetic.render_logo_rgba`) by soft alpha IoU and premultiplied RGB L1. The default is chosen
on the dev split: the least RGB L1 + (1 - alpha IoU) (the layer edit distance's modify cost) on one
decomposition, the product's default mode; the test split only reports.

    make demo                                              # or any store with a round-0 adapter
    python research/matting.py demo-store --adapter 0 --json research/results/matting.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SOURCES = ("true panel", "one draw", "6-draw mean")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store", help="a store with a committed round 1 (its config is reused) and the adapter")
    p.add_argument("--adapter", type=int, default=0, help="adapter round that decomposes (0 = the seed adapter)")
    p.add_argument("--n-dev", type=int, default=64)
    p.add_argument("--n-test", type=int, default=192)
    p.add_argument("--draws", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="write the table here")
    return p.parse_args(argv)


def logo_panels(smp, items, draws: int) -> dict[str, list]:
    """Each source's logo panel per item."""
    from layerloop.models.anchoring import consensus

    composites = [t["composite"] for _, t, _ in items]
    runs = [smp.decompose(composites, draw=k) for k in range(draws)]
    mean = [consensus([run[i] for run in runs])["logo"] for i in range(len(items))]
    return {"true panel": [t["logo"] for _, t, _ in items], "one draw": [x["logo"] for x in runs[0]],
            "6-draw mean": mean}


def score(panels: dict[str, list], items) -> dict[str, dict[str, dict[str, float]]]:
    """{source: {method: {alpha_iou, rgb_l1}}} means over items."""
    import numpy as np

    from layerloop.models.matting import METHODS, matte
    from layerloop.models.metrics import alpha_iou, rgb_l1
    from layerloop.models.synthetic import render_logo_rgba

    truths = [render_logo_rgba(meta["seed"], t["logo"].size[0]) for _, t, meta in items]
    out: dict = {}
    for source, images in panels.items():
        out[source] = {}
        for method in METHODS:
            mats = [matte(im, method) for im in images]
            out[source][method] = {"alpha_iou": float(np.mean([alpha_iou(m, t) for m, t in zip(mats, truths)])),
                                   "rgb_l1": float(np.mean([rgb_l1(m, t) for m, t in zip(mats, truths)]))}
    return out


def table(name: str, result: dict) -> str:
    head = "| method | " + " | ".join(f"{s} IoU | {s} L1" for s in SOURCES) + " |"
    lines = [f"### {name}", head, "|---|" + "---|---|" * len(SOURCES)]
    for method in result[SOURCES[0]]:
        cells = [f"{result[s][method]['alpha_iou']:.3f} | {result[s][method]['rgb_l1']:.4f}" for s in SOURCES]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    import torch

    from layerloop.models.synthetic import make_split
    from layerloop.tasks.config import round_config
    from layerloop.tasks.stages.handles import open_store, sampler

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = round_config(str(args.store), 1)  # round 1 is the first with a loop config (round 0 is an ingest)
    smp = sampler(cfg, args.adapter, open_store(cfg))
    size, seed = cfg.model.panel_size, cfg.loop.eval_seed
    result = {}
    for split, n in (("dev", args.n_dev), ("test", args.n_test)):
        items = list(make_split(split, n, size, seed))
        result[split] = score(logo_panels(smp, items, args.draws), items)
        print(table(f"{split} split, {n} items, adapter {args.adapter}, {size} px", result[split]), flush=True)
    one = result["dev"]["one draw"]
    chosen = min(one, key=lambda m: one[m]["rgb_l1"] + 1 - one[m]["alpha_iou"])
    print(f"\nchosen on dev (least RGB L1 + 1 - alpha IoU, the edit distance's modify cost, on one draw): {chosen}")
    out = {"store": str(args.store), "adapter": args.adapter, "panel_size": size, "seed": seed, "chosen": chosen,
           **result}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
