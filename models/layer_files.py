"""Layered files design tools open: one decomposition as a PSD (psd-tools) and an OpenRaster file (pyora).

A stack lists layers bottom to top as (name, RGBA image, visible): the input composite as a hidden
reference, then the background layer (the object, opaque), then the other layers (the logos, RGBA with
their mattes) so that the schema's first layer ends on top. Every layer is at the image's full size, so
each one opens where it belongs; the files are flat pixel layers, no effects, readable by psd-tools,
Photoshop, GIMP, Krita and anything that reads OpenRaster.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from PIL import Image

REFERENCE = "input (reference)"

Stack = list[tuple[str, Image.Image, bool]]


def layer_stack(composite: Image.Image, layers: Mapping[str, Image.Image], order: Sequence[str]) -> Stack:
    """Bottom-to-top stack of a decomposition; `order` is the schema's layers (the last is the background)."""
    missing = [name for name in order if name not in layers]
    if missing:
        raise ValueError(f"layer stack lacks {missing} (has {sorted(layers)})")
    sizes = {im.size for im in (composite, *layers.values())}
    if len(sizes) != 1:
        raise ValueError(f"layers of one stack must share a size; got {sorted(sizes)}")
    stack: Stack = [(REFERENCE, composite.convert("RGBA"), False)]
    stack += [(name, layers[name].convert("RGBA"), True) for name in reversed(order)]
    return stack


def write_psd(path: str | Path, stack: Stack) -> Path:
    """A layered 8-bit PSD with one named pixel layer per stack entry, alpha as layer transparency."""
    from psd_tools import PSDImage
    from psd_tools.api.layers import PixelLayer

    size = _size(stack)
    psd = PSDImage.new("RGBA", size, color=(255, 255, 255, 0))  # RGBA: alpha is layer transparency, not a mask
    for name, image, visible in stack:
        layer = PixelLayer.frompil(image, psd, name)
        layer.visible = visible
    return _save(path, psd.save)


def write_ora(path: str | Path, stack: Stack) -> Path:
    """An OpenRaster file (zip of PNG layers + stack.xml) with the same layers, names and visibility."""
    from pyora import Project

    width, height = _size(stack)
    project = Project.new(width, height)
    for name, image, visible in stack:  # pyora puts each new layer above the previous one
        project.add_layer(image, f"/{name}", visible=visible)
    return _save(path, project.save)


def _size(stack: Stack) -> tuple[int, int]:
    if not stack:
        raise ValueError("an empty layer stack has nothing to write")
    return stack[0][1].size


def _save(path: str | Path, save) -> Path:
    """Written to a temporary name and renamed, so a file under the final name is always whole."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as fh:
        save(fh)
    tmp.replace(target)
    return target
