"""Layered files (models.layer_files) reopened with the readers design tools' users have: psd-tools, pyora."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from layerloop.models.layer_files import REFERENCE, layer_stack, write_ora, write_psd
from layerloop.models.synthetic import render_logo_rgba, render_triplet


@pytest.fixture
def stack():
    triplet = render_triplet(11, 48)[0]
    size = (70, 40)  # not square, not the panel size: layers keep the image's own geometry
    layers = {"logo": render_logo_rgba(11, 48).resize(size), "object": triplet["object"].resize(size)}
    return layer_stack(triplet["composite"].resize(size), layers, ["logo", "object"])


def _same(a: Image.Image, b: Image.Image) -> None:
    x, y = np.asarray(a.convert("RGBA"), int), np.asarray(b.convert("RGBA"), int)
    assert x.shape == y.shape
    assert (x[..., 3] == y[..., 3]).all()
    visible = y[..., 3] > 0
    assert (x[visible] == y[visible]).all()  # a fully transparent pixel's colour is free


def test_the_stack_is_reference_then_background_then_logos():
    triplet = render_triplet(1, 32)[0]
    st = layer_stack(triplet["composite"], {"logo_1": triplet["logo"], "logo_2": triplet["logo"],
                                            "object": triplet["object"]}, ["logo_1", "logo_2", "object"])
    assert [(name, visible) for name, _, visible in st] == [(REFERENCE, False), ("object", True), ("logo_2", True),
                                                            ("logo_1", True)]
    with pytest.raises(ValueError, match="lacks"):
        layer_stack(triplet["composite"], {"object": triplet["object"]}, ["logo", "object"])
    with pytest.raises(ValueError, match="share a size"):
        layer_stack(triplet["composite"], {"logo": triplet["logo"].resize((8, 8)), "object": triplet["object"]},
                    ["logo", "object"])


def test_psd_reopens_with_named_ordered_layers_alpha_and_pixels(tmp_path, stack):
    from psd_tools import PSDImage

    path = write_psd(tmp_path / "x.psd", stack)
    psd = PSDImage.open(path)
    assert psd.size == (70, 40)
    assert [(layer.name, layer.visible) for layer in psd] == [(n, v) for n, _, v in stack]  # bottom to top
    for layer, (_, image, _) in zip(psd, stack):
        assert layer.bbox[2:] <= (70, 40) and not layer.has_mask()  # alpha is transparency, not a mask
        full = Image.new("RGBA", (70, 40), (0, 0, 0, 0))
        full.paste(layer.topil(), layer.bbox[:2])
        _same(full, image)
    assert not list(tmp_path.glob(".*.tmp"))


def test_ora_reopens_with_the_same_layers(tmp_path, stack):
    from pyora import Project

    project = Project.load(str(write_ora(tmp_path / "x.ora", stack)))
    assert project.dimensions == (70, 40)
    assert [(c.name, c.visible) for c in project.children] == [(n, v) for n, _, v in reversed(stack)]  # top first
    for name, image, _ in stack:
        _same(project.get_by_path(f"/{name}").get_image_data(), image)


def test_an_empty_stack_is_refused(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        write_psd(tmp_path / "x.psd", [])
