"""How much does a JPEG input cost? The test split decomposed from its PNG composites and from the same
composites re-encoded as JPEG (quality 75 by default, 4:2:0 chroma, as cameras and web pages send them).

Users feed `decompose` photos, which are JPEGs; every number of the lab is measured on lossless renders.
This prints the held-out metrics of both and their paired difference per item (mean and a 95 % bootstrap
interval), in the sampler's configured inference mode. A measurement, not a choice: nothing is tuned on it.

    python research/jpeg_inputs.py demo-store --adapter 0 --json research/results/jpeg-q75.json
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ("psnr_logo", "psnr_object", "iou_logo", "alpha_iou_logo", "layer_edit")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store", help="a store with a committed round 1 (its config is reused) and the adapter")
    p.add_argument("--adapter", type=int, default=0)
    p.add_argument("--n", type=int, default=192, help="test items")
    p.add_argument("--quality", type=int, default=75)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def as_jpeg(img, quality: int):
    from PIL import Image

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def main(argv=None) -> dict:
    import torch

    from layerloop.models.evaluation import evaluate_decomposition
    from layerloop.models.stats import paired_bootstrap
    from layerloop.models.synthetic import make_split
    from layerloop.tasks.config import round_config
    from layerloop.tasks.stages.handles import open_store, sampler

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = round_config(str(args.store), 1)
    smp = sampler(cfg, args.adapter, open_store(cfg))
    items = list(make_split("test", args.n, cfg.model.panel_size, cfg.loop.eval_seed))
    jpeg_items = [(sid, {**t, "composite": as_jpeg(t["composite"], args.quality)}, meta) for sid, t, meta in items]
    png = evaluate_decomposition(smp, items, return_rows=True)["rows"]
    jpg = evaluate_decomposition(smp, jpeg_items, return_rows=True)["rows"]
    out = {"store": str(args.store), "adapter": args.adapter, "n": len(items), "quality": args.quality,
           "inference": {"draws": smp.cfg.draws, "anchor": smp.cfg.anchor}, "metrics": {}}
    print(f"test split, {len(items)} items, adapter {args.adapter}, JPEG quality {args.quality}")
    print("| metric | PNG input | JPEG input | JPEG - PNG | 95 % interval |\n|---|---|---|---|---|")
    for m in METRICS:
        a, b = [r[m] for r in png], [r[m] for r in jpg]
        mean, lo, hi = paired_bootstrap(a, b)
        out["metrics"][m] = {"png": sum(a) / len(a), "jpeg": sum(b) / len(b), "diff": mean, "ci95": [lo, hi]}
        print(f"| {m} | {sum(a) / len(a):.3f} | {sum(b) / len(b):.3f} | {mean:+.3f} | [{lo:+.3f}, {hi:+.3f}] |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
