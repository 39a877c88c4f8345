"""Procedural triplet world with ground truth: (composite, logo, clean object) rendered from a seed.

Products (mug, bottle, can, box, t-shirt, bag) are shaded, textured primitives on a plain light
background. A logo (a bold shape plus glyph text) is printed onto the object's surface through a
surface parametrisation, so it wraps around cylinders, follows box perspective and fabric folds,
is multiplied by the object's shading, sits under specular highlights and is finally blurred and
noised with the rest of the photo. None of that is an alpha blend of the two layers, which is the
non-linear coupling the paper is about. numpy + PIL only: the data plane must not need torch.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

KINDS = ("mug", "bottle", "can", "box", "t-shirt", "bag")
SHAPES = ("circle", "triangle", "star", "ring", "square", "diamond", "hexagon")
PATTERNS = ("solid", "stripes", "noise")
WORDS = ("ACME", "ZAP", "NOVA", "OKO", "BREW", "LUX", "KIWI", "MOTO", "PIX", "SOL",
         "VIVA", "ORBIT", "FIZZ", "YUZU", "ECHO", "BOLT", "DUNE", "MAX", "ODE", "RAY")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40), "orange": (235, 130, 30), "yellow": (240, 200, 40),
    "green": (50, 150, 60), "teal": (30, 140, 140), "blue": (40, 80, 200),
    "navy": (25, 35, 90), "purple": (120, 50, 160), "pink": (230, 110, 160),
    "brown": (120, 75, 40), "black": (30, 30, 30), "white": (240, 240, 240),
    "grey": (130, 130, 130),
}
# dev: labeled items for recipe decisions and defaults, so the test split only ever reports;
# pretrain: the tiny base's own triplets (scripts/pretrain_tiny_base.py), never a loop's pool or seeds
SPLITS = ("seeds", "pool", "test", "dev", "pretrain")
ID_PREFIX = {"seeds": "seed", "pool": "pool", "test": "test", "dev": "dev", "pretrain": "pre"}
# Independent RNG streams per split: spawn keys differ, so a test item's seed never equals a
# training item's seed whatever base seed either was made with.
_SPLIT_STREAM = {"seeds": 1, "pool": 2, "test": 3, "dev": 4, "pretrain": 5}
MIN_SIZE, MAX_SIZE = 16, 2048
CLAUSE_JOIN = " with "  # between a caption's object clause and its logo clause (split_caption)
_MIN_RENDER = 128  # supersampling floor: small panels are rendered large and box-filtered down
_MIN_CONTRAST = 150.0  # RGB distance that keeps a logo readable on its object


@dataclass
class _Canvas:
    """Per-pixel scene buffers, painted part by part (painter's algorithm)."""

    res: int
    mask: np.ndarray = field(init=False)
    normal: np.ndarray = field(init=False)
    albedo: np.ndarray = field(init=False)
    gloss: np.ndarray = field(init=False)
    printable: np.ndarray = field(init=False)
    u: np.ndarray = field(init=False)
    v: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        r = self.res
        self.mask = np.zeros((r, r), bool)
        self.normal = np.zeros((r, r, 3), np.float32)
        self.normal[..., 2] = 1.0
        self.albedo = np.zeros((r, r, 3), np.float32)
        self.gloss = np.zeros((r, r), np.float32)
        self.printable = np.zeros((r, r), bool)
        self.u = np.zeros((r, r), np.float32)
        self.v = np.zeros((r, r), np.float32)

    def paint(self, m, normal, albedo, gloss: float, uv=None) -> None:
        self.mask |= m
        self.normal[m] = normal[m]
        self.albedo[m] = albedo[m] if albedo.ndim == 3 else albedo
        self.gloss[m] = gloss
        self.printable[m] = uv is not None
        if uv is not None:
            self.u[m], self.v[m] = uv[0][m], uv[1][m]


@dataclass
class _Style:
    """What a product looks like: colour, surface pattern, light."""

    rgb: np.ndarray
    pattern: str
    light: np.ndarray
    ambient: float
    noise_grid: np.ndarray


# ---------------------------------------------------------------- geometry helpers

def _grid(res: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(res, dtype=np.float32) + 0.5) / res
    return np.meshgrid(c, c)


def _normalize(n: np.ndarray) -> np.ndarray:
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)


def _revolution(X, Y, cx, y0, y1, r0, r1, tilt):
    """A cylinder/cone seen slightly from above: mask, normals and (u, v) wrapping round it."""
    r = r0 + (r1 - r0) * np.clip((Y - y0) / (y1 - y0), 0, 1)
    xn = (X - cx) / r
    xc = np.clip(xn, -1, 1)
    depth = np.sqrt(1 - xc**2)
    bulge = tilt * r * depth  # the front arc of the rim ellipses bends every row of the surface
    m = (np.abs(xn) < 1) & (Y - bulge >= y0) & (Y - bulge <= y1)
    slope = (r1 - r0) / (y1 - y0)
    normal = _normalize(np.stack([xc, -slope * depth, depth], -1))
    u = (np.arcsin(xc) + np.pi / 2) / np.pi
    v = (Y - bulge - y0) / (y1 - y0)
    return m, normal, (u, v)


def _ellipse(X, Y, cx, cy, rx, ry) -> np.ndarray:
    return ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 <= 1


