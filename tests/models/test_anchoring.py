"""Composite-anchored pseudo-labels: real composite pixels outside the footprint, trust only there."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from layerloop.models.anchoring import anchor, footprint, trust_from_image, trust_to_image


def _img(a) -> Image.Image:
    return Image.fromarray(np.asarray(a, np.uint8), "RGB")


def _scene():
    comp = np.full((16, 16, 3), 120, np.uint8)
    comp[6:10, 6:10] = (250, 20, 20)  # the printed logo
    smooth = comp.astype(np.int16) + 10  # a model's object: logo removed, everything else a bit off
    smooth[6:10, 6:10] = 125
    return comp, np.clip(smooth, 0, 255).astype(np.uint8)


def test_the_background_is_the_real_composite_outside_the_footprint():
    comp, smooth = _scene()
    layers, trust = anchor(_img(comp), {"logo": _img(np.full_like(comp, 255)), "object": _img(smooth)},
                           threshold=64, grow=0)
    obj = np.asarray(layers["object"])
    inside = np.zeros((16, 16), bool)
    inside[6:10, 6:10] = True
    assert np.array_equal(obj[~inside], comp[~inside])  # real pixels where the model only blurred
    assert np.array_equal(obj[inside], smooth[inside])  # the model's inpainting under the logo
    assert np.array_equal(trust["object"] == 1, ~inside) and trust["logo"].max() == 0


def test_grow_widens_the_footprint_and_bad_arguments_fail():
    comp, smooth = _scene()
    assert footprint(_img(smooth), _img(comp), 64, 1).sum() == 36  # 4x4 grown by one pixel each side
    with pytest.raises(ValueError, match="threshold"):
        footprint(_img(smooth), _img(comp), 300, 0)
    with pytest.raises(ValueError, match="background layer"):
        anchor(_img(comp), {"logo": _img(comp)})


def test_trust_maps_survive_the_png_round_trip():
    t = np.zeros((8, 8), np.float32)
    t[2:, :] = 1.0
    assert np.array_equal(trust_from_image(trust_to_image(t)), t)
    with pytest.raises(ValueError):
        trust_to_image(np.full((2, 2), 2.0))
