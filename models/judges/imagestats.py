"""Small numpy image statistics the oracle and cycle judges turn into scores (formulas in docs/judges.md).

Kept here rather than in models/metrics.py because each one is a judging heuristic (whiteness of a
border ring, logo-colour residue), not a general image metric.
"""
from __future__ import annotations

import numpy as np


def as_array(image) -> np.ndarray:
    """PIL image -> float32 HxWx3 array in [0, 255]."""
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def mean_abs_error(a, b) -> float:
    """Mean absolute difference in [0, 1]; images of different sizes are an error."""
    x, y = as_array(a), as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"image sizes differ: {x.shape} vs {y.shape}")
    return float(np.abs(x - y).mean() / 255.0)


def psnr(a, b, cap: float = 60.0) -> float:
    """PSNR in dB on 8-bit range, capped so identical images give a finite number."""
    x, y = as_array(a), as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"image sizes differ: {x.shape} vs {y.shape}")
    mse = float(((x - y) ** 2).mean())
    return cap if mse <= 255.0 ** 2 * 10 ** (-cap / 10) else 10.0 * np.log10(255.0 ** 2 / mse)


def linear_score(value: float, zero_at: float, one_at: float) -> float:
    """Map `value` linearly so zero_at -> 0 and one_at -> 1, clipped to [0, 1]."""
    return float(np.clip((value - zero_at) / (one_at - zero_at), 0.0, 1.0))


def border_whiteness(image, white_level: int, border_frac: float) -> float:
    """Fraction of the outer ring's pixels whose every channel is >= white_level."""
    x = as_array(image)
    h, w = x.shape[:2]
    bh, bw = max(1, int(round(h * border_frac))), max(1, int(round(w * border_frac)))
    ring = np.ones((h, w), dtype=bool)
    ring[bh:h - bh, bw:w - bw] = False
    return float((x[ring].min(axis=-1) >= white_level).mean())


def logo_palette(logo, white_level: int, size: int) -> np.ndarray:
    """Up to `size` representative colours of the logo's non-white pixels (most frequent 32-level bins)."""
    x = as_array(logo).reshape(-1, 3)
    ink = x[x.min(axis=-1) < white_level]
    if len(ink) == 0:
        return np.zeros((0, 3), dtype=np.float32)
    bins = (ink // 32).astype(np.int64)
    keys = bins[:, 0] * 64 + bins[:, 1] * 8 + bins[:, 2]
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    top = np.argsort(-counts)[:size]
    return np.stack([ink[inverse.ravel() == k].mean(axis=0) for k in top]).astype(np.float32)


def palette_coverage(image, palette: np.ndarray, tol: float) -> float:
    """Fraction of pixels within RGB distance `tol` of any palette colour."""
    if len(palette) == 0:
        return 0.0
    x = as_array(image).reshape(-1, 1, 3)
    dist = np.sqrt(((x - palette[None]) ** 2).sum(-1)).min(axis=1)
    return float((dist <= tol).mean())


def logo_residue(obj, composite, logo, *, white_level: int, palette_size: int, tol: float) -> float:
    """How much of the composite's logo-coloured area is still on the object panel, in [0, 1].

    coverage(object) / coverage(composite), clipped. Known bias: an object whose own colours match the
    logo's counts as residue, so this is blended with the cycle term rather than used alone.
    """
    palette = logo_palette(logo, white_level, palette_size)
    on_composite = palette_coverage(composite, palette, tol)
    if on_composite == 0.0:
        return 0.0
    return float(min(1.0, palette_coverage(obj, palette, tol) / on_composite))


def grey_contrast(image) -> float:
    """Standard deviation of the grey levels in [0, 1]; blank or flat images are near 0."""
    x = as_array(image)
    grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0
    return float(grey.std())
