"""Truth-built classifiers and synthesis gains for the lab benchmark (bench/lab.py, issue 26).

Does a generated triplet show the product kind, object colour and logo shape its prompt asked for? The
classifiers here answer that without any model: each is a nearest-neighbour match against a bank of
templates rendered by the synthetic world (models.synthetic, the renderer's truth), on one panel:

  * kind: the object panel's silhouette (pixels apart from the backdrop, estimated per row from the
    panel's left and right borders) against the silhouettes of rendered objects of every kind;
  * colour: percentiles of the object pixels' RGB against those of rendered objects of every palette
    colour (shading, patterns and highlights make the plain palette colour a poor match on its own);
  * shape: the logo panel's non-white mask against rendered logo panels of every shape.

`validate` measures each classifier on real renders, so a low score on model outputs is the model's, not
the classifier's. `box_psnr` and `synthesis_gains` give tau_C's gain over "return the object panel".
numpy + PIL only.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from .metrics import psnr
from .synthetic import COLOURS, KINDS, SHAPES, make_split

# The bank's items come from the pool split's stream under this base seed: never a dev or test item.
TEMPLATE_SEED = 7
DEFAULT_TEMPLATES = 840  # ~65 templates per colour, the rarest class; dev accuracy ~99 % (kind, shape 100 %)
_OBJECT_TOL = 24.0  # RGB distance from the backdrop that counts as object
_LOGO_TOL = 48  # how far below white a logo-panel pixel must be (models.metrics.foreground's default)
_PERCENTILES = (25, 50, 75, 90)


def _rgb(panel: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) float32 RGB of a PIL panel, box-resized when it has another size."""
    if not hasattr(panel, "convert"):
        raise ValueError(f"expected a PIL image, got {type(panel).__name__}")
    img = panel.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, np.float32)