def _flat_normal(res: int, n) -> np.ndarray:
    return np.broadcast_to(_normalize(np.asarray(n, np.float32)), (res, res, 3)).copy()


def _homography(quad) -> np.ndarray:
    """3x3 matrix taking the unit square's corners (TL, TR, BR, BL) to `quad`."""
    src = [(0, 0), (1, 0), (1, 1), (0, 1)]
    rows, rhs = [], []
    for (u, v), (x, y) in zip(src, quad):
        rows.append([u, v, 1, 0, 0, 0, -u * x, -v * x])
        rows.append([0, 0, 0, u, v, 1, -u * y, -v * y])
        rhs += [x, y]
    h = np.linalg.solve(np.array(rows, float), np.array(rhs, float))
    return np.append(h, 1).reshape(3, 3)


def _quad(X, Y, quad):
    """Mask and perspective-correct (u, v) of a planar quadrilateral face."""
    inv = np.linalg.inv(_homography(quad))
    pts = np.stack([X, Y, np.ones_like(X)], -1) @ inv.T.astype(np.float32)
    w = pts[..., 2]
    u, v = pts[..., 0] / w, pts[..., 1] / w
    m = (w > 0) & (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    return m, (u, v)


def _polygon_mask(res: int, pts) -> np.ndarray:
    img = Image.new("L", (res, res), 0)
    ImageDraw.Draw(img).polygon([(x * res, y * res) for x, y in pts], fill=255)
    return np.asarray(img) > 127


# ---------------------------------------------------------------- surface appearance

def _surface_albedo(style: _Style, uv, res: int) -> np.ndarray:
    """Base colour modulated by the product's pattern, laid out in surface coordinates."""
    u, v = uv
    base = np.broadcast_to(style.rgb, (res, res, 3)).astype(np.float32)
    if style.pattern == "stripes":
        band = (np.floor(v * 6) % 2).astype(np.float32)
        tone = 1.0 - 0.35 * band if style.rgb.mean() > 0.5 else 1.0 + 0.6 * band
        return np.clip(base * tone[..., None], 0, 1)
    if style.pattern == "noise":
        return np.clip(base * (0.8 + 0.4 * _sample(style.noise_grid, u, v))[..., None], 0, 1)
    return base.copy()


def _sample(grid: np.ndarray, u, v) -> np.ndarray:
    """Bilinear lookup of a small value-noise grid at surface coordinates in [0, 1]."""
    g = grid.shape[0] - 1
    x, y = np.clip(u, 0, 1) * g, np.clip(v, 0, 1) * g
    x0, y0 = np.minimum(x.astype(int), g - 1), np.minimum(y.astype(int), g - 1)
    fx, fy = x - x0, y - y0
    top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
    bot = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
    return (top * (1 - fy) + bot * fy).astype(np.float32)


def _shade(canvas: _Canvas, style: _Style, shininess: float) -> tuple[np.ndarray, np.ndarray]:
    """Lambert diffuse and Blinn-Phong specular terms per pixel (viewer looks down +z)."""
    n = canvas.normal
    diffuse = np.clip(n @ style.light, 0, 1)
    shade = style.ambient + (1 - style.ambient) * diffuse
    half = _normalize(style.light + np.array([0, 0, 1], np.float32))
    spec = canvas.gloss * np.clip(n @ half, 0, 1) ** shininess
    return shade.astype(np.float32), spec.astype(np.float32)


# ---------------------------------------------------------------- products

def _mug(rng, res, style) -> tuple[_Canvas, float]:
    X, Y = _grid(res)
    c = _Canvas(res)
    cx, r = rng.uniform(0.42, 0.48), rng.uniform(0.22, 0.27)
    y0, y1, tilt = rng.uniform(0.22, 0.3), rng.uniform(0.78, 0.85), 0.3
    side = 1 if rng.random() < 0.5 else -1
    hx, hy = cx + side * r, (y0 + y1) / 2 + 0.03
    ring = _ellipse(X, Y, hx, hy, 0.13, 0.17) & ~_ellipse(X, Y, hx, hy, 0.075, 0.11)
    hn = _normalize(np.stack([X - hx, Y - hy, np.full_like(X, 0.08)], -1))
    c.paint(ring, hn, style.rgb, gloss=0.5)
    m, n, uv = _revolution(X, Y, cx, y0, y1, r, r, tilt)
    c.paint(m, n, _surface_albedo(style, uv, res), gloss=0.6, uv=uv)
    rim = _ellipse(X, Y, cx, y0, r, tilt * r)
    c.paint(rim, _flat_normal(res, (0, -1, 0.4)), style.rgb * 0.45, gloss=0.0)
    inner = _ellipse(X, Y, cx, y0 + 0.006, r * 0.9, tilt * r * 0.85)
    c.paint(inner, _flat_normal(res, (0, 0.3, 1)), style.rgb * 0.3, gloss=0.0)
    return c, 40.0


def _bottle(rng, res, style) -> tuple[_Canvas, float]:
    X, Y = _grid(res)
    c = _Canvas(res)
    cx, r = 0.5, rng.uniform(0.15, 0.19)
    neck_r, y_body = r * 0.38, rng.uniform(0.4, 0.45)
    cap = np.array(COLOURS[rng.choice(["black", "grey", "white", "red"])], np.float32) / 255
    m, n, _ = _revolution(X, Y, cx, 0.06, 0.16, neck_r * 1.1, neck_r * 1.1, 0.2)
    c.paint(m, n, cap, gloss=0.3)
    m, n, _ = _revolution(X, Y, cx, 0.15, y_body - 0.1, neck_r, neck_r, 0.2)
    c.paint(m, n, style.rgb * 0.9, gloss=0.8)
    m, n, _ = _revolution(X, Y, cx, y_body - 0.11, y_body, neck_r, r, 0.2)
    c.paint(m, n, style.rgb * 0.9, gloss=0.8)
    m, n, uv = _revolution(X, Y, cx, y_body, 0.92, r, r, 0.2)
    c.paint(m, n, _surface_albedo(style, uv, res), gloss=0.8, uv=uv)
    return c, 60.0


def _can(rng, res, style) -> tuple[_Canvas, float]:
    X, Y = _grid(res)
    c = _Canvas(res)
    cx, r = 0.5, rng.uniform(0.2, 0.25)
    y0, y1, tilt = rng.uniform(0.25, 0.32), rng.uniform(0.8, 0.86), 0.28
    m, n, uv = _revolution(X, Y, cx, y0, y1, r, r, tilt)
    c.paint(m, n, _surface_albedo(style, uv, res), gloss=1.0, uv=uv)
    lid = _ellipse(X, Y, cx, y0, r, tilt * r)
    c.paint(lid, _flat_normal(res, (0, -1, 0.5)), np.float32([0.75, 0.75, 0.78]), gloss=0.6)
    tab = _ellipse(X, Y, cx, y0 - 0.01, r * 0.25, tilt * r * 0.3)
    c.paint(tab, _flat_normal(res, (0, -1, 0.5)), np.float32([0.55, 0.55, 0.58]), gloss=0.6)
    return c, 25.0


def _box(rng, res, style) -> tuple[_Canvas, float]:
    X, Y = _grid(res)
    c = _Canvas(res)
    w, h, d = rng.uniform(0.36, 0.48), rng.uniform(0.42, 0.56), rng.uniform(0.12, 0.2)
    side = 1 if rng.random() < 0.5 else -1
    x0 = 0.5 - w / 2 - side * d * 0.4
    y0 = 0.5 - h / 2 + d * 0.25
    j = lambda: rng.uniform(-0.02, 0.02)  # noqa: E731 - perspective jitter of one corner
    front = [(x0 + j(), y0 + j()), (x0 + w + j(), y0 + j()), (x0 + w + j(), y0 + h + j()), (x0 + j(), y0 + h + j())]
    off = np.array([side * d * 0.8, -d * 0.6])
    edge = (1, 2) if side > 0 else (0, 3)
    sq = [front[edge[0]], tuple(front[edge[0]] + off), tuple(front[edge[1]] + off), front[edge[1]]]
    top = [front[0], front[1], tuple(front[1] + off), tuple(front[0] + off)]
    for quad, nrm, tone in ((sq, (side, -0.2, 0.5), 0.85), (top, (0, -1, 0.5), 1.0)):
        m, uv = _quad(X, Y, quad)
        c.paint(m, _flat_normal(res, nrm), _surface_albedo(style, uv, res) * tone, gloss=0.15)
    m, uv = _quad(X, Y, front)
    c.paint(m, _flat_normal(res, (side * -0.15, -0.1, 1)), _surface_albedo(style, uv, res), gloss=0.15, uv=uv)
    return c, 10.0


def _tshirt(rng, res, style) -> tuple[_Canvas, float]:
    X, Y = _grid(res)
    c = _Canvas(res)
    bw, top, bot = rng.uniform(0.36, 0.44), 0.16, rng.uniform(0.86, 0.92)
    l, r = 0.5 - bw / 2, 0.5 + bw / 2
    pts = [(0.4, top), (0.6, top), (r + 0.06, top + 0.03), (0.93, 0.33), (0.84, 0.44), (r, 0.36),
           (r, bot), (l, bot), (l, 0.36), (0.16, 0.44), (0.07, 0.33), (l - 0.06, top + 0.03)]
    m = _polygon_mask(res, pts) & ~_ellipse(X, Y, 0.5, top, 0.085, 0.05)
    amp, freq, ph = rng.uniform(0.02, 0.04), rng.uniform(1.5, 2.5), rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * freq * (Y - top) / (bot - top) + ph + 3 * X)
    u = (X - l) / bw + amp * wave  # folds drag the print sideways...
    v = (Y - top) / (bot - top)
    nx = amp * 12 * np.cos(2 * np.pi * freq * v + ph + 3 * X)  # ...and tilt the cloth towards/away from the light
    n = _normalize(np.stack([nx, np.zeros_like(X), np.ones_like(X)], -1))
    body = m & (X >= l) & (X <= r)
    c.paint(m & ~body, n, _surface_albedo(style, (u, v), res) * 0.95, gloss=0.0)
    c.paint(body, n, _surface_albedo(style, (u, v), res), gloss=0.0, uv=(u, v))
    return c, 1.0


