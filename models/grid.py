"""In-context grid of the method: layer schema, grid assembly/split, per-task masks and prompts.

A sample is one horizontal strip of K+1 square panels `[composite | layer_1 | ... | layer_K]`; a mask
says which panels the Fill model generates (white) and which it is given (black):

- decompose  (tau_D): composite given, every layer generated;
- synthesize (tau_C): layers given, composite generated;
- generate   (tau_G): everything generated from the text prompt.

Pure PIL; no torch here so that storage-side and flow code can use it cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass
from string import Formatter
from typing import Mapping

from PIL import Image

TASKS = ("decompose", "synthesize", "generate")
TASK_SYMBOLS = {"decompose": "tau_D", "synthesize": "tau_C", "generate": "tau_G"}
COMPOSITE = "composite"
# Unknown panels are zeroed by the Fill pipeline before encoding anyway; white keeps previews readable.
BLANK_COLOR = (255, 255, 255)


class GridError(ValueError):
    """A triplet, grid or template that does not fit the layer schema."""


@dataclass(frozen=True)
class LayerSchema:
    """Which layers a composite decomposes into; K layers give K+1 panels, composite first."""

    layers: tuple[str, ...] = ("logo", "object")

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        if not layers:
            raise GridError("a layer schema needs at least one layer")
        if len(set(layers)) != len(layers) or COMPOSITE in layers:
            raise GridError(f"layer names must be unique and not '{COMPOSITE}'; got {layers}")

    @property
    def panels(self) -> tuple[str, ...]:
        return (COMPOSITE, *self.layers)

    @property
    def n_panels(self) -> int:
        return len(self.layers) + 1

    def grid_size(self, panel_size: int) -> tuple[int, int]:
        """(width, height) of a grid of this schema."""
        return panel_size * self.n_panels, panel_size


def generated_panels(task: str, schema: LayerSchema) -> tuple[str, ...]:
    """Panels the model must produce for `task` (the white part of its mask)."""
    _check_task(task)
    if task == "decompose":
        return schema.layers
    if task == "synthesize":
        return (COMPOSITE,)
    return schema.panels


def given_panels(task: str, schema: LayerSchema) -> tuple[str, ...]:
    """Panels the caller must supply for `task`."""
    generated = set(generated_panels(task, schema))
    return tuple(p for p in schema.panels if p not in generated)


def panel_size_of(panels: Mapping[str, Image.Image]) -> int:
    """The common square side of `panels`; GridError if they differ or are not square."""
    sizes = {name: im.size for name, im in panels.items()}
    if not sizes:
        raise GridError("no panels given")
    distinct = set(sizes.values())
    if len(distinct) != 1:
        raise GridError(f"panels must all have the same size; got {sizes}")
    (w, h), = distinct
    if w != h:
        raise GridError(f"panels must be square; got {w}x{h}")
    return w


def make_grid(triplet: Mapping[str, Image.Image], schema: LayerSchema) -> Image.Image:
    """Paste the schema's panels left to right into one RGB strip (every panel required)."""
    missing = [p for p in schema.panels if p not in triplet]
    if missing:
        raise GridError(f"triplet lacks panels {missing}; schema wants {list(schema.panels)}")
    panels = {p: triplet[p] for p in schema.panels}
    size = panel_size_of(panels)
    grid = Image.new("RGB", schema.grid_size(size))
    for i, name in enumerate(schema.panels):
        grid.paste(panels[name].convert("RGB"), (i * size, 0))
    return grid


def fill_missing(panels: Mapping[str, Image.Image], schema: LayerSchema, panel_size: int) -> dict[str, Image.Image]:
    """A full triplet from the given panels, blank panels where a panel is to be generated."""
    unknown = [p for p in panels if p not in schema.panels]
    if unknown:
        raise GridError(f"unknown panels {unknown}; schema has {list(schema.panels)}")
    blank = Image.new("RGB", (panel_size, panel_size), BLANK_COLOR)
    return {p: panels.get(p, blank) for p in schema.panels}


def split_grid(img: Image.Image, schema: LayerSchema) -> dict[str, Image.Image]:
    """Cut a strip made by `make_grid` back into named panels."""
    w, h = img.size
    if w != h * schema.n_panels:
        raise GridError(f"grid {w}x{h} is not {schema.n_panels} square panels of {h} px side by side")
    rgb = img.convert("RGB")
    return {name: rgb.crop((i * h, 0, (i + 1) * h, h)) for i, name in enumerate(schema.panels)}


def task_mask(task: str, schema: LayerSchema, panel_size: int) -> Image.Image:
    """L-mode mask of the grid: 255 over the panels `task` generates, 0 over the given ones."""
    if panel_size <= 0:
        raise GridError(f"panel_size must be positive; got {panel_size}")
    generated = set(generated_panels(task, schema))
    mask = Image.new("L", schema.grid_size(panel_size), 0)
    for i, name in enumerate(schema.panels):
        if name in generated:
            mask.paste(255, (i * panel_size, 0, (i + 1) * panel_size, panel_size))
    return mask


def validate_templates(templates: Mapping[str, str]) -> dict[str, str]:
    """Every task has a template and the only placeholder is `{caption}`; returns a plain dict."""
    missing = [t for t in TASKS if t not in templates]
    if missing:
        raise GridError(f"prompt templates missing for tasks {missing}")
    for task, text in templates.items():
        fields = {f for _, f, _, _ in Formatter().parse(text) if f is not None}
        if fields - {"caption"}:
            raise GridError(f"template for '{task}' may only use {{caption}}; found {sorted(fields)}")
    return dict(templates)


def task_prompt(task: str, templates: Mapping[str, str], caption: str | None = None) -> str:
    """The prompt for `task`, with ` <caption>` substituted where the template says `{caption}`."""
    _check_task(task)
    if task not in templates:
        raise GridError(f"no prompt template for task '{task}'")
    template = templates[task]
    text = f" {caption.strip()}" if caption and caption.strip() else ""
    if text and "{caption}" not in template:
        # A caption silently dropped would make generate() ignore the user's prompt.
        raise GridError(f"template for '{task}' has no {{caption}} slot but a caption was given")
    return template.format(caption=text)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise GridError(f"unknown task '{task}'; expected one of {TASKS}")
