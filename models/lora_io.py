"""LoRA files in diffusers format: save, load and unload the shared decomposition/synthesis adapter.

An adapter directory holds `pytorch_lora_weights.safetensors` (keys `transformer.<module>.lora_A.weight`,
no `base_model.model` infix, so diffusers and ComfyUI load it), the peft LoRA config as diffusers'
`lora_adapter_metadata` (alpha survives even when alpha != rank) and a `README.md` model card.
Only safetensors are ever read: nothing from the store is unpickled.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
CARD_NAME = "README.md"
PREFIX = "transformer."
LOADED_NAME = "layerloop_loaded"


class AdapterError(ValueError):
    """An adapter directory that cannot be saved or loaded; the message says what is wrong."""


def save_adapter(backbone: Any, out_dir: str, *, card: dict, adapter_name: str | None = None) -> str:
    """Write the transformer's (single or named) peft adapter and its model card; returns the weights path."""
    from diffusers import FluxFillPipeline
    from peft.utils import get_peft_model_state_dict

    transformer = backbone.transformer
    name = _adapter_name(transformer, adapter_name)
    state = get_peft_model_state_dict(transformer, adapter_name=name)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    if not state:
        raise AdapterError(f"adapter '{name}' has no LoRA weights to save")
    peft_cfg = transformer.peft_config[name]
    metadata = _metadata(peft_cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    FluxFillPipeline.save_lora_weights(str(out), transformer_lora_layers=state,
                                       transformer_lora_adapter_metadata=metadata)
    (out / CARD_NAME).write_text(model_card(backbone, peft_cfg, state, card))
    return str(out / WEIGHTS_NAME)


def _adapter_name(transformer: Any, adapter_name: str | None) -> str:
    names = list(getattr(transformer, "peft_config", None) or {})
    if adapter_name is not None:
        if adapter_name not in names:
            raise AdapterError(f"no adapter '{adapter_name}' on the transformer (has {names})")
        return adapter_name
    if len(names) != 1:
        raise AdapterError(f"save_adapter needs exactly one adapter on the transformer or adapter_name=; found {names}")
    return names[0]


def _metadata(peft_cfg: Any) -> dict:
    """The peft LoraConfig as plain JSON values (what diffusers turns back into a LoraConfig on load)."""
    raw = peft_cfg.to_dict()
    clean = {}
    for key, value in raw.items():
        if isinstance(value, (set, frozenset, tuple)):
            value = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        clean[key] = value
    # JSON-safe only: enums and the like become strings, never pickled objects
    return json.loads(json.dumps(clean, default=str))


def model_card(backbone: Any, peft_cfg: Any, state: dict, card: dict) -> str:
    """Markdown card: base, LoRA shape, data rounds, training metrics."""
    targets = sorted(peft_cfg.target_modules) if not isinstance(peft_cfg.target_modules, str) else [peft_cfg.target_modules]
    n_params = sum(int(v.numel()) for v in state.values())
    metrics = card.get("metrics", {})
    lines = [
        "---", "library_name: diffusers", "tags: [lora, flux, fill, layerloop, layered-decomposition]",
        f"base_model: {getattr(backbone, 'base_id', '') or 'unknown'}", "---", "",
        "# layerloop decomposition / synthesis LoRA", "",
        "One LoRA on a FLUX.1-Fill-style in-context grid `[composite | "
        + " | ".join(backbone.schema.layers) + "]` trained with flow matching + cycle consistency.", "",
        "| field | value |", "|---|---|",
        f"| base | `{getattr(backbone, 'base_id', '') or 'unknown'}` |",
        f"| panel size | {backbone.panel_size} px |",
        f"| rank | {peft_cfg.r} |", f"| alpha | {peft_cfg.lora_alpha} |",
        f"| targets | {', '.join(targets)} |", f"| LoRA parameters | {n_params:,} |",
    ]
    for key in ("data_rounds", "round", "parent_round", "n_triplets"):
        if key in card:
            lines.append(f"| {key.replace('_', ' ')} | {card[key]} |")
    lines += ["", "## Training metrics", "", "```json", json.dumps(metrics, indent=1, default=str), "```", "",
              "Load with `FluxFillPipeline.load_lora_weights(<this dir>)` or `models.lora_io.load_adapter`.", ""]
    return "\n".join(lines)


def read_adapter_state(adapter_dir: str) -> dict:
    """The adapter's tensors keyed as peft names them (no `transformer.` prefix), from safetensors only."""
    from safetensors.torch import load_file

    path = Path(adapter_dir) / WEIGHTS_NAME
    if not path.is_file():
        raise AdapterError(f"{adapter_dir} has no {WEIGHTS_NAME}")
    raw = load_file(str(path))
    bad = [k for k in raw if not k.startswith(PREFIX) or "base_model.model" in k]
    if bad:
        raise AdapterError(f"{path} has keys outside the diffusers transformer format, e.g. {bad[:2]}")
    return {k[len(PREFIX):]: v for k, v in raw.items()}


def read_adapter_metadata(adapter_dir: str) -> dict | None:
    """The LoRA config stored in the file header (None for files saved without one)."""
    from safetensors import safe_open

    with safe_open(str(Path(adapter_dir) / WEIGHTS_NAME), framework="pt") as f:
        meta = f.metadata() or {}
    raw = meta.get("lora_adapter_metadata")
    if not raw:
        return None
    # diffusers packs each component's config under its prefix ("transformer.r", ...)
    return {k[len(PREFIX):]: v for k, v in json.loads(raw).items() if k.startswith(PREFIX)}


def load_adapter(backbone: Any, adapter_dir: str) -> None:
    """Load an adapter into the backbone's transformer through FluxFillPipeline.load_lora_weights.

    Any adapter already loaded is unloaded first, so the backbone carries exactly this one.
    """
    path = Path(adapter_dir) / WEIGHTS_NAME
    if not path.is_file():
        raise AdapterError(f"adapter directory {adapter_dir} has no {WEIGHTS_NAME}")
    read_adapter_state(adapter_dir)  # refuse foreign key layouts with a clear message before diffusers does
    unload_adapter(backbone)
    pipe = backbone.pipeline()
    from diffusers.utils import logging as diffusers_logging

    # Our files hold transformer keys only; diffusers warns once per load that the CLIP text encoder got
    # none, which floods every round's log. Errors still surface.
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        pipe.load_lora_weights(str(adapter_dir), weight_name=WEIGHTS_NAME, adapter_name=LOADED_NAME)
    finally:
        diffusers_logging.set_verbosity(level)


def unload_adapter(backbone: Any) -> None:
    """Remove every LoRA from the backbone (base weights untouched)."""
    if getattr(backbone.transformer, "peft_config", None):
        backbone.pipeline().unload_lora_weights()
