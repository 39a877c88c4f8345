"""Validation of input images: decode safely, refuse what cannot be trusted, convert the rest to RGB.

Every refusal raises InvalidImage with a short, stable reason code (used for quarantine and tests);
every change made to an accepted image (mode conversion, alpha flattened on white, EXIF orientation,
16-bit scaling) is returned as a human-readable conversion note so it can be recorded in the manifest.
Decompression bombs are refused from the header size against `limits.max_image_pixels` before any
pixel is decoded; PIL's own bomb warning is turned into an error too, without touching its globals.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidImage

# Stable reason codes (each one distinct and tested).
EMPTY_FILE = "empty_file"
FILE_TOO_LARGE = "file_too_large"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated_image"
CORRUPT = "corrupt_image"
BOMB = "decompression_bomb"
TOO_LARGE = "image_too_large"
TOO_SMALL = "image_too_small"
MULTI_FRAME = "multi_frame"
UNSUPPORTED_MODE = "unsupported_mode"
SIZE_MISMATCH = "panel_size_mismatch"
MISSING_PANEL = "missing_panel"
AMBIGUOUS_PANEL = "ambiguous_panel"
DUPLICATE_ID = "duplicate_id"
UNSAFE_NAME = "unsafe_name"
UNSAFE_LINK = "unsafe_link"
UNREADABLE = "unreadable_file"
BAD_META = "bad_meta"

SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_WHITE = (255, 255, 255)


@dataclass
class ValidatedImage:
    image: Any                      # PIL.Image.Image, mode RGB, EXIF orientation applied
    conversions: list[str] = field(default_factory=list)


def _limit(limits: Any, name: str, default: int) -> int:
    return int(getattr(limits, name, default)) if limits is not None else default


def _open(data: bytes, name: str, limits: Any):
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidImage(EMPTY_FILE, f"{name} is 0 bytes")
    if len(data) > _limit(limits, "max_file_bytes", 64 * 2**20):
        raise InvalidImage(FILE_TOO_LARGE, f"{name} is {len(data)} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(BOMB, f"{name}: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage(NOT_AN_IMAGE, f"{name} is not a decodable image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(CORRUPT, f"{name}: {exc}") from exc
    return img


def _check_size(img: Any, name: str, limits: Any) -> None:
    w, h = img.size
    if w * h > _limit(limits, "max_image_pixels", 16 * 2**20):
        raise InvalidImage(BOMB, f"{name} declares {w}x{h} = {w * h} pixels (limit {_limit(limits, 'max_image_pixels', 0)})")
    if max(w, h) > _limit(limits, "max_panel_side", 4096):
        raise InvalidImage(TOO_LARGE, f"{name} is {w}x{h}; the longest side may be {_limit(limits, 'max_panel_side', 0)}")
    if min(w, h) < _limit(limits, "min_panel_side", 8):
        raise InvalidImage(TOO_SMALL, f"{name} is {w}x{h}; the shortest side must be >= {_limit(limits, 'min_panel_side', 0)}")
    if getattr(img, "n_frames", 1) > 1:
        raise InvalidImage(MULTI_FRAME, f"{name} has {img.n_frames} frames; give one still image")


def _load(img: Any, name: str) -> None:
    from PIL import Image, ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone flipped PIL's global: a truncated file would decode as grey filler without error.
        raise InvalidImage(TRUNCATED, "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; refusing to trust partial decodes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = TRUNCATED if "truncat" in str(exc).lower() or isinstance(exc, EOFError) else CORRUPT
        raise InvalidImage(reason, f"{name}: {exc}") from exc


def _sixteen_bit_to_l(img: Any):
    import numpy as np
    from PIL import Image

    arr = np.asarray(img, dtype=np.uint32 if img.mode == "I" else np.uint16)
    top = 65535 if arr.max(initial=0) > 255 or img.mode.startswith("I;16") else 255
    return Image.fromarray((arr.astype(np.float64) * 255.0 / top).round().clip(0, 255).astype(np.uint8), "L")


def _flatten_alpha(img: Any):
    from PIL import Image

    rgba = img.convert("RGBA")
    base = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _to_rgb(img: Any, name: str) -> tuple[Any, list[str]]:
    mode = img.mode
    if mode == "RGB":
        return img, []
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return _sixteen_bit_to_l(img).convert("RGB"), [f"{mode}->8bit->RGB"]
    if mode == "P" and ("transparency" in img.info):
        return _flatten_alpha(img), ["P+transparency->RGB(on white)"]
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _flatten_alpha(img), [f"{mode}->RGB(on white)"]
    if mode in ("P", "L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        try:
            return img.convert("RGB"), [f"{mode}->RGB"]
        except ValueError as exc:
            raise InvalidImage(UNSUPPORTED_MODE, f"{name}: cannot convert mode {mode} to RGB ({exc})") from exc
    raise InvalidImage(UNSUPPORTED_MODE, f"{name} has pixel mode {mode!r}, which layerloop does not convert")


def _apply_exif(img: Any) -> tuple[Any, list[str]]:
    from PIL import ImageOps

    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not sink a good image
        return img, ["exif-unreadable-ignored"]
    if orientation in (None, 1):
        return img, []
    return ImageOps.exif_transpose(img), [f"exif-orientation-{orientation}"]


def _check_complete(img: Any, data: bytes, name: str) -> None:
    # PIL stops at the last IDAT and never looks for IEND: a PNG cut after its pixels would pass.
    if img.format == "PNG" and data.rstrip(b"\x00")[-8:-4] != b"IEND":
        raise InvalidImage(TRUNCATED, f"{name}: PNG has no IEND chunk at its end (file cut short)")


def check_image(data: bytes, *, name: str, limits: Any = None) -> ValidatedImage:
    """Validate and normalize one image; InvalidImage(reason) when it must be refused."""
    img = _open(data, name, limits)
    _check_complete(img, data, name)
    _check_size(img, name, limits)
    _load(img, name)
    img, notes = _apply_exif(img)
    rgb, more = _to_rgb(img, name)
    return ValidatedImage(image=rgb, conversions=notes + more)


def validate_image(data: bytes, *, name: str, limits: Any = None):
    """Validate and normalize one image to RGB (the contract of docs/INTERFACES.md); see check_image."""
    return check_image(data, name=name, limits=limits).image


def check_same_size(images: dict[str, Any], item: str) -> tuple[int, int]:
    """All panels of one sample must share a size; returns it."""
    sizes = {name: img.size for name, img in images.items()}
    if len(set(sizes.values())) != 1:
        raise InvalidImage(SIZE_MISMATCH, f"{item}: panel sizes differ {sizes}")
    return next(iter(sizes.values()))


def check_id(item: str) -> str:
    if not SAFE_ID.match(item):
        raise InvalidImage(UNSAFE_NAME, f"id {item!r} must be 1-100 chars of [A-Za-z0-9_-]")
    return item
