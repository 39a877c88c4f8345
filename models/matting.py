"""The logo layer as RGBA: an alpha matte for a layer drawn on a known white panel.

A decomposition's logo panel is the logo over white (the grid's convention), so its colour c is
a * F + (1 - a) * white for an unknown ink F and alpha a. One equation per channel, four unknowns:
each method below resolves the ambiguity differently, and `research/matting.py` scores them against
the renderer's true logo alpha (`models.synthetic.render_logo_rgba`):

- `threshold`: alpha 1 where any channel is more than 48 grey levels below white, else 0; colour kept.
- `min_alpha`: the least alpha that explains c with an ink in [0, 1] (GIMP's colour-to-alpha on white):
  a = max over channels of (1 - c). Light inks (yellow text, pastel shapes) come out translucent.
- `palette`: the panel's few ink colours (k-means over strongly coloured pixels and flat regions), each
  pixel unmixed along the white -> nearest-ink line, so a pale ink is opaque where it is fully printed.
- `*_fill` (`palette_fill`, `threshold_fill`): then white enclosed by ink (white text on a shape) is
  opaque. White cannot be told from the panel by colour; enclosure, and white ink being off pure white
  (240 vs 255), are the cues, decided per enclosed region, so a ring's open centre stays clear.

The default is the dev split's choice on what users matte, the model's decomposed panels (least
RGB L1 + 1 - alpha IoU on one draw of the seed adapter): `threshold_fill`. On sharp panels (the true
ones) `palette_fill` is better (alpha IoU 0.96 vs 0.92); today's tiny model draws blurred logos, where a
hard edge matches the true alpha better. Revisit when the lab model sharpens (research/README.md).

numpy only; inputs are RGB PIL images or uint8 arrays, outputs straight-alpha RGBA PIL images.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

METHODS = ("palette_fill", "palette", "min_alpha", "threshold", "threshold_fill")
DEFAULT_METHOD = "threshold_fill"

_THRESHOLD = 48 / 255  # metrics.foreground's white tolerance, so `threshold` matches the shape IoU's mask
_NOISE = 0.04          # distance from white below which a pixel is panel, not ink (model outputs are noisy)
_INK = 0.5             # pixels at least this far from white seed the palette
_MAX_INKS = 4          # a shape, its text and a pale ink or an anti-aliasing mix


def matte(panel, method: str = DEFAULT_METHOD) -> Image.Image:
    """The layer on a white `panel` as RGBA with straight alpha, by one of METHODS."""
    if method not in METHODS:
        raise ValueError(f"unknown matting method {method!r}; choose one of {METHODS}")
    d = 1.0 - _rgb(panel) / 255.0  # distance from white per channel: the ink's premultiplied coverage
    strength = d.max(axis=-1)
    if method.startswith("threshold"):
        alpha = (strength > _THRESHOLD).astype(np.float64)
        colour = 1.0 - d
    else:
        alpha = strength if method == "min_alpha" else _palette_alpha(d)
        alpha = np.where(strength < _NOISE, 0.0, alpha)
        colour = 1.0 - d / np.maximum(alpha, 1e-6)[..., None]
    if method.endswith("_fill"):
        holes = _white_ink(_enclosed(alpha > 0.5), strength)
        alpha = np.where(holes, 1.0, alpha)
        colour = np.where(holes[..., None], 1.0 - d, colour)
    return _rgba(colour, alpha)


def over_white(layer: Image.Image) -> Image.Image:
    """The RGBA layer composited over white (what the grid's logo panel shows)."""
    a = np.asarray(layer.convert("RGBA"), np.float64) / 255.0
    rgb = a[..., :3] * a[..., 3:] + (1.0 - a[..., 3:])
    return Image.fromarray(np.uint8(np.clip(rgb * 255, 0, 255).round()), "RGB")


def _rgb(panel) -> np.ndarray:
    if hasattr(panel, "convert"):
        panel = np.asarray(panel.convert("RGB"))
    if not isinstance(panel, np.ndarray) or panel.dtype != np.uint8 or panel.ndim != 3 or panel.shape[2] != 3:
        raise ValueError("matte needs an RGB PIL image or a uint8 (H, W, 3) array")
    return panel.astype(np.float64)


def _rgba(colour: np.ndarray, alpha: np.ndarray) -> Image.Image:
    colour = np.where(alpha[..., None] > 0, np.clip(colour, 0.0, 1.0), 1.0)
    out = np.concatenate([colour, np.clip(alpha, 0.0, 1.0)[..., None]], axis=-1)
    return Image.fromarray(np.uint8((out * 255).round()), "RGBA")


def _palette_alpha(d: np.ndarray) -> np.ndarray:
    """Per pixel, alpha along the white -> ink line of the ink that explains it best."""
    inks = _inks(d)
    if inks.size == 0:  # nothing strongly coloured: the least alpha that explains the pixel
        return d.max(axis=-1)
    norms = (inks ** 2).sum(axis=-1)                                   # (K,)
    a = np.clip(np.tensordot(d, inks, axes=([-1], [-1])) / norms, 0.0, 1.0)  # (H, W, K)
    residual = ((d[..., None, :] - a[..., None] * inks) ** 2).sum(axis=-1)
    return np.take_along_axis(a, residual.argmin(axis=-1)[..., None], axis=-1)[..., 0]


def _inks(d: np.ndarray) -> np.ndarray:
    """Up to _MAX_INKS ink colours (as distances from white): k-means from farthest-point starts.

    Seeds are strongly coloured pixels and the inside of flat regions of any visible colour: an
    anti-aliased edge is a white/ink mix too, but never flat, so a pale ink is found without
    mistaking edges for inks.
    """
    strength = d.max(axis=-1)
    strong = d[(strength >= _INK) | ((strength >= 2 * _NOISE) & _flat(d))]
    if len(strong) == 0:
        return strong.reshape(0, 3)
    centres = [strong[np.argmax(strong.max(axis=-1))]]
    while len(centres) < min(_MAX_INKS, len(strong)):
        gap = np.min([((strong - c) ** 2).sum(axis=-1) for c in centres], axis=0)
        if gap.max() < 0.05:  # the rest is within ~0.2 of a centre: one ink, not two
            break
        centres.append(strong[np.argmax(gap)])
    c = np.stack(centres)
    for _ in range(8):
        label = ((strong[:, None] - c[None]) ** 2).sum(axis=-1).argmin(axis=1)
        c = np.stack([strong[label == k].mean(axis=0) if (label == k).any() else c[k] for k in range(len(c))])
    return c


def _flat(d: np.ndarray, tol: float = 0.03) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood stays within `tol` of them in every channel (borders: not flat)."""
    flat = np.zeros(d.shape[:2], bool)
    core = d[1:-1, 1:-1]
    ok = np.ones(core.shape[:2], bool)
    h, w = d.shape[:2]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = d[1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx]
            ok &= np.abs(shifted - core).max(axis=-1) <= tol
    flat[1:-1, 1:-1] = ok
    return flat


def _enclosed(ink: np.ndarray) -> np.ndarray:
    """Pixels that are not ink and cannot reach the panel's border without crossing ink (4-connected)."""
    outside = np.zeros_like(ink)
    outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1] = ~ink[0, :], ~ink[-1, :], ~ink[:, 0], ~ink[:, -1]
    while True:
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= ~ink
        if (grown == outside).all():
            return ~ink & ~outside
        outside = grown


def _white_ink(enclosed: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """The enclosed regions that are not the panel's white: white ink (240) is not the panel (255).

    Decided per connected region by its median, so a ring's open centre (mostly pure white) stays
    transparent while the anti-aliased edges inside it do not turn into opaque specks.
    """
    label = _components(enclosed)
    keep = np.zeros_like(enclosed)
    for k in np.unique(label[enclosed]):
        region = label == k
        if np.median(strength[region]) >= _NOISE:
            keep |= region
    return keep


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels of `mask` (min-index propagation; -1 outside the mask)."""
    big = mask.size
    label = np.where(mask, np.arange(big).reshape(mask.shape), big)
    while True:
        low = label.copy()
        low[1:] = np.minimum(low[1:], label[:-1])
        low[:-1] = np.minimum(low[:-1], label[1:])
        low[:, 1:] = np.minimum(low[:, 1:], label[:, :-1])
        low[:, :-1] = np.minimum(low[:, :-1], label[:, 1:])
        low = np.where(mask, low, big)
        if (low == label).all():
            return np.where(mask, label, -1)
        label = low
