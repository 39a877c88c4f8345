"""Metrics against values known in closed form and against a brute-force SSIM."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from layerloop.models.metrics import cycle_error, psnr, ssim


def _img(seed: int, shape=(32, 32, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_identical_images():
    a = _img(0)
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert cycle_error(a, a) == 0.0


def test_psnr_constant_offset_is_exact():
    a = np.full((16, 16, 3), 100, np.uint8)
    b = a + np.uint8(10)  # mse = 100
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    assert cycle_error(a, b) == pytest.approx(10 / 255)


def test_psnr_matches_known_noise_level():
    rng = np.random.default_rng(1)
    a = np.full((256, 256, 3), 128, np.uint8)
    b = np.clip(a + rng.normal(0, 5.0, a.shape).round(), 0, 255).astype(np.uint8)
    # Gaussian noise of sigma 5 (rounded) -> PSNR ~ 20 log10(255 / 5) = 34.15 dB
    assert psnr(a, b) == pytest.approx(20 * math.log10(255 / 5), abs=0.15)


def test_cycle_error_extremes():
    black, white = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    assert cycle_error(black, white) == pytest.approx(1.0)


def test_ssim_constant_images_closed_form():
    a = np.full((20, 20), 100, np.uint8)
    b = np.full((20, 20), 150, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 150 + c1) / (100**2 + 150**2 + c1)  # variances are zero
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9)


def _ssim_brute(x: np.ndarray, y: np.ndarray) -> float:
    """Window-by-window SSIM straight from the definition (weighted moments per 11x11 patch)."""
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cov = (w * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_definition_on_random_planes():
    a = _img(2, (24, 24))
    b = np.clip(a.astype(int) + np.random.default_rng(3).integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(_ssim_brute(a.astype(float), b.astype(float)), rel=1e-9)


def test_ssim_falls_with_noise_and_is_symmetric():
    base = np.asarray(Image.linear_gradient("L").resize((64, 64)).convert("RGB"))
    rng = np.random.default_rng(4)
    noisy = [np.clip(base + rng.normal(0, s, base.shape), 0, 255).astype(np.uint8) for s in (2, 10, 40)]
    scores = [ssim(base, n) for n in noisy]
    assert scores[0] > scores[1] > scores[2]
    assert ssim(base, noisy[1]) == pytest.approx(ssim(noisy[1], base))


def test_pil_and_array_inputs_agree():
    a, b = _img(5), _img(6)
    assert psnr(Image.fromarray(a), Image.fromarray(b)) == pytest.approx(psnr(a, b))
    assert ssim(Image.fromarray(a), b) == pytest.approx(ssim(a, b))
    rgba = Image.fromarray(a).convert("RGBA")
    assert cycle_error(rgba, a) == 0.0  # non-RGB modes are converted to RGB


@pytest.mark.parametrize(
    "a, b, match",
    [
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 3), np.uint8), "uint8"),
        ([[0]], np.zeros((1, 1), np.uint8), "PIL image or a uint8"),
        (np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), "3x3"),
    ],
)
def test_bad_inputs_raise_clear_errors(a, b, match):
    with pytest.raises(ValueError, match=match):
        ssim(a, b)


def test_shape_iou_scores_the_drawn_shape_not_its_colour():
    from layerloop.models.metrics import shape_iou

    blank = np.full((16, 16, 3), 255, np.uint8)
    square = blank.copy()
    square[4:12, 4:12] = (200, 30, 30)
    shifted = blank.copy()
    shifted[8:16, 8:16] = (200, 30, 30)
    recoloured = blank.copy()
    recoloured[4:12, 4:12] = (30, 30, 200)
    assert shape_iou(square, recoloured) == 1.0  # same shape, another colour
    assert shape_iou(square, shifted) == pytest.approx(16 / (64 + 64 - 16))
    assert shape_iou(blank, blank) == 1.0 and shape_iou(square, blank) == 0.0


# ----------------------------------------------------------------- RGBA layers


def _rgba(alpha_box, colour=(200, 30, 30), size=16):
    a = np.zeros((size, size, 4), np.uint8)
    y0, x0, y1, x1 = alpha_box
    a[y0:y1, x0:x1] = (*colour, 255)
    return a


def test_alpha_iou_and_rgb_l1_of_rgba_layers():
    from layerloop.models.metrics import alpha_iou, rgb_l1

    a, b = _rgba((0, 0, 8, 8)), _rgba((0, 4, 8, 12))
    assert alpha_iou(a, a) == 1.0 and rgb_l1(a, a) == 0.0
    assert alpha_iou(a, b) == pytest.approx(32 / 96)
    assert alpha_iou(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)) == 1.0
    # transparent pixels' colour is invisible and does not count; premultiplied colour does
    hidden = a.copy()
    hidden[8:, 8:, :3] = 17
    assert rgb_l1(a, hidden) == 0.0
    assert rgb_l1(a, _rgba((0, 0, 8, 8), colour=(0, 30, 30))) == pytest.approx(200 / 255 * 64 / 256 / 3)
    # RGB images are opaque layers
    assert alpha_iou(Image.new("RGB", (4, 4)), _rgba((0, 0, 2, 4), size=4)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ in shape"):
        alpha_iou(a, _rgba((0, 0, 1, 1), size=8))


def test_layer_edit_distance_counts_edits_in_order():
    from layerloop.models.metrics import layer_edit_distance

    bg = np.full((8, 8, 3), 90, np.uint8)
    logo, other = _rgba((0, 0, 4, 4), size=8), _rgba((4, 4, 8, 8), colour=(0, 0, 250), size=8)
    assert layer_edit_distance([bg, logo], [bg, logo]) == 0.0
    assert layer_edit_distance([bg], [bg, logo]) == 1.0          # a missing layer: one insertion
    assert layer_edit_distance([bg, logo, other], [bg, logo]) == 1.0
    swapped = layer_edit_distance([bg, other], [bg, logo])
    assert 1.0 < swapped <= 2.0                                  # a wrong layer: a modification (IoU 0 + colour)
    assert layer_edit_distance([logo, bg], [bg, logo]) > 0        # order matters
    assert layer_edit_distance([], []) == 0.0
