"""Composite-anchored pseudo-labels: keep a decomposition's targets real wherever they can be.

Outside the pixels the foreground layers cover, the background layer (the clean object) IS the
composite. A model's decomposition of an unlabeled composite gets that wrong almost everywhere (measured
on the tiny world: 58 % of its object error lies outside the logo), and training on it teaches the model
its own smoothness. So a pool pseudo-label is rebuilt from the real composite:

* footprint = where the model's background layer departs from the composite by more than `threshold`
  (0-255, max over channels), grown by `grow` pixels: there the model removed something;
* background target = the real composite outside the footprint, the model's inpainting inside it;
* trust (what the trainer may believe) = 1 on real pixels, 0 inside the footprint; a foreground layer
  (the logo) gets 0 too unless the caller passes its own trust map for it (see `consensus`).

A single decomposition of the logo is no target: it is the model's own output, no better than the model
that made it. The per-pixel mean of k independent decompositions is better than any one of them
(`research/consensus.py`: the seed adapter, 6 draws, logo 13.0 dB and shape IoU 0.69 against 11.4 dB and
0.59-0.60 for one draw), because it keeps what the draws agree on. `consensus` builds that mean; the pool
stage trusts its logo uniformly (`loop.consensus_trust`). Weighting that trust by the draws' agreement
was measured and lost: the draws disagree exactly at the logo's edges, which carry its shape (docs/loop.md).

numpy + PIL only, so the stage code and the benchmarks can build pseudo-labels without torch.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from .evaluation import BACKGROUND_LAYER as BACKGROUND
from .metrics import foreground


def footprint(background: Image.Image, composite: Image.Image, threshold: float, grow: int,
              also: np.ndarray | None = None) -> np.ndarray:
    """(H, W) bool: where the decomposition's background departs from the composite (or `also` is set),
    grown by `grow` px."""
    if background.size != composite.size:
        raise ValueError(f"background {background.size} and composite {composite.size} differ in size")
    if grow < 0 or not 0 <= threshold <= 255:
        raise ValueError(f"threshold must be in [0, 255] and grow >= 0; got {threshold}, {grow}")
    diff = np.abs(_rgb(background) - _rgb(composite)).max(axis=-1) > threshold
    if also is not None:
        if also.shape != diff.shape:
            raise ValueError(f"extra footprint {also.shape} does not match the panel {diff.shape}")
        diff = diff | also
    return grow_mask(diff, grow)


def grow_mask(mask: np.ndarray, px: int) -> np.ndarray:
    """(H, W) bool mask dilated by `px` pixels (3x3 max filter, px times)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    for _ in range(px):
        img = img.filter(ImageFilter.MaxFilter(3))
    return np.asarray(img) > 127


def anchor(composite: Image.Image, layers: dict[str, Image.Image], *, threshold: float = 64.0, grow: int = 1,
           background: str = BACKGROUND, foreground_trust: dict[str, np.ndarray] | None = None,
           drawn_threshold: float | None = None) -> tuple[dict[str, Image.Image], dict[str, np.ndarray]]:
    """(layers with the background anchored to the composite, trust map per layer) of one decomposition.

    `foreground_trust`: {foreground layer: (H, W) trust in [0, 1]} to use instead of 0 for those layers.
    `drawn_threshold`: pixels where a foreground layer is drawn (departs from white by more than this) join
    the footprint too, so the logo the object missed is not trusted as object.
    """
    if background not in layers:
        raise ValueError(f"layers {sorted(layers)} lack the background layer {background!r}")
    given = dict(foreground_trust or {})
    if background in given or not set(given) <= set(layers):
        raise ValueError(f"foreground_trust names {sorted(given)}; it may only name foreground layers of "
                         f"{sorted(set(layers) - {background})}")
    drawn = None if drawn_threshold is None else drawn_mask(
        [img for name, img in layers.items() if name != background], drawn_threshold)
    covered = footprint(layers[background], composite, threshold, grow, also=drawn)
    anchored = np.where(covered[..., None], _rgb(layers[background]), _rgb(composite))
    out = dict(layers)
    out[background] = Image.fromarray(anchored.astype(np.uint8), "RGB")
    trust = {name: np.zeros(covered.shape, np.float32) for name in layers}
    trust.update({name: _trust_map(m, covered.shape, name) for name, m in given.items()})
    trust[background] = (~covered).astype(np.float32)
    return out, trust


def drawn_mask(foregrounds: list[Image.Image], threshold: float) -> np.ndarray:
    """(H, W) bool: pixels where any foreground layer (printed on white) departs from white by > threshold."""
    if not foregrounds:
        raise ValueError("drawn_mask needs at least one foreground layer")
    if not 0 <= threshold <= 255:
        raise ValueError(f"drawn threshold must be in [0, 255]; got {threshold}")
    return np.any([foreground(img, threshold) for img in foregrounds], axis=0)


def mean_image(draws: list[Image.Image]) -> Image.Image:
    """The per-pixel mean of k >= 2 draws of one panel (RGB), rounded to uint8."""
    if len(draws) < 2:
        raise ValueError(f"a mean of draws needs at least 2; got {len(draws)}")
    return Image.fromarray(np.round(np.stack([_rgb(d) for d in draws]).mean(axis=0)).astype(np.uint8), "RGB")


def consensus(draws: list[dict[str, Image.Image]]) -> dict[str, Image.Image]:
    """The per-pixel mean of k >= 2 decompositions of one composite: what the draws agree on stays sharp,
    what only one draw painted fades."""
    if len(draws) < 2:
        raise ValueError(f"consensus needs at least 2 draws of a decomposition; got {len(draws)}")
    names = set(draws[0])
    if any(set(d) != names for d in draws):
        raise ValueError(f"every draw must have the same layers; got {[sorted(d) for d in draws]}")
    return {name: mean_image([d[name] for d in draws]) for name in draws[0]}


def _trust_map(m: np.ndarray, shape: tuple, name: str) -> np.ndarray:
    m = np.asarray(m, np.float32)
    if m.shape != shape or not np.all((m >= 0) & (m <= 1)):
        raise ValueError(f"foreground_trust[{name!r}] must be a {shape} array of values in [0, 1]")
    return m


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
