"""Inference mode on the dev split: how many draws, and anchoring or not, for `sample.draws` / `sample.anchor`?

Question: the test split showed that 6 draws + anchoring lift the seed adapter by ~3.6 dB (issue 22), but
that choice was read off the test split. Which mode does the DEV split pick, and what does each draw cost?

For each store written by bench/loop.py (one per training seed) the seed adapter decomposes the dev split's
items --max-draws times from independent noise, once; every mode (the first k draws' per-pixel mean, then
anchored at each footprint threshold or not) is scored from those draws, per slice (seen / unseen kinds of the store's seeds). Paired
intervals over seeds x items for each k against one draw, for anchoring against none, and for the footprint
threshold 24 against 64 (the loop's anchor_threshold was chosen between them on the test split).

    python bench/loop.py                         # writes bench-loop-work/store-seed{0,1,2}
    python research/inference_mode.py bench-loop-work/store-seed0 bench-loop-work/store-seed1 ...
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ("psnr_object", "psnr_logo", "iou_logo")
SLICES = ("unseen", "seen")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stores", nargs="+", help="stores written by bench/loop.py (one per training seed)")
    p.add_argument("--n", type=int, default=128, help="dev items")
    p.add_argument("--max-draws", type=int, default=8)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 6, 8])
    p.add_argument("--thresholds", type=float, nargs="+", default=[64.0, 24.0],
                   help="anchor footprint thresholds to try (models.anchoring.anchor's; 64 is the default)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="research/results/inference_mode.json")
    args = p.parse_args(argv)
    if max(args.ks) > args.max_draws or min(args.ks) < 1:
        raise SystemExit("--ks must lie in 1..--max-draws")
    return args


def draws_of(cfg, store, n: int, max_draws: int) -> tuple[list, list[list[dict]], float]:
    """(dev items, per item its max_draws decompositions by the seed adapter, seconds per draw per image)."""
    from layerloop.models.synthetic import make_split, world_logos
    from layerloop.tasks.stages.handles import sampler

    items = list(make_split("dev", n, cfg.model.panel_size, cfg.loop.eval_seed, logos=world_logos(cfg.model.layers)))
    smp = sampler(cfg, 0, store)
    composites = [t["composite"] for _, t, _ in items]
    t0 = time.perf_counter()
    per_draw = []
    for k in range(max_draws):
        per_draw.append(smp.decompose(composites, draw=k))
        print(f"  draw {k + 1}/{max_draws} of {len(items)} dev items, {time.perf_counter() - t0:.0f} s", flush=True)
    seconds = (time.perf_counter() - t0) / (max_draws * len(items))
    return items, [[d[i] for d in per_draw] for i in range(len(items))], seconds


def mode_scores(items, draws: list[list[dict]], k: int, threshold: float | None, background: str) -> list[dict]:
    """Per item: slice-free scores of the mode (first k draws averaged, then anchored at `threshold` unless
    it is None)."""
    from layerloop.models.anchoring import anchor, consensus
    from layerloop.models.evaluation import score_layers

    out = []
    for (sid, truth, meta), ds in zip(items, draws):
        layers = ds[0] if k == 1 else consensus(ds[:k])
        if threshold is not None:
            layers = anchor(truth["composite"], layers, background=background, threshold=threshold)[0]
        out.append({"sample_id": sid, "meta": meta, **score_layers(truth, layers)})
    return out


def evaluate_store(path: str, args) -> tuple[dict, float]:
    """{(k, threshold or None): per-item rows with their slice} and the seconds per draw, for one store."""
    from layerloop.tasks.config import round_config
    from layerloop.tasks.stages.adapter import seen_slices
    from layerloop.tasks.stages.handles import open_store

    cfg = round_config(path, 1)
    store = open_store(cfg)
    slices = seen_slices(store) or {}
    items, draws, seconds = draws_of(cfg, store, args.n, args.max_draws)
    background = cfg.model.layers[-1]
    out = {}
    for mode in modes(args):
        rows = mode_scores(items, draws, *mode, background)
        for r in rows:
            meta = r.pop("meta")
            r["slice"] = next((name for name, keep in slices.items() if keep(meta)), "all")
        out[mode] = rows
    return out, seconds


def modes(args) -> list[tuple[int, float | None]]:
    return [(k, t) for k in args.ks for t in (None, *args.thresholds)]


def name(mode) -> str:
    return f"{mode[0]}" + ("" if mode[1] is None else f"+anchor{mode[1]:g}")


def matrix(per_store: list[dict], mode, metric: str, sl: str) -> list[list[float]]:
    return [[r[metric] for r in sorted(t[mode], key=lambda r: r["sample_id"]) if r["slice"] == sl]
            for t in per_store]


def report(per_store: list[dict], args, seconds: list[float]) -> dict:
    """Print the means per mode and the paired intervals; return them for the JSON file."""
    import numpy as np

    from layerloop.models.stats import paired_bootstrap

    cols = [(m, s) for s in SLICES for m in METRICS]
    print(f"\ndev split, {args.n} items, seed adapter of {len(per_store)} training seeds; "
          f"{np.mean(seconds) * 1000:.1f} ms per draw per image (this machine)")
    print("| draws | anchor threshold | " + " | ".join(f"{m} {s}" for m, s in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    means, diffs = {}, []
    for mode in modes(args):
        cells = {f"{m}@{s}": float(np.mean(matrix(per_store, mode, m, s))) for m, s in cols}
        means[name(mode)] = cells
        print(f"| {mode[0]} | {'-' if mode[1] is None else f'{mode[1]:g}'} | "
              + " | ".join(f"{cells[f'{m}@{s}']:.2f}" for m, s in cols) + " |")
    print("\n| B - A (95 % interval, seeds x items) | " + " | ".join(f"{m} {s}" for m, s in cols) + " |")
    print("|---|" + "---|" * len(cols))
    t0, ks = args.thresholds[0], args.ks
    pairs = [((k, None), (k, t)) for k in (ks[0], ks[-1]) for t in args.thresholds] \
        + [((ks[-1], t0), (ks[-1], t)) for t in args.thresholds[1:]] \
        + [((ks[0], t0), (k, t0)) for k in ks[1:]] + [((a, t0), (b, t0)) for a, b in zip(ks[1:], ks[2:])]
    for a, b in pairs:
        cells = []
        for m, s in cols:
            mean, lo, hi = paired_bootstrap(matrix(per_store, a, m, s), matrix(per_store, b, m, s))
            cells.append(f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]")
            diffs.append({"a": name(a), "b": name(b), "metric": f"{m}@{s}", "mean": mean, "lo": lo, "hi": hi})
        print(f"| {name(b)} - {name(a)} | " + " | ".join(cells) + " |")
    return {"means": means, "intervals": diffs, "seconds_per_draw_per_image": float(np.mean(seconds))}


def main(argv=None) -> dict:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    per_store, seconds = [], []
    for path in args.stores:
        got, sec = evaluate_store(path, args)
        per_store.append(got)
        seconds.append(sec)
        print(f"{path}: {sec * 1000:.1f} ms per draw per image", flush=True)
    result = {"stores": args.stores, "n": args.n, **report(per_store, args, seconds)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
