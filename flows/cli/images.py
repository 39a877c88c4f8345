"""The images `decompose`, `synthesize` and `rebrand` read: what a user may pass, decoding, fitting to a panel.

An input argument is a file, a folder (its images, sorted, not recursive), a glob pattern (quoted, so the
shell leaves it alone) or `round:N` (the composites of committed round N of the store). Each becomes a
`Source` that decodes lazily, so a big folder or round streams. Images of any size are fitted to the
model's square panel (letterboxed on white by default, or stretched with --fit resize) and the model's
outputs are mapped back to the input's size. An unusable file raises InputImageError naming it and why.
"""
from __future__ import annotations

import glob
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image, ImageOps

from ...storage.errors import RoundNotFoundError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
FIT_MODES = ("pad", "resize")
PAD_COLOR = (255, 255, 255)
_ROUND = re.compile(r"^round:(\d+)$")


class InputImageError(ValueError):
    """An input file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class Source:
    """One input image: `label` for messages and the sidecar, `stem` for output names, `load` decodes it."""

    label: str
    stem: str
    load: Callable[[], tuple[Image.Image, list[str]]]


# ----------------------------------------------------------------------------- what the user passed


def expand(args: list[str], *, max_pixels: int, max_bytes: int, store=None) -> tuple[int, Iterator[Source]]:
    """(count, sources) for the arguments in order; a missing file is still a source (it fails when loaded,
    so it is listed with the other failures). `store` is needed only for `round:N` arguments."""
    paths: list[Path] = []
    rounds: list[int] = []
    for arg in args:
        if (m := _ROUND.match(arg)) is not None:
            rounds.append(int(m.group(1)))
        else:
            paths += _paths(arg)
    if rounds and store is None:
        raise ValueError("round:N inputs need a store (--store or store.uri)")
    paths = list(dict.fromkeys(paths))  # a file named twice (itself and a glob) is decomposed once
    rows = {r: _committed(store, r) for r in dict.fromkeys(rounds)}  # before any work is done
    stems = unique_stems(paths)
    count = len(paths) + sum(len(df) for df in rows.values())

    def sources() -> Iterator[Source]:
        for p in paths:
            yield Source(str(p), stems[p], lambda p=p: load_input(p, max_pixels=max_pixels, max_bytes=max_bytes))
        for r, df in rows.items():
            yield from _round_sources(store, r, df, max_pixels)
    return count, sources()


def _paths(arg: str) -> list[Path]:
    path = Path(arg)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ValueError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return found
    if glob.has_magic(arg):
        found = sorted(Path(p) for p in glob.glob(arg) if Path(p).is_file())
        if not found:
            raise ValueError(f"pattern {arg!r} matches no file")
        return found
    return [path]


def _committed(store, r: int):
    try:
        return store.read(r)
    except RoundNotFoundError as exc:  # a KeyError to the store's callers; to a user, a wrong argument
        raise ValueError(f"round:{r}: {exc.args[0]}") from None


def _round_sources(store, r: int, rows, max_pixels: int) -> Iterator[Source]:
    from ...storage import schema as S

    for row, panels in store.load_panels(rows):
        label = f"round:{r}/{row[S.SAMPLE_ID]}"
        data = panels["composite"]
        yield Source(label, str(row[S.SAMPLE_ID]), lambda label=label, data=data: decode(label, data, max_pixels))


def unique_stems(paths: list[Path]) -> dict[Path, str]:
    """Output stem per input; inputs sharing a name (a/x.png, b/x.jpg) get -2, -3 ... suffixes."""
    seen: dict[str, int] = {}
    stems = {}
    for p in paths:
        n = seen[p.stem] = seen.get(p.stem, 0) + 1
        stems[p] = p.stem if n == 1 else f"{p.stem}-{n}"
    return stems


# ----------------------------------------------------------------------------- decoding


def load_input(path: Path, *, max_pixels: int, max_bytes: int) -> tuple[Image.Image, list[str]]:
    """Decode one user image to RGB; returns (image, conversions done). InputImageError when unusable."""
    if not path.is_file():
        raise InputImageError(f"{path}: no such file")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputImageError(f"{path}: file is {size} bytes, over the {max_bytes}-byte limit")
    return decode(str(path), path.read_bytes(), max_pixels)


def decode(label: str, data: bytes, max_pixels: int) -> tuple[Image.Image, list[str]]:
    """Bytes of one image -> (RGB image, conversions done); InputImageError naming `label` when unusable."""
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format
        if fmt not in ALLOWED_FORMATS:
            raise InputImageError(f"{label}: format {fmt} is not supported (use one of {', '.join(ALLOWED_FORMATS)})")
        if img.width * img.height > max_pixels:
            raise InputImageError(f"{label}: {img.width}x{img.height} is over the {max_pixels}-pixel limit")
        img.load()
    except InputImageError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputImageError(f"{label}: not a readable image ({exc})") from None
    return _normalise(img)


def _normalise(img: Image.Image) -> tuple[Image.Image, list[str]]:
    conversions: list[str] = []
    orientation = img.getexif().get(0x0112, 1)
    if orientation != 1:
        conversions.append(f"exif-orientation-{orientation}")
        img = ImageOps.exif_transpose(img)
    if img.mode != "RGB":
        conversions.append(f"{img.mode}->RGB")
        # Transparent pixels become white (the panels' background), not black.
        if img.mode in ("RGBA", "LA", "P"):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, PAD_COLOR)
            img.paste(rgba, mask=rgba.getchannel("A"))
        else:
            img = img.convert("RGB")
    return img, conversions


def fit_to_panel(img: Image.Image, size: int, mode: str) -> tuple[Image.Image, dict]:
    """The image as a size x size panel plus a record of how to map results back to its geometry."""
    if mode not in FIT_MODES:
        raise ValueError(f"--fit must be one of {FIT_MODES}; got {mode!r}")
    w, h = img.size
    record = {"original_size": [w, h], "panel_size": size, "fit": mode}
    if (w, h) == (size, size):
        return img.copy(), {**record, "fit": "none", "box": [0, 0, size, size]}
    if mode == "resize":
        return img.resize((size, size), Image.LANCZOS), {**record, "box": [0, 0, size, size]}
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    ox, oy = (size - nw) // 2, (size - nh) // 2
    panel = Image.new("RGB", (size, size), PAD_COLOR)
    panel.paste(img.resize((nw, nh), Image.LANCZOS), (ox, oy))
    return panel, {**record, "scale": scale, "box": [ox, oy, ox + nw, oy + nh]}


def restore_from_panel(panel: Image.Image, record: dict) -> Image.Image:
    """Inverse of fit_to_panel: crop the content box and resize back to the original size (RGBA stays RGBA)."""
    w, h = record["original_size"]
    content = (panel if panel.mode == "RGBA" else panel.convert("RGB")).crop(tuple(record["box"]))
    return content if content.size == (w, h) else content.resize((w, h), Image.LANCZOS)
