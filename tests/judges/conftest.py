"""Fixtures of the judge tests: small drawn triplets (good and deliberately bad) and a ground-truth sampler."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw


def make_triplet(seed: int = 0, size: int = 32) -> dict[str, Image.Image]:
    """A clean triplet: shaded object, a two-colour logo on white, and the object wearing the logo."""
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 200, size=3)
    ramp = np.linspace(0.7, 1.1, size)[None, :, None]
    obj = np.clip(np.ones((size, size, 3)) * base * ramp, 0, 255).astype(np.uint8)
    obj_img = Image.fromarray(obj)
    logo = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(logo)
    q = size // 4
    draw.rectangle([q, q, 3 * q, 3 * q], fill=(220, 20, 30))
    draw.ellipse([q + 2, q + 2, 2 * q, 2 * q], fill=(20, 40, 200))
    ink = np.asarray(logo).min(axis=-1) < 230
    comp = obj.copy()
    comp[ink] = (0.85 * np.asarray(logo)[ink] + 0.15 * obj[ink]).astype(np.uint8)
    return {"composite": Image.fromarray(comp), "logo": logo, "object": obj_img}


def spoil(triplet: dict[str, Image.Image], seed: int = 1) -> dict[str, Image.Image]:
    """A bad candidate: logo left on the object, clutter behind the logo."""
    rng = np.random.default_rng(seed)
    logo = np.asarray(triplet["logo"]).copy()
    white = logo.min(axis=-1) >= 230
    logo[white] = rng.integers(0, 255, size=(int(white.sum()), 3))
    return {"composite": triplet["composite"], "logo": Image.fromarray(logo.astype(np.uint8)),
            "object": triplet["composite"].copy()}


class GroundTruthSampler:
    """Implements the Sampler protocol (decompose/synthesize) with the true answers of known triplets."""

    def __init__(self, triplets):
        self._layers = {t["composite"].tobytes(): {"logo": t["logo"], "object": t["object"]} for t in triplets}
        self._composites = {(t["logo"].tobytes(), t["object"].tobytes()): t["composite"] for t in triplets}
        self.calls = []

    def decompose(self, composites):
        self.calls.append(("decompose", len(composites)))
        # an unknown composite is "decomposed" into a blank logo and itself: a model that separates nothing
        blank = {"logo": Image.new("RGB", composites[0].size, "white")} if composites else {}
        return [dict(self._layers.get(c.tobytes(), {**blank, "object": c})) for c in composites]

    def synthesize(self, layers):
        self.calls.append(("synthesize", len(layers)))
        # unknown layer pairs are "synthesized" as the object alone: a model that cannot composite
        return [self._composites.get((l["logo"].tobytes(), l["object"].tobytes()), l["object"]) for l in layers]


@pytest.fixture
def triplets():
    return [make_triplet(seed) for seed in range(4)]
