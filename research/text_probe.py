"""Does a base's generation depend on its prompt at all, and on which words? (issue 26)

Question: bench/lab.py reads kind, colour and shape off tau_G triplets sampled in 8 steps, each item with
its own noise; a low score there cannot tell "the model ignores the caption" from "it follows the
caption but draws a blur the classifiers misread". This probe holds the noise fixed and changes only
the prompt, as the issue's first measurement did (shipped base: captions moved a triplet by 2.9 grey
levels, another noise by 38.8):

  * caption_effect / noise_effect: mean |difference| in grey levels of the generated grid when item i's
    caption is swapped for item j's (same noise), and when item i's noise is swapped (same caption);
  * colour from the caption, isolated: the object panel's median colour inside the TRUE object's mask
    (the renderer's, so a misdrawn silhouette does not matter), nearest palette colour vs the caption's
    object colour; also at t = 1 (one Euler step: the model's conditional mean, no sampling noise);
  * the same for the caption's LOGO colour (a model that ties colour words to the wrong noun).

    python research/text_probe.py --base BASE [--base OTHER ...] --n 64 --json research/results/text_probe.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", action="append", required=True, help="a tiny base folder (repeatable)")
    p.add_argument("--n", type=int, default=64, help="dev items")
    p.add_argument("--steps", type=int, default=8, help="sampler steps (the lab's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.n < 2:
        p.error("--n must be >= 2 (captions are swapped between items)")
    return args


def generate(bb, captions: list[str], seeds: list[int], steps: int) -> list[np.ndarray]:
    """Grids (H, 3H, 3) uint8-valued floats from the generate prompt, every panel masked, noise from `seeds`."""
    import torch
    from PIL import Image

    w, h = bb.grid_size
    white, full = Image.new("RGB", (w, h), "white"), Image.new("L", (w, h), 255)
    out = []
    for cap, seed in zip(captions, seeds):
        pe, pooled, _ = bb.task_embeddings("generate", cap)
        res = bb.pipeline()(prompt_embeds=pe, pooled_prompt_embeds=pooled, image=white, mask_image=full,
                            height=h, width=w, num_inference_steps=steps, guidance_scale=30.0,
                            generator=torch.Generator().manual_seed(seed), output_type="np")
        out.append(res.images[0] * 255.0)
    return out


def nearest_colour(rgb: np.ndarray) -> str:
    from layerloop.models.synthetic import COLOURS

    names = list(COLOURS)
    d = [np.linalg.norm(rgb - np.float32(COLOURS[c])) for c in names]
    return names[int(np.argmin(d))]


def colour_reads(grids, items, size: int) -> dict:
    """Share of items whose generated object, inside the true object's mask, is nearest the caption's
    object colour (and, apart, its logo colour); the truth panels give the reader's own ceiling."""
    from layerloop.models.lab_metrics import object_mask

    hits = {"object": 0, "logo": 0, "truth_object": 0}
    for grid, (_, triplet, meta) in zip(grids, items):
        truth = np.asarray(triplet["object"].convert("RGB"), np.float32)
        mask = object_mask(truth)
        panel = grid[:, 2 * size:3 * size]
        read = nearest_colour(np.median(panel[mask], axis=0))
        hits["object"] += read == meta["object_colour"]
        hits["logo"] += read == meta["logo_colour"]
        hits["truth_object"] += nearest_colour(np.median(truth[mask], axis=0)) == meta["object_colour"]
    return {k: v / len(items) for k, v in hits.items()}


def probe(base: str, n: int, steps: int) -> dict:
    from layerloop.models.config import ModelConfig
    from layerloop.models.factory import build_backbone
    from layerloop.models.synthetic import make_split

    bb = build_backbone(ModelConfig(path=base))
    items = list(make_split("dev", n, bb.panel_size, 1234))
    caps = [m["caption"] for _, _, m in items]
    seeds = list(range(n))
    started = time.perf_counter()
    own = generate(bb, caps, seeds, steps)
    other_caption = generate(bb, caps[1:] + caps[:1], seeds, steps)
    other_noise = generate(bb, caps, seeds[1:] + seeds[:1], steps)
    t1 = generate(bb, caps, seeds, 1)
    diff = lambda a, b: float(np.mean([np.abs(x - y).mean() for x, y in zip(a, b)]))  # noqa: E731
    return {
        "base": bb.base_id, "path": base, "n": n, "steps": steps,
        "caption_effect": diff(own, other_caption), "noise_effect": diff(own, other_noise),
        "colour": colour_reads(own, items, bb.panel_size), "colour_t1": colour_reads(t1, items, bb.panel_size),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv=None) -> list[dict]:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for base in args.base:
        print(f"{base}: 4 x {args.n} generations (~2 min per base at 1 thread)", flush=True)
        r = probe(base, args.n, args.steps)
        rows.append(r)
        c, c1 = r["colour"], r["colour_t1"]
        print(f"{r['path']} ({r['base']}): caption effect {r['caption_effect']:.1f} vs noise effect "
              f"{r['noise_effect']:.1f} grey levels; object colour from the caption {c['object']:.3f} "
              f"(t=1: {c1['object']:.3f}), as the logo's colour {c['logo']:.3f} (t=1: {c1['logo']:.3f}); "
              f"reader on the true objects {c['truth_object']:.3f}; chance 0.077", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
