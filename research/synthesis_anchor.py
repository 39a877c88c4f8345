"""Anchored synthesis on the dev split: should `synthesize` / `rebrand` keep the object outside where the model
printed the logo (`Sampler.compose`, sample.anchor), and at which footprint rule?

Question: tau_C from the TRUE layers scores no better than returning the object panel (bench/lab.py's
`synth_gain_db`, issue 26): the model blurs the object it should copy. Outside the logo a composite IS the
object, so the composite can be kept equal to the object panel wherever the model's output stays within a
threshold of it (models.anchoring.anchor, the rule `decompose` already uses on its object layer). Does that
lift the whole-panel gain, what does it cost inside the logo's box, and which (threshold, grow) does the dev
split pick? And with `--draws K`: does the per-pixel mean of K synthesis draws (each from its own noise, as
`decompose`'s consensus) score higher, plain and kept (settings `mean{K}`, `mean{K}_compose`)?

For each seed adapter (one per training seed, e.g. the stores bench/lab.py --train-seed writes) it synthesizes
the dev items' true layers once, scores the plain output and `Sampler.compose` (the product's rule: threshold
64, grow 1), and the plain output anchored at every (threshold, grow) of the grid; paired intervals over
adapters x items against the plain synthesis (models/stats.paired_bootstrap).

    python research/synthesis_anchor.py ADAPTER [ADAPTER ...] [--base BASE] --n 64 \
        --json research/results/synthesis_anchor.json
    python research/synthesis_anchor.py ADAPTER ... --split test --thresholds 64 --grows 1 --json ...   # reports
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ("gain", "gain_box")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("adapters", nargs="+", help="seed adapter directories (one per training seed)")
    p.add_argument("--base", default=None, help="base model directory (default: the shipped tiny base)")
    p.add_argument("--n", type=int, default=64, help="items of the split")
    p.add_argument("--split", choices=("dev", "test"), default="dev",
                   help="dev decides the rule; test only reports the rule dev chose")
    p.add_argument("--thresholds", type=float, nargs="+", default=[16.0, 32.0, 48.0, 64.0, 96.0])
    p.add_argument("--grows", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--draws", type=int, default=1,
                   help="also score the per-pixel mean of this many synthesis draws (1 = not)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    missing = [a for a in args.adapters if not Path(a).is_dir()]
    if missing:
        raise SystemExit(f"adapter directories not found: {missing}")
    if args.n < 2:
        raise SystemExit("--n must be >= 2 (paired intervals)")
    if args.draws < 1:
        raise SystemExit("--draws must be >= 1")
    return args


def gains(items, made) -> dict[str, list[float]]:
    """Per item gain (dB over returning the object panel), whole panel and inside the logo's box."""
    from layerloop.models.lab_metrics import synthesis_gains

    rows = synthesis_gains([t["composite"] for _, t, _ in items], made, [t["object"] for _, t, _ in items],
                           [m["logo_box"] for _, _, m in items])
    return {k: [r[k] for r in rows] for k in METRICS}


def mean_of_draws(smp, layers, first: list, k: int) -> list:
    """Per-pixel mean of `first` (draw 0) and k - 1 more synthesis draws, each from its own noise."""
    from layerloop.models.anchoring import mean_image

    more = [smp.synthesize(layers, draw=d) for d in range(1, k)]
    return [mean_image(list(cs)) for cs in zip(first, *more)]


def score_adapter(bb, adapter: str, items, thresholds, grows, draws: int = 1) -> dict[str, dict[str, list[float]]]:
    """{setting: per-item gains} for one adapter: plain, compose (the product's rule), the grid and, with
    draws > 1, the mean of the draws, plain and kept."""
    from layerloop.models.anchoring import anchor
    from layerloop.models.config import SampleConfig
    from layerloop.models.sampler import Sampler

    smp = Sampler(bb, adapter, SampleConfig(anchor=True))
    layers = [{"logo": t["logo"], "object": t["object"]} for _, t, _ in items]
    plain = smp.synthesize(layers)
    out = {"plain": gains(items, plain), "compose": gains(items, smp.keep_background(layers, plain))}
    for thr in thresholds:
        for grow in grows:
            made = [anchor(t["object"].convert("RGB"), {"object": m}, threshold=thr, grow=grow,
                           background="object")[0]["object"] for (_, t, _), m in zip(items, plain)]
            out[f"thr{thr:g}_grow{grow}"] = gains(items, made)
    if draws > 1:
        mean = mean_of_draws(smp, layers, plain, draws)
        out[f"mean{draws}"] = gains(items, mean)
        out[f"mean{draws}_compose"] = gains(items, smp.keep_background(layers, mean))
    return out


def summarize(per_adapter: list[dict]) -> dict[str, dict]:
    """Per setting and metric: mean and the paired interval against plain over adapters x items."""
    from layerloop.models.stats import paired_bootstrap

    table = {}
    for setting in per_adapter[0]:
        table[setting] = {}
        for metric in METRICS:
            a = [s["plain"][metric] for s in per_adapter]
            b = [s[setting][metric] for s in per_adapter]
            mean = sum(map(sum, b)) / sum(map(len, b))
            diff, lo, hi = paired_bootstrap(a, b)
            table[setting][metric] = {"mean": mean, "vs_plain": diff, "lo": lo, "hi": hi}
    return table


def main(argv=None) -> dict:
    import torch

    from layerloop.models.config import ModelConfig
    from layerloop.models.factory import build_backbone
    from layerloop.models.synthetic import make_split
    from layerloop.tasks.config import validate_config

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = validate_config({}, source="research/synthesis_anchor.py")
    items = list(make_split(args.split, args.n, cfg.model.panel_size, cfg.loop.eval_seed))  # dev: bench/lab.py's
    bb = build_backbone(ModelConfig(**({"path": args.base} if args.base else {})))
    t0 = time.perf_counter()
    per_adapter = []
    for adapter in args.adapters:
        per_adapter.append(score_adapter(bb, adapter, items, args.thresholds, args.grows, args.draws))
        print(f"  {adapter}: {time.perf_counter() - t0:.0f} s", flush=True)
    table = summarize(per_adapter)
    print("| setting | gain dB | vs plain [95 %] | logo-box gain dB | vs plain [95 %] |\n|---|---|---|---|---|")
    for setting, row in table.items():
        g, b = row["gain"], row["gain_box"]
        print(f"| {setting} | {g['mean']:+.2f} | {g['vs_plain']:+.2f} [{g['lo']:+.2f}, {g['hi']:+.2f}] | "
              f"{b['mean']:+.2f} | {b['vs_plain']:+.2f} [{b['lo']:+.2f}, {b['hi']:+.2f}] |")
    result = {"base": bb.base_id, "adapters": args.adapters, "split": args.split, "n": len(items), "draws": args.draws,
              "eval_seed": cfg.loop.eval_seed,
              "table": table, "per_adapter_means": [
                  {s: {m: sum(v[m]) / len(v[m]) for m in METRICS} for s, v in d.items()} for d in per_adapter],
              "seconds": time.perf_counter() - t0}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
