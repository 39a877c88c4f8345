"""Logo-target benchmark: could a pool item's logo pseudo-label come from the real composite?

Pool pseudo-labels anchor the object layer to the real composite (models/anchoring.py) but keep the logo
layer at trust 0. This asks whether the composite could supply the logo too: for every pool candidate of
the given rounds of a store written by `bench/loop.py` (synthetic, so each item's true logo is known), it
scores three logo targets against the truth -- the model's own logo, a white panel, and the composite cut
at the anchored footprint's bounding box and scaled into the logo panel's central 80 % (the renderer's
layout) -- and prints their mean PSNR, shape IoU, the crop's margins over the other two and its error ratio to the model's.

    python bench/loop.py                                          # writes bench-loop-work/store-seed0
    python research/logo_targets.py bench-loop-work/store-seed0 --rounds 1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LOGO_SHARE = 0.8  # the renderer's logo panel: the logo fills the central 80 % of a white panel


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store", help="a store written by bench/loop.py (synthetic pool with hidden truth)")
    p.add_argument("--rounds", type=int, nargs="+", default=[1], help="rounds whose candidates to score")
    return p.parse_args(argv)


def crop_target(composite, trust_object):
    """The composite inside the footprint's bounding box, scaled into the logo panel's layout; None without one."""
    import numpy as np
    from PIL import Image

    ys, xs = np.nonzero(trust_object < 0.5)
    if len(xs) < 2:
        return None
    n, inner = composite.width, int(round(composite.width * LOGO_SHARE))
    crop = composite.crop((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)).resize((inner, inner), Image.BILINEAR)
    canvas = Image.new("RGB", (n, n), (255, 255, 255))
    canvas.paste(crop, ((n - inner) // 2, (n - inner) // 2))
    return canvas


def candidates(store, rounds: list[int]):
    """(decoded panels, trust maps, true triplet) of every pool candidate of `rounds`, accepted or not."""
    import pandas as pd

    from layerloop.storage import schema as S
    from layerloop.tasks.stages.health import candidate_truths
    from layerloop.tasks.stages.panels import decode, decode_trust

    rows = pd.concat([store.read(r, which) for r in rounds for which in ("accepted", "rejected")])
    rows = rows[rows[S.SOURCE] == "cycle"]
    truths = candidate_truths(store, rows)
    for row, panels in store.load_panels(rows):
        trust, truth = decode_trust(panels), truths.get(row[S.SAMPLE_ID])
        if trust and truth is not None:
            yield decode(panels), trust, truth


def score(store, rounds: list[int]) -> dict[str, dict[str, float]]:
    """Mean PSNR and shape IoU against the true logo of each target kind."""
    import numpy as np
    from PIL import Image

    from layerloop.models.metrics import psnr, shape_iou

    found: dict[str, list[tuple[float, float]]] = {"model": [], "white": [], "crop": []}
    for panels, trust, truth in candidates(store, rounds):
        crop = crop_target(panels["composite"], trust["object"])
        if crop is None:
            continue
        white = Image.new("RGB", crop.size, (255, 255, 255))
        for name, img in (("model", panels["logo"]), ("white", white), ("crop", crop)):
            found[name].append((psnr(img, truth["logo"]), shape_iou(img, truth["logo"])))
    if not found["crop"]:
        raise SystemExit(f"no pool candidates with a footprint in rounds {rounds} of {store.uri}")
    return {k: {"psnr": float(np.mean([v[0] for v in vals])), "iou": float(np.mean([v[1] for v in vals])),
                "n": len(vals)} for k, vals in found.items()}


def main(argv=None) -> dict:
    from layerloop.storage.rounds import RoundStore

    args = parse_args(argv)
    if not Path(args.store).exists() and "://" not in args.store:
        raise SystemExit(f"store {args.store} does not exist: run bench/loop.py first")
    result = score(RoundStore(args.store), args.rounds)
    print(f"logo targets of {result['crop']['n']} pool candidates, rounds {args.rounds} of {args.store}")
    print("| target | PSNR dB | shape IoU |\n|---|---|---|")
    for name, r in result.items():
        print(f"| {name} | {r['psnr']:.2f} | {r['iou']:.3f} |")
    for other in ("model", "white"):
        print(f"crop - {other}: {result['crop']['psnr'] - result[other]['psnr']:+.2f} dB, "
              f"IoU {result['crop']['iou'] - result[other]['iou']:+.3f}")
    print(f"crop / model mean squared error: {10 ** ((result['model']['psnr'] - result['crop']['psnr']) / 10):.2f}x")
    return result


if __name__ == "__main__":
    main()
