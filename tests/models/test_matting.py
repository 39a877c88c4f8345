"""Alpha mattes of logo panels (models.matting) against the renderer's true RGBA logo."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from layerloop.models.matting import METHODS, matte, over_white
from layerloop.models.metrics import alpha_iou, rgb_l1
from layerloop.models.synthetic import render_logo_rgba, render_triplet


@pytest.mark.parametrize("seed", range(12))
def test_the_true_logo_layer_over_white_is_the_logo_panel(seed):
    panel = render_triplet(seed, 32)[0]["logo"]
    layer = render_logo_rgba(seed, 32)
    assert layer.mode == "RGBA" and layer.size == (32, 32)
    diff = np.abs(np.asarray(over_white(layer), int) - np.asarray(panel, int))
    assert diff.max() <= 2  # rounding only
    alpha = np.asarray(layer)[..., 3]
    assert (alpha == 0).mean() > 0.2 and (alpha == 255).mean() > 0.1  # a real matte: clear and solid pixels


def _scores(method: str, n: int = 24) -> tuple[float, float]:
    ious, l1s = [], []
    for seed in range(100, 100 + n):
        panel, truth = render_triplet(seed, 32)[0]["logo"], render_logo_rgba(seed, 32)
        m = matte(panel, method)
        ious.append(alpha_iou(m, truth))
        l1s.append(rgb_l1(m, truth))
    return float(np.mean(ious)), float(np.mean(l1s))


def test_the_palette_matte_recovers_the_true_alpha_of_sharp_panels_and_beats_the_naive_ones():
    iou, l1 = _scores("palette_fill")
    assert iou > 0.93 and l1 < 0.02
    for naive in ("min_alpha", "threshold", "threshold_fill"):
        other_iou, other_l1 = _scores(naive)
        assert iou > other_iou + 0.02 and l1 < other_l1


def _panel(draw_fn) -> Image.Image:
    img = Image.new("RGB", (48, 48), (255, 255, 255))
    draw_fn(ImageDraw.Draw(img))
    return img


def test_a_solid_ink_is_opaque_and_the_white_panel_clear():
    panel = _panel(lambda d: d.rectangle([10, 10, 37, 37], fill=(200, 30, 30)))
    a = np.asarray(matte(panel, "palette"))[..., 3]
    assert (a[12:36, 12:36] == 255).all() and (a[:8] == 0).all() and (a[:, 40:] == 0).all()
    assert (np.asarray(matte(Image.new("RGB", (16, 16), "white")))[..., 3] == 0).all()


def test_a_pale_ink_is_opaque_where_min_alpha_makes_it_translucent():
    panel = _panel(lambda d: (d.rectangle([4, 4, 43, 43], fill=(250, 120, 200)), d.ellipse([14, 14, 33, 33], fill=(255, 190, 230))))
    a = np.asarray(matte(panel, "palette"))[..., 3]
    assert a[24, 24] > 240 and a[6, 6] > 240
    assert np.asarray(matte(panel, "min_alpha"))[24, 24, 3] < 90


def test_white_ink_enclosed_by_a_shape_is_opaque_but_a_pure_white_hole_stays_clear():
    text = _panel(lambda d: (d.ellipse([4, 4, 43, 43], fill=(20, 60, 200)), d.rectangle([18, 18, 29, 29], fill=(240, 240, 240))))
    ring = _panel(lambda d: d.ellipse([4, 4, 43, 43], outline=(20, 60, 200), width=6))
    assert np.asarray(matte(text, "palette_fill"))[23, 23, 3] == 255
    assert np.asarray(matte(text, "palette"))[23, 23, 3] < 64
    assert np.asarray(matte(ring, "palette_fill"))[23, 23, 3] == 0
    assert np.asarray(matte(text, "threshold_fill"))[23, 23, 3] == 255
    assert np.asarray(matte(text, "threshold"))[23, 23, 3] == 0


@pytest.mark.parametrize("method", METHODS)
def test_every_method_explains_the_panel_it_was_given(method):
    panel = render_triplet(3, 32)[0]["logo"]
    again = np.asarray(over_white(matte(panel, method)), int)
    # threshold rounds alpha to 0/1; the others clear only what is within the noise floor (0.04) of white
    tolerance = 60 if method.startswith("threshold") else 11
    assert np.abs(again - np.asarray(panel, int)).max() <= tolerance


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unknown matting method"):
        matte(Image.new("RGB", (8, 8)), "magic")
    with pytest.raises(ValueError, match="RGB PIL image"):
        matte(np.zeros((8, 8), np.float32))