def _bag(rng, res, style) -> tuple[_Canvas, float]:
    X, Y = _grid(res)
    c = _Canvas(res)
    w, top, bot = rng.uniform(0.5, 0.6), rng.uniform(0.36, 0.42), rng.uniform(0.88, 0.93)
    flare = rng.uniform(0.0, 0.05)
    quad = [(0.5 - w / 2 + flare, top), (0.5 + w / 2 - flare, top), (0.5 + w / 2, bot), (0.5 - w / 2, bot)]
    handle_img = Image.new("L", (res, res), 0)
    hw = max(2, int(res * 0.035))
    for hx in (0.5 - w / 4, 0.5 + w / 4):
        box = [(hx - 0.11) * res, (top - 0.22) * res, (hx + 0.11) * res, (top + 0.1) * res]
        ImageDraw.Draw(handle_img).arc(box, 180, 360, fill=255, width=hw)
    handle = np.asarray(handle_img) > 127
    strap = np.float32(COLOURS[rng.choice(["brown", "black", "grey"])]) / 255
    c.paint(handle, _flat_normal(res, (0, -0.3, 1)), strap, gloss=0.1)
    m, uv = _quad(X, Y, quad)
    bulge = _normalize(np.stack([1.2 * (uv[0] - 0.5), 0.6 * (uv[1] - 0.6), np.ones_like(X)], -1))
    c.paint(m, bulge, _surface_albedo(style, uv, res), gloss=0.05, uv=uv)
    return c, 4.0


