"""Grid, masks and prompts: round trips for K=2 and K=3 layers, and clear errors on bad input."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from layerloop.models.config import DEFAULT_PROMPT_TEMPLATES
from layerloop.models.grid import (
    GridError, LayerSchema, fill_missing, generated_panels, given_panels, make_grid, split_grid,
    task_mask, task_prompt, validate_templates,
)


def _panels(schema: LayerSchema, size: int, seed: int = 0) -> dict[str, Image.Image]:
    rng = np.random.default_rng(seed)
    return {p: Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for p in schema.panels}


@pytest.mark.parametrize("layers", [("logo", "object"), ("logo", "text", "object")])
def test_grid_round_trip(layers):
    schema = LayerSchema(layers)
    triplet = _panels(schema, 32)
    grid = make_grid(triplet, schema)
    assert grid.size == (32 * (len(layers) + 1), 32)
    back = split_grid(grid, schema)
    assert list(back) == ["composite", *layers]
    for name in schema.panels:
        assert np.array_equal(np.asarray(back[name]), np.asarray(triplet[name]))


@pytest.mark.parametrize("layers", [("logo", "object"), ("logo", "text", "object")])
def test_task_masks_cover_generated_panels(layers):
    schema = LayerSchema(layers)
    for task, white in [("decompose", set(layers)), ("synthesize", {"composite"}),
                        ("generate", set(schema.panels))]:
        mask = split_grid(task_mask(task, schema, 16).convert("RGB"), schema)
        for name, panel in mask.items():
            values = np.unique(np.asarray(panel))
            assert values.tolist() == ([255] if name in white else [0]), (task, name)
        assert set(generated_panels(task, schema)) == white
        assert set(given_panels(task, schema)) == set(schema.panels) - white


def test_fill_missing_blanks_unknown_panels():
    schema = LayerSchema()
    comp = _panels(schema, 16)["composite"]
    full = fill_missing({"composite": comp}, schema, 16)
    assert list(full) == list(schema.panels)
    assert np.asarray(full["logo"]).min() == 255
    with pytest.raises(GridError, match="unknown panels"):
        fill_missing({"shadow": comp}, schema, 16)


def test_prompts_carry_caption():
    plain = task_prompt("generate", DEFAULT_PROMPT_TEMPLATES)
    with_cap = task_prompt("generate", DEFAULT_PROMPT_TEMPLATES, "A red mug with a star logo.")
    assert "{caption}" not in plain
    assert with_cap == plain + " A red mug with a star logo."
    with pytest.raises(GridError, match="no \\{caption\\} slot"):
        task_prompt("decompose", {"decompose": "fixed"}, "x")


@pytest.mark.parametrize("bad, match", [
    (lambda s: make_grid({"composite": Image.new("RGB", (8, 8))}, s), "lacks panels"),
    (lambda s: make_grid({"composite": Image.new("RGB", (8, 8)), "logo": Image.new("RGB", (8, 8)),
                          "object": Image.new("RGB", (16, 16))}, s), "same size"),
    (lambda s: split_grid(Image.new("RGB", (50, 16)), s), "not 3 square panels"),
    (lambda s: task_mask("paint", s, 16), "unknown task"),
    (lambda s: LayerSchema(("logo", "logo")), "unique"),
    (lambda s: LayerSchema(()), "at least one"),
    (lambda s: validate_templates({"decompose": "{x}", "synthesize": "", "generate": ""}), "only use"),
    (lambda s: validate_templates({"decompose": ""}), "missing"),
])
def test_bad_input_is_a_clear_error(bad, match):
    with pytest.raises(GridError, match=match):
        bad(LayerSchema())
