"""Input handling of `layerloop decompose/synthesize`: any size in, mapped back out, bad files refused."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from layerloop.flows.cli.images import InputImageError, fit_to_panel, load_input, restore_from_panel

LIMITS = {"max_pixels": 4096 * 4096, "max_bytes": 10 * 2**20}


def _gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


@pytest.mark.parametrize("size", [(100, 40), (20, 90), (32, 32), (7, 5)])
@pytest.mark.parametrize("mode", ["pad", "resize"])
def test_fit_then_restore_round_trips_geometry(size, mode):
    img = _gradient(*size)
    panel, record = fit_to_panel(img, 32, mode)
    assert panel.size == (32, 32)
    back = restore_from_panel(panel, record)
    assert back.size == size
    err = np.abs(np.asarray(back, np.float32) - np.asarray(img, np.float32)).mean()
    # Down- then up-sampling a smooth gradient loses little; an identity fit loses nothing.
    assert err < (0.5 if size == (32, 32) else 12.0)


def test_pad_keeps_aspect_and_pads_white():
    panel, record = fit_to_panel(Image.new("RGB", (64, 16), (0, 0, 0)), 32, "pad")
    assert record["box"] == [0, 12, 32, 20] and record["scale"] == 0.5
    arr = np.asarray(panel)
    assert (arr[:12] == 255).all() and (arr[20:] == 255).all() and (arr[12:20] == 0).all()


def test_bad_fit_mode():
    with pytest.raises(ValueError, match="--fit"):
        fit_to_panel(_gradient(8, 8), 32, "crop")


def test_load_input_converts_and_records(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 5, 10))
    path = tmp_path / "a.png"
    rgba.save(path)
    img, conversions = load_input(path, **LIMITS)
    assert img.mode == "RGB" and conversions == ["RGBA->RGB"]
    assert img.getpixel((1, 1)) == (0, 0, 255) and img.getpixel((8, 8)) == (255, 255, 255)


def test_load_input_applies_exif_orientation(tmp_path):
    img = _gradient(20, 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "r.jpg"
    img.save(path, exif=exif)
    loaded, conversions = load_input(path, **LIMITS)
    assert loaded.size == (10, 20) and conversions == ["exif-orientation-6"]


@pytest.mark.parametrize("content, match", [
    (b"not an image at all", "not a readable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable image"),
])
def test_load_input_refuses_garbage(tmp_path, content, match):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(InputImageError, match=match):
        load_input(path, **LIMITS)


def test_load_input_refuses_unsupported_format_missing_and_huge(tmp_path):
    ico = tmp_path / "x.ico"
    Image.new("RGB", (16, 16)).save(ico, format="ICO")
    with pytest.raises(InputImageError, match="format ICO is not supported"):
        load_input(ico, **LIMITS)
    with pytest.raises(InputImageError, match="no such file"):
        load_input(tmp_path / "missing.png", **LIMITS)
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(big)
    with pytest.raises(InputImageError, match="pixel limit"):
        load_input(big, max_pixels=200 * 200, max_bytes=LIMITS["max_bytes"])
    with pytest.raises(InputImageError, match="byte limit"):
        load_input(big, max_pixels=LIMITS["max_pixels"], max_bytes=10)