_PRODUCTS = {"mug": _mug, "bottle": _bottle, "can": _can, "box": _box, "t-shirt": _tshirt, "bag": _bag}
# Fraction of the printable (u, v) range a logo may span, per product (wide labels on cylinders).
_LOGO_SPAN = {"mug": 0.5, "bottle": 0.6, "can": 0.6, "box": 0.7, "t-shirt": 0.62, "bag": 0.62}


# ---------------------------------------------------------------- logos

def _logo_rgba(tex: int, shape: str, rgb, text: str, text_rgb) -> np.ndarray:
    """The logo artwork (premultiplied RGBA in [0, 1]) on a transparent tex x tex square."""
    img = Image.new("RGBA", (tex, tex), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    _draw_shape(draw, shape, tex, tuple(rgb) + (255,))
    # a ring has no fill behind its text, so the text takes the ring's colour to read on white
    fill = tuple(rgb if shape == "ring" else text_rgb) + (255,)
    _draw_text(draw, text, tex, fill)
    a = np.asarray(img, np.float32) / 255
    a[..., :3] *= a[..., 3:4]
    return a


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, tex: int, fill) -> None:
    c, r = tex / 2, tex * 0.47
    if shape == "circle":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([c - r, c - r, c + r, c + r], outline=fill, width=int(tex * 0.12))
    elif shape == "square":
        draw.rounded_rectangle([c - r * 0.9, c - r * 0.9, c + r * 0.9, c + r * 0.9], radius=tex * 0.08, fill=fill)
    else:
        sides = {"triangle": 3, "diamond": 4, "hexagon": 6, "star": 5}[shape]
        draw.polygon(_polygon_points(shape, sides, c, r), fill=fill)


def _polygon_points(shape: str, sides: int, c: float, r: float) -> list[tuple[float, float]]:
    if shape == "star":
        ang = np.linspace(-np.pi / 2, 1.5 * np.pi, 11)[:-1]
        rad = np.where(np.arange(10) % 2 == 0, r * 1.05, r * 0.5)
    else:
        ang = np.linspace(-np.pi / 2, 1.5 * np.pi, sides + 1)[:-1]
        rad = np.full(sides, r * (1.05 if sides == 3 else 1.0))
    cy = c + (r * 0.15 if sides == 3 else 0.0)  # a triangle's centroid sits low; recentre it
    return [(c + q * np.cos(a), cy + q * np.sin(a)) for a, q in zip(ang, rad)]


