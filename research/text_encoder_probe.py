"""Do a base's text encoders carry the caption's object colour at all? (issue 26)

Question: research/text_probe.py found bases whose generation moves with the caption (kind and logo shape
followed) while the object's colour stays at chance. Is the colour lost in the text encoders, or in the
transformer? A nearest-centroid read of the generate prompt's embeddings (T5 states averaged over tokens,
and CLIP's pooled vector, each as the pipeline hands them to the transformer), fitted on 3/4 of the dev
captions and scored on the rest, for the object colour, the logo colour and the kind.

    python research/text_encoder_probe.py --base BASE [--base OTHER ...] --n 256
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = ("object_colour", "logo_colour", "kind")


def features(base: str, captions: list[str]) -> dict[str, np.ndarray]:
    from layerloop.models.config import ModelConfig
    from layerloop.models.factory import build_backbone

    bb = build_backbone(ModelConfig(path=base))
    t5, clip = [], []
    for cap in captions:
        pe, pooled, _ = bb.task_embeddings("generate", cap)
        t5.append(pe[0].mean(0).float().numpy())
        clip.append(pooled[0].float().numpy())
    return {"t5_mean": np.stack(t5), "clip_pooled": np.stack(clip)}


def centroid_accuracy(x: np.ndarray, labels: list[str], split: int) -> float:
    """Nearest class centroid (standardised features) fitted on the first `split` rows, scored on the rest."""
    mu, sd = x[:split].mean(0), x[:split].std(0) + 1e-6
    z = (x - mu) / sd
    names = sorted(set(labels[:split]))
    cents = np.stack([z[:split][[lab == n for lab in labels[:split]]].mean(0) for n in names])
    pred = [names[int(np.argmin(((cents - row) ** 2).sum(1)))] for row in z[split:]]
    return float(np.mean([p == t for p, t in zip(pred, labels[split:])]))


def main(argv=None) -> None:
    from layerloop.models.synthetic import make_split

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", action="append", required=True)
    p.add_argument("--n", type=int, default=256)
    args = p.parse_args(argv)
    metas = [m for _, _, m in make_split("dev", args.n, 32, 1234)]
    split = 3 * args.n // 4
    for base in args.base:
        feats = features(base, [m["caption"] for m in metas])
        for name, x in feats.items():
            accs = {t: centroid_accuracy(x, [m[t] for m in metas], split) for t in TARGETS}
            print(f"{base} {name}: " + ", ".join(f"{t} {a:.3f}" for t, a in accs.items())
                  + f" (held-out {args.n - split}; chance colour 0.077, kind 0.167)", flush=True)


if __name__ == "__main__":
    main()
