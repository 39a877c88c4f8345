"""Panels between the store (PNG bytes) and the models (PIL RGB images)."""
from __future__ import annotations

import io


def decode(panels: dict[str, bytes]) -> dict:
    from PIL import Image

    return {name: Image.open(io.BytesIO(data)).convert("RGB") for name, data in panels.items()}


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # ~3x faster than the default level, ~10 % larger
    return buf.getvalue()


def encode(triplet: dict) -> dict[str, bytes]:
    return {name: _png(img) for name, img in triplet.items()}
