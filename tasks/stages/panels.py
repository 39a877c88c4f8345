"""Panels between the store (PNG bytes) and the models (PIL RGB images, trust maps as float arrays).

Besides its image panels (composite, then the layers; the last layer is the background) a sample carries
derived panels that `decode` leaves out:
- `rgba_<layer>`: each non-background layer as RGBA with its alpha matte off the white panel
  (models/matting.py, the default method), for users who take the layers into a design tool; since
  manifest schema version 2, older rounds have none.
- `trust_<layer>` (pseudo-label samples only): a greyscale map per layer (models/anchoring.py) of which
  of that layer's pixels the trainer may believe.
"""
from __future__ import annotations

import io

from ...models.anchoring import trust_from_image, trust_to_image
from ...models.matting import matte

TRUST_PREFIX = "trust_"
RGBA_PREFIX = "rgba_"
DERIVED_PREFIXES = (TRUST_PREFIX, RGBA_PREFIX)


def decode(panels: dict[str, bytes]) -> dict:
    """The image panels as RGB images (derived panels left out: trust maps, RGBA mattes)."""
    from PIL import Image

    return {name: Image.open(io.BytesIO(data)).convert("RGB") for name, data in panels.items()
            if not name.startswith(DERIVED_PREFIXES)}


def decode_trust(panels: dict[str, bytes]) -> dict | None:
    """{layer: (H, W) float trust} of a pseudo-label sample; None for a sample without trust panels."""
    from PIL import Image


    maps = {name[len(TRUST_PREFIX):]: trust_from_image(Image.open(io.BytesIO(data)))
            for name, data in panels.items() if name.startswith(TRUST_PREFIX)}
    return maps or None


def encode_trust(trust: dict) -> dict[str, bytes]:
    """Trust maps as `trust_<layer>` PNG panels."""
    return {f"{TRUST_PREFIX}{layer}": _png(trust_to_image(m)) for layer, m in trust.items()}


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # ~3x faster than the default level, ~10 % larger
    return buf.getvalue()


def encode(triplet: dict) -> dict[str, bytes]:
    """PNG members of a sample: its panels in order (composite, *layers), then each non-background
    layer's `rgba_<layer>` matte."""
    layers = [name for name in triplet if name != "composite"]
    return {**{name: _png(img) for name, img in triplet.items()},
            **{f"{RGBA_PREFIX}{name}": _png(matte(triplet[name])) for name in layers[:-1]}}


def rgba_members(panels: dict[str, bytes]) -> dict[str, bytes]:
    """The `rgba_<layer>` members of a sample given as PNG bytes (composite, *layers), e.g. an ingested seed."""
    layers = [name for name in panels if name != "composite" and not name.startswith(DERIVED_PREFIXES)]
    images = decode({name: panels[name] for name in layers[:-1]})  # the background is never matted
    return {f"{RGBA_PREFIX}{name}": _png(matte(img)) for name, img in images.items()}


def decode_rgba(panels: dict[str, bytes]) -> dict:
    """{layer: RGBA image} of the sample's matted layers ({} for a sample of a round before schema version 2)."""
    from PIL import Image

    return {name[len(RGBA_PREFIX):]: Image.open(io.BytesIO(data)).convert("RGBA")
            for name, data in panels.items() if name.startswith(RGBA_PREFIX)}


def for_display(data: bytes, side: int):
    """A panel (PNG bytes) as an RGB image about `side` px wide, for review sheets and reports.

    Small panels (the tiny world's 32 px) are enlarged by a whole factor with nearest-neighbour, so every
    model pixel is a crisp block and nothing is invented by smoothing; large ones are shrunk to `side`.
    Any panel mode (RGB layers, greyscale masks) comes back RGB.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        img = im.convert("RGB")
    longest = max(img.size)
    if longest <= side:
        k = side // longest
        return img.resize((img.width * k, img.height * k), Image.NEAREST) if k > 1 else img
    img.thumbnail((side, side), Image.LANCZOS)
    return img
