"""Consensus benchmark: is the mean of k decompositions a better pseudo-label than one draw?

For the first N pool composites of round 1 of a store written by `bench/loop.py` (synthetic, so every
item's true layers are known), the chosen adapter (default: the seed adapter) decomposes each composite k
times from independent noise (`Sampler.decompose(..., draw=d)`). Against the truth it prints logo PSNR,
logo shape IoU and object PSNR of: the first draw, a random draw (the mean over draws of each draw's
score), the per-pixel mean of the k draws (`models.anchoring.consensus`, what the pool stage stores),
the draw whose re-synthesis is closest to the real composite (best-of-k by cycle error: real pixels
choosing among the model's hypotheses), and the oracle's best draw (an upper bound no pipeline has).

    python bench/loop.py                                         # writes bench-loop-work/store-seed0
    python research/consensus.py bench-loop-work/store-seed0 --n 64 --draws 6
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store", help="a store written by bench/loop.py (round 1's saved config is reused)")
    p.add_argument("--n", type=int, default=64, help="pool composites of round 1 to decompose")
    p.add_argument("--draws", type=int, default=6)
    p.add_argument("--adapter", type=int, default=0, help="the adapter round that decomposes")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.draws < 2 or args.n < 1:
        raise SystemExit("--draws must be >= 2 and --n >= 1")
    return args


def pool_items(cfg, store, n: int) -> tuple[list, list[dict]]:
    """(composites, true triplets) of the first n pool items of round 1."""
    from layerloop.tasks.stages.consistency import round_pool
    from layerloop.tasks.stages.health import pool_truths
    from layerloop.tasks.stages.panels import decode
    from layerloop.storage import schema as S

    pool = round_pool(store, cfg, 1).iloc[:n]
    truths = pool_truths(pool)
    composites = [decode({"composite": p["composite"]})["composite"] for _, p in store.load_panels(pool)]
    return composites, [truths[sid] for sid in pool[S.SAMPLE_ID]]


def draw_scores(smp, composites, truths, draws: int):
    """(layers per draw, scores per draw and item: logo PSNR, logo IoU, object PSNR, cycle error)."""
    import numpy as np

    from layerloop.models.metrics import cycle_error, psnr, shape_iou

    layers, scores = [], []
    for d in range(draws):
        lay = smp.decompose(composites, draw=d)
        again = smp.synthesize(lay)
        layers.append(lay)
        scores.append([(psnr(x["logo"], t["logo"]), shape_iou(x["logo"], t["logo"]), psnr(x["object"], t["object"]),
                        cycle_error(c, a)) for x, t, c, a in zip(lay, truths, composites, again)])
    return layers, np.array(scores)  # (draws, items, 4)


def summarize(layers, scores, truths) -> dict[str, tuple[float, float, float]]:
    """Mean (logo PSNR, logo IoU, object PSNR) of every way to pick a pseudo-label."""
    import numpy as np

    from layerloop.models.anchoring import consensus
    from layerloop.models.metrics import psnr, shape_iou

    n, idx = scores.shape[1], np.arange(scores.shape[1])
    means = [consensus([draw[i] for draw in layers]) for i in range(n)]
    pick = {"best by cycle error": scores[:, :, 3].argmin(0), "oracle best logo": scores[:, :, 0].argmax(0)}
    mean_scores = [(psnr(m["logo"], t["logo"]), shape_iou(m["logo"], t["logo"]), psnr(m["object"], t["object"]))
                   for m, t in zip(means, truths)]
    out = {"first draw": tuple(scores[0, :, :3].mean(0)), "random draw": tuple(scores[:, :, :3].mean((0, 1))),
           "consensus (mean of draws)": tuple(np.mean(mean_scores, axis=0))}
    out.update({name: tuple(scores[which, idx, :3].mean(0)) for name, which in pick.items()})
    return {k: tuple(float(v) for v in vals) for k, vals in out.items()}


def main(argv=None) -> dict:
    import torch

    from layerloop.tasks.config import round_config
    from layerloop.tasks.stages.handles import open_store, sampler

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    store_dir = Path(args.store)
    if not store_dir.is_dir():
        raise SystemExit(f"store {store_dir} does not exist: run bench/loop.py first")
    # round 1's own config (its sampler seed, model and pool slice), pointed at where the store is now
    cfg = round_config(str(store_dir), 1)
    store = open_store(cfg)
    composites, truths = pool_items(cfg, store, args.n)
    layers, scores = draw_scores(sampler(cfg, args.adapter, store), composites, truths, args.draws)
    result = summarize(layers, scores, truths)
    print(f"{len(composites)} round-1 pool composites of {store_dir}, adapter {args.adapter}, {args.draws} draws")
    print("| pseudo-label | logo PSNR dB | logo shape IoU | object PSNR dB |\n|---|---|---|---|")
    for name, (lp, li, op) in result.items():
        print(f"| {name} | {lp:.2f} | {li:.3f} | {op:.2f} |")
    return result


if __name__ == "__main__":
    main()
