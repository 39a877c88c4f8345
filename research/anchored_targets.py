"""How far can a round's accepted pool pseudo-labels be believed where they are trusted? (issue 11)

An anchored pool target trusts the real composite as the object wherever the model's object did not depart
from it (models/anchoring.py). Where the model missed part of the logo, that part of the logo is then trusted
as object, and training teaches the decomposer to leave logo remnants in the object. In the synthetic world
every pool item has a hidden truth, so this measures, for one round's accepted pool candidates:

  * the share of true logo pixels (composite departs from the true object by > 24) trusted as object;
  * the share of trusted object pixels wrong by > 24 against the true object, and trusted pixels per item;
  * the same if `loop.anchor_drawn_threshold` had been T (pixels where the stored logo departs from white by
    more than T leave the trusted set, grown by `--grow`), for a few T.

It reads the training pool's truth, never the held-out test set.

    python research/anchored_targets.py bench-loop-work/store-seed0 --round 3
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LOGO_DIFF = 24  # a composite pixel departing from the true object by more than this is visibly logo
WRONG = 24  # a trusted object pixel departing from the true object by more than this is wrong


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", help="a store written by bench/loop.py (synthetic pool: truth in the meta)")
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--thresholds", type=float, nargs="*", default=[64, 96, 128, 160])
    p.add_argument("--grow", type=int, default=1)
    return p.parse_args(argv)


def accepted_items(store, round_: int) -> list[tuple]:
    """(stored logo, trusted-object mask, stored object, true object, true composite) per accepted candidate."""
    import numpy as np

    from layerloop.storage import schema as S
    from layerloop.tasks.stages.health import candidate_truths
    from layerloop.tasks.stages.panels import decode, decode_trust

    rows = store.read(round_, "all")
    rows = rows[(rows[S.SOURCE] == "cycle") & rows[S.ACCEPTED].astype(bool)]
    truths = candidate_truths(store, rows)
    rgb = lambda img: np.asarray(img.convert("RGB"), np.float32)  # noqa: E731
    out = []
    for row, panels in store.load_panels(rows):
        truth = truths.get(row[S.SAMPLE_ID])
        trust = decode_trust(panels)
        if truth is None or "object" not in trust:
            continue
        layers = decode(panels)
        out.append((layers["logo"], trust["object"] > 0.5, rgb(layers["object"]), rgb(truth["object"]),
                    rgb(truth["composite"])))
    return out


def stats(items: list[tuple], drop=None) -> dict:
    """Logo pixels trusted, wrong trusted pixels and trusted pixels per item, after removing `drop(logo)`."""
    import numpy as np

    logo_px = logo_trusted = trusted = wrong = 0
    for logo, ok, obj, true_obj, true_comp in items:
        ok = ok & ~drop(logo) if drop else ok
        is_logo = np.abs(true_comp - true_obj).max(-1) > LOGO_DIFF
        logo_px, logo_trusted = logo_px + is_logo.sum(), logo_trusted + (is_logo & ok).sum()
        trusted, wrong = trusted + ok.sum(), wrong + (ok & (np.abs(obj - true_obj).max(-1) > WRONG)).sum()
    return {"logo_trusted": logo_trusted / max(logo_px, 1), "wrong": wrong / max(trusted, 1),
            "trusted_per_item": trusted / max(len(items), 1)}


def drawn(threshold: float, grow: int):
    from layerloop.models.anchoring import drawn_mask, grow_mask

    return lambda logo: grow_mask(drawn_mask([logo], threshold), grow)


def main(argv=None) -> dict:
    from layerloop.storage.rounds import RoundStore

    args = parse_args(argv)
    items = accepted_items(RoundStore(str(Path(args.store).resolve())), args.round)
    if not items:
        raise SystemExit(f"{args.store} round {args.round}: no accepted pool candidates with a truth")
    table = {"as stored": stats(items)}
    table.update({f"drawn > {t:g}, grow {args.grow}": stats(items, drawn(t, args.grow)) for t in args.thresholds})
    print(f"{args.store} round {args.round}: {len(items)} accepted pool candidates")
    print("| object trust | true logo px trusted as object | trusted px wrong by > 24 | trusted px per item |")
    print("|---|---|---|---|")
    for name, s in table.items():
        print(f"| {name} | {s['logo_trusted']:.1%} | {s['wrong']:.2%} | {s['trusted_per_item']:.0f} |")
    return table


if __name__ == "__main__":
    main()