def object_mask(rgb: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of an object panel apart from its backdrop (a grey sweep estimated per row from
    the panel's outer columns, which no product reaches)."""
    border = max(1, rgb.shape[1] // 16)
    backdrop = np.median(np.concatenate([rgb[:, :border], rgb[:, -border:]], axis=1), axis=1)
    return np.abs(rgb - backdrop[:, None, :]).max(axis=-1) > _OBJECT_TOL


def kind_features(panel: Image.Image, size: int) -> np.ndarray:
    """The object panel's silhouette, flattened."""
    return object_mask(_rgb(panel, size)).ravel().astype(np.float32)


def colour_features(panel: Image.Image, size: int) -> np.ndarray:
    """Per-channel percentiles of the object pixels' RGB (the whole panel's when nothing stands out)."""
    rgb = _rgb(panel, size)
    mask = object_mask(rgb)
    pixels = rgb[mask] if mask.sum() > 3 else rgb.reshape(-1, 3)
    return np.concatenate([np.percentile(pixels, q, axis=0) for q in _PERCENTILES]).astype(np.float32)


def shape_features(panel: Image.Image, size: int) -> np.ndarray:
    """The logo panel's non-white mask, flattened."""
    rgb = _rgb(panel, size)
    return ((255.0 - rgb).max(axis=-1) > _LOGO_TOL).ravel().astype(np.float32)


@dataclass(frozen=True)
class Attribute:
    """What one classifier reads: its name, the meta key holding the truth, the panel it looks at, the
    classes it can answer and how a panel becomes a feature vector."""

    name: str
    meta_key: str
    panel: str
    classes: tuple[str, ...]
    features: Callable[[Image.Image, int], np.ndarray]

    @property
    def chance(self) -> float:
        """Accuracy of a uniform guess."""
        return 1.0 / len(self.classes)


ATTRIBUTES = (
    Attribute("kind", "kind", "object", KINDS, kind_features),
    Attribute("colour", "object_colour", "object", tuple(COLOURS), colour_features),
    Attribute("shape", "logo_shape", "logo", SHAPES, shape_features),
)


@dataclass
class TruthClassifier:
    """Nearest neighbour (squared L2) among templates rendered from the renderer's truth."""

    attribute: Attribute
    size: int
    bank: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        if self.bank.ndim != 2 or len(self.bank) == 0 or len(self.bank) != len(self.labels):
            raise ValueError(f"{self.attribute.name}: the template bank must be a non-empty (n, d) array with one "
                             f"label per row; got {self.bank.shape} and {len(self.labels)} labels")

    def predict(self, panels: Sequence[Image.Image]) -> list[str]:
        """The class of each panel: its nearest template's label."""
        if not panels:
            return []
        x = np.stack([self.attribute.features(p, self.size) for p in panels])
        d = (x * x).sum(1)[:, None] - 2 * x @ self.bank.T + (self.bank * self.bank).sum(1)[None]
        return [str(self.labels[i]) for i in d.argmin(axis=1)]

    def accuracy(self, panels: Sequence[Image.Image], truth: Sequence[str]) -> float:
        """Share of panels classified as their truth."""
        if len(panels) != len(truth) or not panels:
            raise ValueError(f"accuracy needs as many truths as panels (and at least one); got "
                             f"{len(panels)} panels and {len(truth)} truths")
        return float(np.mean([p == t for p, t in zip(self.predict(panels), truth)]))


def build_classifiers(size: int = 32, n_templates: int = DEFAULT_TEMPLATES,
                      seed: int = TEMPLATE_SEED) -> dict[str, TruthClassifier]:
    """One classifier per attribute (kind, colour, shape), their banks from `n_templates` rendered pool items."""
    if not isinstance(n_templates, int) or n_templates < 1:
        raise ValueError(f"n_templates must be a positive integer, got {n_templates!r}")
    items = [(t, m) for _, t, m in make_split("pool", n_templates, size, seed)]
    missing = {a.name: sorted(set(a.classes) - {m[a.meta_key] for _, m in items}) for a in ATTRIBUTES}
    if any(missing.values()):
        raise ValueError(f"{n_templates} templates leave classes without any template: "
                         f"{ {k: v for k, v in missing.items() if v} }; render more")
    return {a.name: TruthClassifier(a, size, np.stack([a.features(t[a.panel], size) for t, _ in items]),
                                    np.array([m[a.meta_key] for _, m in items]))
            for a in ATTRIBUTES}


def score_triplets(classifiers: dict[str, TruthClassifier], triplets: Sequence[dict[str, Image.Image]],
                   metas: Sequence[dict]) -> dict[str, float]:
    """Accuracy of each classifier on the triplets' panels against the metas' truth, keyed by attribute."""
    if len(triplets) != len(metas):
        raise ValueError(f"{len(triplets)} triplets for {len(metas)} metas")
    return {name: c.accuracy([t[c.attribute.panel] for t in triplets], [m[c.attribute.meta_key] for m in metas])
            for name, c in classifiers.items()}


def confusions(classifier: TruthClassifier, panels: Sequence[Image.Image], truth: Sequence[str],
               top: int = 5) -> list[tuple[str, str, int]]:
    """The most frequent (truth, predicted, count) mistakes."""
    wrong = Counter((t, p) for t, p in zip(truth, classifier.predict(panels)) if t != p)
    return [(t, p, n) for (t, p), n in wrong.most_common(top)]


# ----------------------------------------------------------------- synthesis (tau_C) against copying the object


def box_psnr(a: Image.Image, b: Image.Image, box: Sequence[int]) -> float:
    """PSNR of two equally sized images inside box [x0, y0, x1, y1] (pixels, end exclusive)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= a.size[0] and 0 <= y0 < y1 <= a.size[1]):
        raise ValueError(f"box {list(box)} is empty or outside a {a.size[0]}x{a.size[1]} image")
    return psnr(np.asarray(a.convert("RGB"))[y0:y1, x0:x1], np.asarray(b.convert("RGB"))[y0:y1, x0:x1])


def synthesis_gains(composites: Iterable[Image.Image], synthesized: Iterable[Image.Image],
                    objects: Iterable[Image.Image], boxes: Iterable[Sequence[int]]) -> list[dict[str, float]]:
    """Per item: PSNR against the real composite of the synthesis and of the object panel, whole and inside
    the logo's box in the composite, and the synthesis's gain (dB) over the object panel for both."""
    rows = []
    for comp, synth, obj, box in zip(composites, synthesized, objects, boxes, strict=True):
        row = {"psnr_synth": psnr(synth, comp), "psnr_object": psnr(obj, comp),
               "psnr_synth_box": box_psnr(synth, comp, box), "psnr_object_box": box_psnr(obj, comp, box)}
        row["gain"] = _capped(row["psnr_synth"]) - _capped(row["psnr_object"])
        row["gain_box"] = _capped(row["psnr_synth_box"]) - _capped(row["psnr_object_box"])
        rows.append(row)
    return rows


def _capped(value: float) -> float:
    """PSNR with identical images (inf) read as 100 dB, as models.evaluation.aggregate does."""
    return 100.0 if math.isinf(value) else float(value)
