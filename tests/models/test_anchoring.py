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


def test_logo_pixels_the_object_kept_are_not_trusted_when_the_logo_draws_them():
    comp, smooth = _scene()
    comp[6:10, 10:12] = 150  # a faint part of the logo (30 above the object): the model's object kept it
    smooth[6:10, 10:12] = comp[6:10, 10:12]
    logo = np.full_like(comp, 255)
    logo[6:10, 6:12] = (250, 20, 20)  # ...but the decomposed logo draws it
    faint = np.zeros((16, 16), bool)
    faint[6:10, 10:12] = True
    layers = {"logo": _img(logo), "object": _img(smooth)}
    _, before = anchor(_img(comp), layers, threshold=64, grow=0)
    assert before["object"][faint].min() == 1  # the difference alone trusts the logo's faint part as object
    _, after = anchor(_img(comp), layers, threshold=64, grow=0, drawn_threshold=96)
    assert after["object"][faint].max() == 0 and after["object"][6:10, 6:10].max() == 0
    assert after["object"].sum() == before["object"].sum() - faint.sum()  # nothing else lost
    with pytest.raises(ValueError, match="drawn threshold"):
        anchor(_img(comp), layers, drawn_threshold=300)


def test_trust_maps_survive_the_png_round_trip():
    t = np.zeros((8, 8), np.float32)
    t[2:, :] = 1.0
    assert np.array_equal(trust_from_image(trust_to_image(t)), t)
    with pytest.raises(ValueError):
        trust_to_image(np.full((2, 2), 2.0))


def test_consensus_is_the_mean_of_the_draws():
    from layerloop.models.anchoring import consensus

    white = np.full((8, 8, 3), 255, np.uint8)
    a, b = white.copy(), white.copy()
    a[2:4, 2:4] = 0  # one draw paints a patch the other does not: it fades, the agreed white stays
    got = np.asarray(consensus([{"logo": _img(a)}, {"logo": _img(b)}])["logo"])
    assert (got[2:4, 2:4] == 128).all() and (got[4:, 4:] == 255).all()
    with pytest.raises(ValueError, match="at least 2"):
        consensus([{"logo": _img(a)}])
    with pytest.raises(ValueError, match="same layers"):
        consensus([{"logo": _img(a)}, {"object": _img(b)}])


def test_a_foreground_trust_map_replaces_the_zero_logo_trust_and_is_checked():
    comp, smooth = _scene()
    layers = {"logo": _img(np.full_like(comp, 255)), "object": _img(smooth)}
    given = np.full((16, 16), 0.4, np.float32)
    _, trust = anchor(_img(comp), layers, threshold=64, grow=0, foreground_trust={"logo": given})
    assert np.array_equal(trust["logo"], given) and trust["object"][0, 0] == 1.0
    with pytest.raises(ValueError, match="foreground"):
        anchor(_img(comp), layers, foreground_trust={"object": given})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        anchor(_img(comp), layers, foreground_trust={"logo": given * 3})
