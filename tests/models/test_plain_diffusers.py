"""The shipped tiny base and a layerloop adapter used with plain diffusers calls only, as the docs say.

Runs the recipe of docs/models.md ("Loading the base and an adapter with plain diffusers") and the one
every adapter's README.md carries, with nothing from layerloop but the files they name.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from layerloop.models import tiny
from layerloop.models.config import LoraConfig, ModelConfig
from layerloop.models.factory import build_backbone
from layerloop.models.lora_io import read_adapter_state, save_adapter
from layerloop.models.trainer import attach_lora, detach_lora

DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A LoRA saved by layerloop on the shipped base (random, non-zero weights: loading is what is tested)."""
    torch.set_num_threads(1)
    backbone = build_backbone(ModelConfig())
    params = attach_lora(backbone.transformer, LoraConfig(rank=4, alpha=4), seed=0)
    with torch.no_grad():
        for i, (_, p) in enumerate(sorted(params.items())):
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(i))
    out = tmp_path_factory.mktemp("adapter")
    try:
        save_adapter(backbone, str(out), card={"metrics": {"loss_final": 0.1}, "round": 0})
    finally:
        detach_lora(backbone.transformer)
    return out


def _python_block(text: str, after: str = "") -> str:
    code = re.search(r"```python\n(.*?)```", text[text.index(after):], re.S).group(1)
    assert not re.search(r"^\s*(from|import)\s+layerloop", code, re.M)  # plain diffusers, no layerloop code
    return code


def _run(code: str, tmp_path: Path) -> dict:
    composite = tmp_path / "composite.png"
    Image.new("RGB", (40, 40), (200, 40, 40)).save(composite)
    namespace: dict = {}
    exec(compile(code.replace("composite.png", str(composite)), "recipe", "exec"), namespace)  # noqa: S102
    return namespace


def _lora_loaded(pipe, adapter_dir: Path) -> None:
    """The pipeline's transformer carries exactly the file's LoRA tensors."""
    from peft.utils import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=next(iter(pipe.transformer.peft_config)))
    saved = read_adapter_state(str(adapter_dir))
    assert saved and set(saved) == set(loaded)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_the_card_names_a_base_diffusers_loads_and_its_recipe_runs(adapter_dir, tmp_path):
    card = (adapter_dir / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert Path(front["base_model"]) == tiny.ASSET_DIR.resolve()  # a folder, not an opaque id
    ns = _run(_python_block(card, "## How to load").replace("path/to/this/folder", str(adapter_dir)), tmp_path)
    _lora_loaded(ns["pipe"], adapter_dir)
    assert ns["out"].size == (96, 32) and set(ns["layers"]) == {"logo", "object"}
    assert all(img.size == (32, 32) for img in ns["layers"].values())


def test_the_docs_recipe_loads_the_shipped_base_and_the_lora(adapter_dir, tmp_path):
    code = _python_block(DOCS.read_text(), "### Loading the base and an adapter with plain diffusers")
    ns = _run(code.replace("store/adapters/round-0003", str(adapter_dir)), tmp_path)
    _lora_loaded(ns["pipe"], adapter_dir)
    assert ns["logo"].size == ns["obj"].size == (32, 32)
