"""Composite-anchored pseudo-labels: keep a decomposition's targets real wherever they can be.

Outside the pixels the foreground layers cover, the background layer (the clean object) IS the
composite. A model's decomposition of an unlabeled composite gets that wrong almost everywhere (measured
on the tiny world: 58 % of its object error lies outside the logo), and training on it teaches the model
its own smoothness. So a pool pseudo-label is rebuilt from the real composite:

* footprint = where the model's background layer departs from the composite by more than `threshold`
  (0-255, max over channels), grown by `grow` pixels: there the model removed something;
* background target = the real composite outside the footprint, the model's inpainting inside it;
* trust (what the trainer may believe) = 1 on real pixels, 0 inside the footprint and on every
  foreground layer (the model's own logo is never a target).

numpy + PIL only, so the stage code and the benchmarks can build pseudo-labels without torch.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from layerloop.models.evaluation import BACKGROUND_LAYER as BACKGROUND


def footprint(background: Image.Image, composite: Image.Image, threshold: float, grow: int) -> np.ndarray:
    """(H, W) bool: where the decomposition's background departs from the composite, grown by `grow` px."""
    if background.size != composite.size:
        raise ValueError(f"background {background.size} and composite {composite.size} differ in size")
    if grow < 0 or not 0 <= threshold <= 255:
        raise ValueError(f"threshold must be in [0, 255] and grow >= 0; got {threshold}, {grow}")
    diff = np.abs(_rgb(background) - _rgb(composite)).max(axis=-1) > threshold
    mask = Image.fromarray(diff.astype(np.uint8) * 255)
    for _ in range(grow):
        mask = mask.filter(ImageFilter.MaxFilter(3))
    return np.asarray(mask) > 127


def anchor(composite: Image.Image, layers: dict[str, Image.Image], *, threshold: float = 64.0, grow: int = 1,
           background: str = BACKGROUND) -> tuple[dict[str, Image.Image], dict[str, np.ndarray]]:
    """(layers with the background anchored to the composite, trust map per layer) of one decomposition."""
    if background not in layers:
        raise ValueError(f"layers {sorted(layers)} lack the background layer {background!r}")
    covered = footprint(layers[background], composite, threshold, grow)
    anchored = np.where(covered[..., None], _rgb(layers[background]), _rgb(composite))
    out = dict(layers)
    out[background] = Image.fromarray(anchored.astype(np.uint8), "RGB")
    trust = {name: np.zeros(covered.shape, np.float32) for name in layers}
    trust[background] = (~covered).astype(np.float32)
    return out, trust


def trust_to_image(trust: np.ndarray) -> Image.Image:
    """A trust map as an 8-bit greyscale panel (255 = fully trusted), the form the store keeps."""
    if trust.ndim != 2 or not np.all((trust >= 0) & (trust <= 1)):
        raise ValueError("a trust map is a 2-D array of values in [0, 1]")
    return Image.fromarray(np.round(trust * 255).astype(np.uint8), "L")


def trust_from_image(img: Image.Image) -> np.ndarray:
    """The inverse of trust_to_image: float32 in [0, 1]."""
    return np.asarray(img.convert("L"), np.float32) / 255.0


def _rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), np.float32)
