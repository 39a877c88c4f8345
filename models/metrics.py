"""Image-quality metrics for decomposition and cycle checks: PSNR, SSIM, shape IoU and cycle error.

numpy only, so they run anywhere (tasks, reports, notebooks). Inputs are PIL images or uint8
arrays of shape (H, W) or (H, W, C); both sides must have the same shape. Floats are refused on
purpose: a [0, 1] float and a [0, 255] float look alike and would silently give wrong numbers.
"""
from __future__ import annotations

import math

import numpy as np

_PEAK = 255.0
_K1, _K2 = 0.01, 0.03  # Wang et al. 2004 stabilisers
_SIGMA, _WIN = 1.5, 11  # Gaussian window of the reference SSIM


def _as_array(img, name: str) -> np.ndarray:
    """uint8 array from a PIL image (converted to RGB unless already RGB or L) or a uint8 array."""
    if hasattr(img, "mode") and hasattr(img, "convert"):
        img = np.asarray(img if img.mode in ("RGB", "L") else img.convert("RGB"))
    if not isinstance(img, np.ndarray):
        raise ValueError(f"{name}: expected a PIL image or a uint8 numpy array, got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8 (0-255), got {img.dtype}; convert explicitly")
    if img.ndim not in (2, 3) or img.size == 0:
        raise ValueError(f"{name}: expected a non-empty (H, W) or (H, W, C) image, got shape {img.shape}")
    return img


def _pair(a, b, read=None, what: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Both sides read the same way (uint8 images by default) and checked to share a shape, as float64."""
    read = read or _as_array
    x, y = read(a, f"first {what}"), read(b, f"second {what}")
    if x.shape != y.shape:
        raise ValueError(f"{what}s differ in shape: {x.shape} vs {y.shape}")
    return x.astype(np.float64), y.astype(np.float64)


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB (peak 255); inf for identical images."""
    x, y = _pair(a, b)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(_PEAK**2 / mse)


def foreground(img, white_tol: int = 48) -> np.ndarray:
    """(H, W) bool: pixels that are not background white (any channel more than white_tol below 255)."""
    x = _as_array(img, "image").astype(np.int16)
    return (255 - x).max(axis=-1) > white_tol if x.ndim == 3 else (255 - x) > white_tol


def shape_iou(a, b, white_tol: int = 48) -> float:
    """IoU of the non-white masks of two panels: does a layer have the right SHAPE, not just colour?

    PSNR rewards a blob of the right colour in a mostly white logo panel; the IoU of what is drawn
    against what should be drawn does not. 1.0 when both panels are blank.
    """
    x, y = _pair(a, b)
    ma, mb = foreground(x.astype(np.uint8), white_tol), foreground(y.astype(np.uint8), white_tol)
    union = int((ma | mb).sum())
    return 1.0 if union == 0 else float((ma & mb).sum()) / union


def cycle_error(a, b) -> float:
    """Mean absolute pixel difference scaled to [0, 1] (0 = identical, 1 = black vs white)."""
    x, y = _pair(a, b)
    return float(np.mean(np.abs(x - y)) / _PEAK)


def _gaussian_kernel(size: int) -> np.ndarray:
    r = np.arange(size) - (size - 1) / 2
    k = np.exp(-(r**2) / (2 * _SIGMA**2))
    return k / k.sum()


def _filter(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 'valid' Gaussian filtering of a (H, W) plane (no padding, as in Wang's code)."""
    n = k.size
    h, w = img.shape
    rows = sum(k[i] * img[:, i:w - n + 1 + i] for i in range(n))
    return sum(k[i] * rows[i:h - n + 1 + i, :] for i in range(n))


def _ssim_plane(x: np.ndarray, y: np.ndarray, k: np.ndarray) -> float:
    c1, c2 = (_K1 * _PEAK) ** 2, (_K2 * _PEAK) ** 2
    mx, my = _filter(x, k), _filter(y, k)
    vx = _filter(x * x, k) - mx * mx
    vy = _filter(y * y, k) - my * my
    cxy = _filter(x * y, k) - mx * my
    num = (2 * mx * my + c1) * (2 * cxy + c2)
    den = (mx * mx + my * my + c1) * (vx + vy + c2)
    return float(np.mean(num / den))


def ssim(a, b) -> float:
    """Mean structural similarity (Gaussian window 11, sigma 1.5), averaged over channels.

    Images smaller than the window use the largest odd window that fits (>= 3 px per side).
    """
    x, y = _pair(a, b)
    side = min(x.shape[:2])
    if side < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {x.shape[:2]}")
    k = _gaussian_kernel(min(_WIN, side if side % 2 else side - 1))
    if x.ndim == 2:
        return _ssim_plane(x, y, k)
    return float(np.mean([_ssim_plane(x[..., c], y[..., c], k) for c in range(x.shape[2])]))


# ----------------------------------------------------------------- RGBA layers (the field's metrics)


def _layer(img, name: str) -> np.ndarray:
    """(H, W, 4) float in [0, 1]: RGBA as given, RGB / L as opaque."""
    if hasattr(img, "mode") and hasattr(img, "convert"):
        img = np.asarray(img if img.mode == "RGBA" else img.convert("RGB"))
    x = _as_array(img, name).astype(np.float64) / _PEAK
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.shape[-1] == 3:
        x = np.concatenate([x, np.ones(x.shape[:2] + (1,))], axis=-1)
    if x.shape[-1] != 4:
        raise ValueError(f"{name}: expected RGB or RGBA channels, got {x.shape[-1]}")
    return x


def alpha_iou(a, b) -> float:
    """Soft IoU of two layers' alpha: sum(min) / sum(max); 1.0 when both are fully transparent."""
    x, y = _pair(a, b, _layer, "layer")
    union = float(np.maximum(x[..., 3], y[..., 3]).sum())
    return 1.0 if union == 0 else float(np.minimum(x[..., 3], y[..., 3]).sum()) / union


def rgb_l1(a, b) -> float:
    """Mean absolute difference of two layers' premultiplied colour (alpha * RGB) in [0, 1].

    Premultiplied, so the colour of a transparent pixel, which no viewer shows, counts for nothing;
    for opaque layers it is the plain RGB L1.
    """
    x, y = _pair(a, b, _layer, "layer")
    return float(np.mean(np.abs(x[..., :3] * x[..., 3:] - y[..., :3] * y[..., 3:])))


def layer_edit_distance(predicted: list, truth: list) -> float:
    """Order-aware edit distance between two bottom-to-top layer stacks, in the style of LayerD's.

    Levenshtein over the stacks: inserting or deleting a layer costs 1, matching layer p to layer t
    costs rgb_l1(p, t) + (1 - alpha_iou(p, t)) (0 for identical layers, at most 2). 0 = the same stack.
    """
    n, m = len(predicted), len(truth)
    cost = np.zeros((n + 1, m + 1))
    cost[:, 0], cost[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            p, t = predicted[i - 1], truth[j - 1]
            modify = rgb_l1(p, t) + 1.0 - alpha_iou(p, t)
            cost[i, j] = min(cost[i - 1, j] + 1, cost[i, j - 1] + 1, cost[i - 1, j - 1] + modify)
    return float(cost[n, m])
