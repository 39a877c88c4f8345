"""LoRA files: diffusers format, model card, load through FluxFillPipeline.load_lora_weights, unload."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from layerloop.models.config import LoraConfig
from layerloop.models.grid import make_grid, task_mask
from layerloop.models.lora_io import (
    AdapterError, WEIGHTS_NAME, load_adapter, read_adapter_metadata, read_adapter_state, save_adapter,
    unload_adapter,
)
from layerloop.models.trainer import attach_lora, detach_lora


@pytest.fixture(scope="module")
def backbone(random_tiny_backbone):
    """A module's own randomly initialised tiny backbone (the tests attach and detach LoRAs on it)."""
    return random_tiny_backbone


def _fill_call(backbone) -> np.ndarray:
    """A full FluxFillPipeline decomposition call on a fixed grid, seeded."""
    rng = np.random.default_rng(0)
    trip = {p: Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for p in backbone.schema.panels}
    grid = make_grid(trip, backbone.schema)
    pe, pooled, _ = backbone.task_embeddings("decompose")
    out = backbone.pipeline()(
        image=grid, mask_image=task_mask("decompose", backbone.schema, 32), prompt_embeds=pe,
        pooled_prompt_embeds=pooled, height=32, width=96, num_inference_steps=3, guidance_scale=1.0,
        generator=torch.Generator().manual_seed(1), output_type="np",
    ).images
    return out[0]


def _random_adapter(backbone, lora: LoraConfig) -> dict:
    params = attach_lora(backbone.transformer, lora, seed=0)
    with torch.no_grad():
        for i, (name, p) in enumerate(sorted(params.items())):
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(i))
    return params


def test_saved_adapter_loads_through_the_pipeline_with_the_same_outputs(backbone, tmp_path):
    base = _fill_call(backbone)
    # alpha != rank: the scale must survive through diffusers' lora metadata
    _random_adapter(backbone, LoraConfig(rank=4, alpha=8))
    try:
        in_memory = _fill_call(backbone)
        path = save_adapter(backbone, str(tmp_path), card={"metrics": {"loss_final": 0.1}, "data_rounds": [0, 1]})
    finally:
        detach_lora(backbone.transformer)
    assert np.abs(_fill_call(backbone) - base).max() < 1e-5, "detaching must restore the base model"
    assert np.abs(in_memory - base).mean() > 1e-3, "the adapter must change the output for this test to mean anything"

    keys = list(load_file(path))
    assert all(k.startswith("transformer.") and ".lora_" in k and "base_model" not in k for k in keys)
    meta = read_adapter_metadata(str(tmp_path))
    assert meta["r"] == 4 and meta["lora_alpha"] == 8
    card = (tmp_path / "README.md").read_text()
    assert "| rank | 4 |" in card and "| alpha | 8 |" in card and "data rounds | [0, 1]" in card
    assert "loss_final" in card and "base_model:" in card

    load_adapter(backbone, str(tmp_path))
    try:
        loaded = _fill_call(backbone)
    finally:
        unload_adapter(backbone)
    assert np.abs(loaded - in_memory).max() < 2e-3
    assert np.abs(_fill_call(backbone) - base).max() < 1e-5, "unload must restore the base model"


def test_load_adapter_twice_replaces_rather_than_stacks(backbone, tmp_path):
    _random_adapter(backbone, LoraConfig(rank=2))
    try:
        save_adapter(backbone, str(tmp_path), card={})
    finally:
        detach_lora(backbone.transformer)
    load_adapter(backbone, str(tmp_path))
    first = _fill_call(backbone)
    load_adapter(backbone, str(tmp_path))
    try:
        assert list(backbone.transformer.peft_config) == ["layerloop_loaded"]
        assert np.abs(_fill_call(backbone) - first).max() < 1e-5
    finally:
        unload_adapter(backbone)


def test_foreign_or_missing_files_are_refused(backbone, tmp_path):
    with pytest.raises(AdapterError, match="has no"):
        load_adapter(backbone, str(tmp_path))
    save_file({"base_model.model.x.lora_A.weight": torch.zeros(2, 2)}, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(AdapterError, match="diffusers transformer format"):
        read_adapter_state(str(tmp_path))
    with pytest.raises(AdapterError, match="diffusers transformer format"):
        load_adapter(backbone, str(tmp_path))
    assert not getattr(backbone.transformer, "peft_config", None)


def test_save_needs_exactly_one_adapter(backbone, tmp_path):
    with pytest.raises(AdapterError, match="exactly one adapter"):
        save_adapter(backbone, str(tmp_path), card={})
