"""Builders shared by the storage tests: tiny PNG panels, sample streams, a corrupt-input corpus, dead pids
and claim polling."""
from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
from PIL import Image

from layerloop.storage import schema as S
from layerloop.storage.lease import is_takeable, newest_claim


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def wait_until_takeable(fs, work_dir: str, max_s: float = 120.0) -> None:
    """Poll until the newest claim under `work_dir` may be taken over (its lease ran out)."""
    deadline = time.monotonic() + max_s
    while not is_takeable(newest_claim(fs, work_dir)[1] or {}):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the claim under {work_dir} stayed live for {max_s:.0f} s")
        time.sleep(0.1)


def png(color=(10, 20, 30), size=(16, 16), noise_seed: int | None = None, mode="RGB") -> bytes:
    """PNG bytes of a flat (or seeded-noise) image; noise makes truncation hit the pixel data."""
    if noise_seed is None:
        img = Image.new(mode, size, color)
    else:
        rng = np.random.default_rng(noise_seed)
        img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def triplet(i: int, size=(16, 16)) -> dict[str, bytes]:
    return {"composite": png((i % 256, 0, 0), size), "logo": png((0, i % 256, 0), size),
            "object": png((0, 0, i % 256), size)}


def samples(prefix: str, n: int, accepted=lambda i: True):
    """(row fields, panels) pairs as the RoundWriter takes them; pixels depend on prefix and index."""
    base = zlib.crc32(prefix.encode()) % 50 * 5
    for i in range(n):
        yield ({S.SAMPLE_ID: f"{prefix}-{i:03d}", S.SOURCE: "generated", S.PROMPT: f"prompt {i}",
                S.ACCEPTED: accepted(i), S.REASON: None if accepted(i) else "judge: low score",
                S.SCORE_OVERALL: (i % 10) / 10}, triplet(base + i))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares a huge image: the classic decompression bomb shape."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def exif_rotated_jpeg(size=(16, 8), orientation=6) -> bytes:
    img = Image.new("RGB", size, (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)


def sixteen_bit_png(size=(16, 16)) -> bytes:
    return encode(Image.new("I;16", size, 40000), "PNG")


def write_item(root, item_id: str, panels: dict[str, bytes], exts: dict[str, str] | None = None, meta=None):
    """<root>/<item_id>/<panel>.<ext> (+ meta.json)."""
    d = root / item_id
    d.mkdir(parents=True)
    for name, data in panels.items():
        (d / f"{name}.{(exts or {}).get(name, 'png')}").write_bytes(data)
    if meta is not None:
        (d / "meta.json").write_text(meta if isinstance(meta, str) else __import__("json").dumps(meta))
    return d