def _draw_text(draw: ImageDraw.ImageDraw, text: str, tex: int, fill) -> None:
    """Bold text fitted inside the shape's centre (width <= 60 % of the logo)."""
    size = int(tex * 0.3)
    while size > 6:
        font = ImageFont.load_default(size=size)
        stroke = max(1, size // 10)
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
        if x1 - x0 <= tex * 0.6:
            break
        size -= 2
    pos = (tex / 2 - (x0 + x1) / 2, tex / 2 - (y0 + y1) / 2)
    draw.text(pos, text, font=font, fill=fill, stroke_width=stroke, stroke_fill=fill)


def _logo_panel(logo: np.ndarray, size: int, render: int) -> Image.Image:
    """The logo layer as the model sees it: flat, centred, 80 % of a white panel."""
    inner = int(round(render * 0.8))
    art = Image.fromarray(np.uint8(np.clip(logo * 255, 0, 255).round()), "RGBA").resize((inner, inner), Image.Resampling.BOX)
    a = np.asarray(art, np.float32) / 255
    rgb = a[..., :3] + (1 - a[..., 3:4])  # premultiplied over white
    canvas = np.ones((render, render, 3), np.float32)
    o = (render - inner) // 2
    canvas[o:o + inner, o:o + inner] = rgb
    return _to_image(canvas, size)


def _logo_layer(logo: np.ndarray, size: int, render: int) -> Image.Image:
    """The logo panel's truth as a straight-alpha RGBA layer: what `_logo_panel` draws over white."""
    inner = int(round(render * 0.8))
    art = Image.fromarray(np.uint8(np.clip(logo * 255, 0, 255).round()), "RGBA").resize((inner, inner), Image.Resampling.BOX)
    canvas = np.zeros((render, render, 4), np.float32)
    o = (render - inner) // 2
    canvas[o:o + inner, o:o + inner] = np.asarray(art, np.float32) / 255  # premultiplied, as _logo_panel reads it
    # _logo_panel clips rgb + (1 - alpha) at 1 where PIL's RGBA resize left rgb above alpha (edges):
    # the same clip keeps this layer's composite over white equal to the panel
    canvas[..., :3] = np.minimum(canvas[..., :3], canvas[..., 3:])
    k = render // size  # render is a multiple of size: a block mean is the BOX filter, without PIL's RGBA handling
    small = canvas.reshape(size, k, size, k, 4).mean(axis=(1, 3))
    alpha = small[..., 3:4]
    straight = np.where(alpha > 0, small[..., :3] / np.maximum(alpha, 1e-6), 1.0)
    out = np.concatenate([np.clip(straight, 0, 1), alpha], axis=-1)
    return Image.fromarray(np.uint8((out * 255).round()), "RGBA")


def render_logo_rgba(seed: int | str, size: int = 32, index: int = 1) -> Image.Image:
    """The true logo layer of `render_triplet(seed, size)` as RGBA (straight alpha): the matting truth.

    The logo panel is this layer over white; its alpha is what a matte of that panel should recover
    (white text on a shape is opaque here, a ring's centre transparent). Cheap: no scene is rendered.
    `index=2`: the second logo of `render_triplet(seed, size, logos=2)` (its panel `logo_2`).
    """
    _check_size(size)
    if index not in (1, 2):
        raise ValueError(f"index must be 1 or 2, got {index!r}")
    seed = seed_value(seed)
    _, (obj_c, logo_c, text_c), shape, text = _draw_identity(np.random.default_rng(seed))
    if index == 2:
        (logo_c, text_c), shape, text = _second_identity(seed, obj_c, logo_c)
    res = size * max(1, -(-_MIN_RENDER // size))
    return _logo_layer(_logo_rgba(max(256, 2 * size), shape, COLOURS[logo_c], text, COLOURS[text_c]), size, res)


# ---------------------------------------------------------------- scene

def _style(rng, kind: str, colour: str) -> _Style:
    light = _normalize(np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.6, -0.1), rng.uniform(0.6, 1.0)], np.float32))
    pattern = "solid" if kind == "can" and rng.random() < 0.5 else str(rng.choice(PATTERNS))
    return _Style(np.float32(COLOURS[colour]) / 255, pattern, light, float(rng.uniform(0.35, 0.5)),
                  rng.random((7, 7)).astype(np.float32))


def _pick_colours(rng) -> tuple[str, str, str]:
    """Object, logo and text colours, each far enough from the one it sits on to stay visible."""
    names = list(COLOURS)
    obj = str(rng.choice(names))
    logo_ok = [n for n in names if n != "white" and _dist(n, obj) > _MIN_CONTRAST]
    logo = str(rng.choice(logo_ok))
    text_ok = [n for n in names if _dist(n, logo) > _MIN_CONTRAST]
    return obj, logo, str(rng.choice(text_ok))


def _dist(a: str, b: str) -> float:
    return float(np.linalg.norm(np.subtract(COLOURS[a], COLOURS[b], dtype=float)))


def _logo_rect(rng, kind: str, canvas: _Canvas) -> tuple[float, float, float, float]:
    """Where the logo goes in surface (u, v) coordinates, square in the surface's own units."""
    span = _LOGO_SPAN[kind] * rng.uniform(0.9, 1.1)
    u0 = 0.5 - span / 2 + rng.uniform(-0.06, 0.06)
    us, vs = canvas.u[canvas.printable], canvas.v[canvas.printable]
    # Aspect of one unit of u vs v on screen, measured from the rendered surface itself.
    ys, xs = np.nonzero(canvas.printable)
    aspect = (np.ptp(xs) + 1) / max(np.ptp(ys) + 1, 1) * max(np.ptp(vs), 1e-3) / max(np.ptp(us), 1e-3)
    if kind in ("mug", "bottle", "can"):
        aspect *= np.pi / 2  # arc length of a half cylinder vs its projected width
    vspan = min(span * aspect, 0.8)
    v0 = 0.5 - vspan / 2 + rng.uniform(-0.05, 0.05)
    return u0, u0 + span, v0, v0 + vspan


def _print_logo(canvas: _Canvas, logo: np.ndarray, rect) -> tuple[np.ndarray, np.ndarray]:
    """Sample the logo through the surface parametrisation: warped premultiplied RGB and coverage."""
    u0, u1, v0, v1 = rect
    s, t = (canvas.u - u0) / (u1 - u0), (canvas.v - v0) / (v1 - v0)
    inside = canvas.printable & (s >= 0) & (s <= 1) & (t >= 0) & (t <= 1)
    rgba = np.stack([_sample_tex(logo[..., k], s, t) for k in range(4)], -1)
    rgba[~inside] = 0
    return rgba[..., :3], rgba[..., 3]


def _sample_tex(chan: np.ndarray, s, t) -> np.ndarray:
    """Bilinear texture lookup with (s, t) in [0, 1] mapping onto the texel grid."""
    n = chan.shape[0]
    x = np.clip(s, 0, 1) * (n - 1)
    y = np.clip(t, 0, 1) * (n - 1)
    x0, y0 = np.minimum(x.astype(int), n - 2), np.minimum(y.astype(int), n - 2)
    fx, fy = x - x0, y - y0
    top = chan[y0, x0] * (1 - fx) + chan[y0, x0 + 1] * fx
    bot = chan[y0 + 1, x0] * (1 - fx) + chan[y0 + 1, x0 + 1] * fx
    return (top * (1 - fy) + bot * fy).astype(np.float32)


def _background(rng, canvas: _Canvas) -> np.ndarray:
    """Plain light backdrop with a soft contact shadow under the product."""
    X, Y = _grid(canvas.res)
    tone = rng.uniform(0.9, 0.97)
    bg = tone - 0.04 * Y  # studio sweep: slightly darker towards the floor
    ys, xs = np.nonzero(canvas.mask)
    cx, yb = xs.mean() / canvas.res, (ys.max() + 1) / canvas.res
    width = (np.ptp(xs) + 1) / canvas.res
    shadow = 0.25 * np.exp(-(((X - cx) / (0.6 * width)) ** 2) - ((Y - yb) / 0.03) ** 2)
    return np.repeat((bg * (1 - shadow))[..., None], 3, -1).astype(np.float32)


def _to_image(arr: np.ndarray, size: int) -> Image.Image:
    img = Image.fromarray(np.uint8(np.clip(arr * 255, 0, 255).round()), "RGB")
    return img if img.size[0] == size else img.resize((size, size), Image.Resampling.BOX)


def _photo(img: Image.Image, rng, size: int) -> tuple[Image.Image, float, float]:
    """Camera effects on the composite only: slight lens blur, then sensor noise."""
    blur = float(rng.uniform(0.3, 0.6)) * size / 32 if size <= 64 else float(rng.uniform(0.5, 1.2))
    sigma = float(rng.uniform(1.0, 3.0))
    soft = np.asarray(img.filter(ImageFilter.GaussianBlur(blur)), np.float32)
    noisy = soft + rng.normal(0, sigma, soft.shape)
    return Image.fromarray(np.uint8(np.clip(noisy, 0, 255).round()), "RGB"), blur, sigma


def _logo_box(alpha: np.ndarray, size: int) -> list[int]:
    ys, xs = np.nonzero(alpha > 0.05)
    k = size / alpha.shape[0]
    return [int(xs.min() * k), int(ys.min() * k), int(np.ceil((xs.max() + 1) * k)), int(np.ceil((ys.max() + 1) * k))]


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"panel size must be an integer in [{MIN_SIZE}, {MAX_SIZE}] px, got {size!r}")


def seed_value(seed: int | str) -> int:
    """A render seed as an int, from an int or its decimal string (how meta.json and the store keep it).

    Item seeds are 64-bit unsigned, beyond int64: JSON readers backed by Arrow reject such integers, so
    meta stores them as strings; old stores hold ints. Every reader of meta["seed"] goes through here.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer, str)):
        raise ValueError(f"seed must be a non-negative integer or its decimal string, got {seed!r}")
    if isinstance(seed, str) and not seed.isdigit():
        raise ValueError(f"seed must be a non-negative integer or its decimal string, got {seed!r}")
    value = int(seed)
    if value < 0:
        raise ValueError(f"seed must be a non-negative integer or its decimal string, got {seed!r}")
    return value


def world_logos(layers) -> int:
    """How many logos the renderer draws for a layer schema: 1 for logo | object, 2 for logo_1 | logo_2 | object."""
    layers = list(layers)
    if layers == ["logo", "object"]:
        return 1
    if layers == ["logo_1", "logo_2", "object"]:
        return 2
    raise ValueError(f"the synthetic world renders layers [logo, object] or [logo_1, logo_2, object]; "
                     f"model.layers is {layers}")


def render_triplet(seed: int | str, size: int = 32, logos: int = 1) -> tuple[dict[str, Image.Image], dict]:
    """One (composite, logo, object) triplet and its meta (kind, colours, logo text, caption).

    Same seed and size -> identical pixels. Everything is drawn at >= 128 px and box-filtered down,
    so a 32 px panel still shows a bold, anti-aliased logo. `seed` may be meta["seed"] as stored (a
    string) or an int: `render_triplet(meta["seed"], meta["size"])` re-renders an item's truth.

    `logos=2` prints a second logo beside the first (the K=3 schema): panels composite, logo_1, logo_2,
    object. The scene, the object and the first logo's identity are those of the same seed with one logo
    (the second logo's draws come from their own stream); the two logos share the first one's label area.
    """
    _check_size(size)
    if logos not in (1, 2):
        raise ValueError(f"logos must be 1 or 2, got {logos!r}")
    seed = seed_value(seed)
    rng = np.random.default_rng(seed)
    res = size * max(1, -(-_MIN_RENDER // size))
    kind, (obj_c, logo_c, text_c), shape, text = _draw_identity(rng)
    style = _style(rng, kind, obj_c)
    canvas, shininess = _PRODUCTS[kind](rng, res, style)
    arts = [_logo_rgba(max(256, 2 * size), shape, COLOURS[logo_c], text, COLOURS[text_c])]
    rects = [_logo_rect(rng, kind, canvas)]
    if logos == 2:
        second = _second_identity(seed, obj_c, logo_c)
        arts.append(_logo_rgba(max(256, 2 * size), second[1], COLOURS[second[0][0]], second[2], COLOURS[second[0][1]]))
        rects = _side_by_side(rects[0])
    prints = [_print_logo(canvas, art, rect) for art, rect in zip(arts, rects)]
    ink, cover = sum(p[0] for p in prints), sum(p[1] for p in prints)
    shade, spec = _shade(canvas, style, shininess)
    bg = _background(rng, canvas)
    m = canvas.mask[..., None]
    obj = np.where(m, canvas.albedo * shade[..., None] + spec[..., None], bg)
    printed = canvas.albedo * (1 - cover[..., None]) + ink  # ink replaces paint, THEN light acts on it
    comp = np.where(m, printed * shade[..., None] + spec[..., None], bg)
    composite, blur, sigma = _photo(_to_image(comp, size), rng, size)
    names = ["logo"] if logos == 1 else ["logo_1", "logo_2"]
    triplet = {"composite": composite, **{n: _logo_panel(a, size, res) for n, a in zip(names, arts)},
               "object": _to_image(obj, size)}
    meta = _meta(seed, size, kind, (obj_c, logo_c, text_c), shape, text, style)
    meta.update(blur_px=round(blur, 4), noise_sigma=round(sigma, 4), logo_box=_logo_box(prints[0][1], size))
    if logos == 2:
        meta.update(_second_meta(second, _logo_box(prints[1][1], size)))
        meta["caption"] += f" and {_article(second[0][0])} {second[0][0]} {second[1]} logo reading '{second[2]}'"
    return triplet, meta


def _second_identity(seed: int, obj_c: str, logo_c: str) -> tuple[tuple[str, str], str, str]:
    """((logo colour, text colour), shape, word) of the second logo: its own stream of the item's seed,
    a colour readable on the object and apart from the first logo's."""
    rng = np.random.default_rng([seed, 2])
    names = list(COLOURS)
    ok = [n for n in names if n not in ("white", logo_c) and _dist(n, obj_c) > _MIN_CONTRAST] or \
        [n for n in names if n != "white" and _dist(n, obj_c) > _MIN_CONTRAST]
    colour = str(rng.choice(ok))
    text_c = str(rng.choice([n for n in names if _dist(n, colour) > _MIN_CONTRAST]))
    return (colour, text_c), str(rng.choice(SHAPES)), str(rng.choice(WORDS))


def _side_by_side(rect) -> list[tuple[float, float, float, float]]:
    """Two square logos in one label area: its left and right halves, a small gap between them."""
    u0, u1, v0, v1 = rect
    half, gap = (u1 - u0) / 2, (u1 - u0) * 0.04
    vmid, vhalf = (v0 + v1) / 2, (v1 - v0) / 4
    return [(u0, u0 + half - gap, vmid - vhalf, vmid + vhalf), (u0 + half + gap, u1, vmid - vhalf, vmid + vhalf)]


def _second_meta(second, box: list[int]) -> dict:
    (colour, text_c), shape, word = second
    return {"logos": 2, "logo_2_colour": colour, "logo_2_rgb": list(COLOURS[colour]), "logo_2_shape": shape,
            "text_2": word, "text_2_colour": text_c, "logo_2_box": box}


def split_caption(caption: str) -> tuple[str, str]:
    """(object clause, logo clause) of a rendered caption: "a red mug" and "a blue star logo reading 'ZAP'".

    The object clause never holds the join word (kinds, colours and pattern words do not), so the first
    join splits it off; a second logo stays in the logo clause."""
    obj, sep, logo = caption.partition(CLAUSE_JOIN)
    if not sep:
        raise ValueError(f"not a rendered caption (no {CLAUSE_JOIN.strip()!r} clause): {caption!r}")
    return obj, logo


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _meta(seed, size, kind, colours, shape, text, style: _Style) -> dict:
    obj_c, logo_c, text_c = colours
    pattern_word = {"solid": "", "stripes": "striped ", "noise": "speckled "}[style.pattern]
    article = "an" if obj_c[0] in "aeiou" else "a"
    logo_article = "an" if logo_c[0] in "aeiou" else "a"
    caption = f"{article} {obj_c} {pattern_word}{kind}{CLAUSE_JOIN}{logo_article} {logo_c} {shape} logo reading '{text}'"
    return {
        # the seed as a string: item seeds exceed int64 (see seed_value)
        "seed": str(seed), "size": int(size), "kind": kind, "pattern": style.pattern,
        "object_colour": obj_c, "object_rgb": list(COLOURS[obj_c]),
        "logo_colour": logo_c, "logo_rgb": list(COLOURS[logo_c]), "logo_shape": shape,
        "text": text, "text_colour": text_c, "caption": caption,
        "light": [round(float(x), 4) for x in style.light], "ambient": round(style.ambient, 4),
    }


# ---------------------------------------------------------------- splits and slices

def _draw_identity(rng) -> tuple[str, tuple[str, str, str], str, str]:
    """The first draws of a render: product kind, colours, logo shape and word (cheap, no pixels)."""
    kind = str(rng.choice(KINDS))
    colours = _pick_colours(rng)
    return kind, colours, str(rng.choice(SHAPES)), str(rng.choice(WORDS))


def peek_identity(seed: int) -> dict[str, str]:
    """Kind, logo shape and word of `render_triplet(seed)` without rendering it."""
    kind, _, shape, text = _draw_identity(np.random.default_rng(seed))
    return {"kind": kind, "logo_shape": shape, "text": text}


@dataclass(frozen=True)
class WorldSlice:
    """A part of the synthetic world: the product kinds, logo shapes and words items may have (None = all).

    Real users hold ~100 labeled triplets from a narrow slice and a far broader unlabeled pool; seeds drawn
    from a slice, with pool and test drawn from everything, mirror that, so the loop has something to learn.
    """

    kinds: tuple[str, ...] | None = None
    shapes: tuple[str, ...] | None = None
    words: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name, allowed in (("kinds", KINDS), ("shapes", SHAPES), ("words", WORDS)):
            values = getattr(self, name)
            if values is None:
                continue
            unknown = sorted(set(values) - set(allowed))
            if not values or unknown:
                raise ValueError(f"slice {name} must be a non-empty subset of {list(allowed)}; "
                                 f"unknown: {unknown or 'none given'}")
            object.__setattr__(self, name, tuple(values))

    @property
    def is_everything(self) -> bool:
        return self.kinds is None and self.shapes is None and self.words is None

    def contains(self, meta: dict) -> bool:
        """Whether an item (its meta: kind, logo_shape, text) lies in this slice."""
        return all(values is None or meta.get(key) in values
                   for key, values in (("kind", self.kinds), ("logo_shape", self.shapes), ("text", self.words)))

    def as_dict(self) -> dict[str, list[str]]:
        """The restricted fields as lists (JSON-able; WorldSlice(**d) rebuilds it)."""
        return {k: list(v) for k, v in (("kinds", self.kinds), ("shapes", self.shapes), ("words", self.words))
                if v is not None}

    def describe(self) -> str:
        parts = [f"{k}={'/'.join(v)}" for k, v in (("kinds", self.kinds), ("shapes", self.shapes),
                                                  ("words", self.words)) if v is not None]
        return ", ".join(parts) or "everything"


EVERYTHING = WorldSlice()

def item_seed(split: str, index: int, seed: int) -> int:
    """The render seed of item `index` of `split`: its own SeedSequence stream per split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(_SPLIT_STREAM[split], int(index)))
    hi, lo = (int(x) for x in ss.generate_state(2, np.uint32))
    return (hi << 32) | lo


def make_split(split: str, n: int, size: int, seed: int,
               where: WorldSlice = EVERYTHING, logos: int = 1) -> Iterator[tuple[str, dict, dict]]:
    """Yield (id, triplet, meta) for `n` items of `split` (one of SPLITS) inside `where`.

    Ids are `<ID_PREFIX>-<base seed>-<index>`; every split draws from its own RNG stream, so
    held-out test items never coincide with training items. Pool items carry their ground truth
    too (for evaluation); `write_split` writes only their composite. A slice keeps the stream's items
    that fall inside it (their indices, hence ids, skip the others), so a sliced split of the same base
    seed is a subset of the unsliced one.
    """
    item_seed(split, 0, seed)  # validates the split name before anything is rendered
    _check_size(size)
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    for i in _slice_indices(split, n, seed, where):
        s = item_seed(split, i, seed)
        triplet, meta = render_triplet(s, size, logos)
        meta.update(split=split, index=i, base_seed=int(seed))
        if not where.is_everything:
            meta["world_slice"] = where.as_dict()  # what the split was drawn from: "seen" for evaluation
        yield f"{ID_PREFIX[split]}-{int(seed)}-{i:05d}", triplet, meta


def _slice_indices(split: str, n: int, seed: int, where: WorldSlice) -> Iterator[int]:
    """Stream indices whose item lies in `where` (peeked, not rendered), the first n of them."""
    found, i = 0, 0
    limit = 1000 * max(n, 1)  # every valid slice has probability >= 1/(6*7*20); this bound is never hit by one
    while found < n:
        if i >= limit:
            raise ValueError(f"slice {where.describe()} matched {found} of {n} items in {limit} draws")
        if where.is_everything or where.contains(peek_identity(item_seed(split, i, seed))):
            found += 1
            yield i
        i += 1


def write_split(split: str, n: int, size: int, seed: int, out: str, where: WorldSlice = EVERYTHING,
                logos: int = 1) -> list[str]:
    """Render a split to `<out>/<id>/{composite,logo,object}.png + meta.json` (pool: composite only; with
    logos=2 the layers are logo_1, logo_2, object).

    Each item is written to a hidden temporary folder and renamed into place, so an interrupted
    run never leaves a half-written item under its final name; rerunning overwrites identically.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    ids = []
    for sid, triplet, meta in make_split(split, n, size, seed, where, logos):
        panels = ("composite",) if split == "pool" else tuple(triplet)
        _write_item(root, sid, {p: triplet[p] for p in panels}, meta)
        ids.append(sid)
    return ids


def _write_item(root: Path, sid: str, panels: dict[str, Image.Image], meta: dict) -> None:
    tmp = root / f".{sid}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, img in panels.items():
        img.save(tmp / f"{name}.png", format="PNG", compress_level=1)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    final = root / sid
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
