"""LoRA files in diffusers format: save, load and unload the shared decomposition/synthesis adapter.

An adapter directory holds `pytorch_lora_weights.safetensors` (keys `transformer.<module>.lora_A.weight`,
no `base_model.model` infix, so diffusers and ComfyUI load it), the peft LoRA config as diffusers'
`lora_adapter_metadata` (alpha survives even when alpha != rank) and a `README.md` model card.
Only safetensors are ever read: nothing from the store is unpickled. `fuse_adapter` folds a loaded adapter
into the base weights for sampling (`SampleConfig.fuse_lora`); `unload_adapter` unfuses it first.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .acceleration import fp8_tag
from .grid import task_prompt
from .tiny import ASSET_DIR

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


def base_model(backbone: Any) -> str:
    """What the card names as the base: a folder or hub id `FluxFillPipeline.from_pretrained` loads
    (an absolute path as it was at training time), else the base's id."""
    return getattr(backbone, "base_path", "") or getattr(backbone, "base_id", "") or "unknown"


def _how_to_load(backbone: Any) -> list[str]:
    """The card's recipe: plain diffusers calls, the grid and mask the LoRA was trained on, its prompts."""

    if not getattr(backbone, "base_path", ""):
        return ["## How to load", "", f"The base (`{base_model(backbone)}`) was built in memory, not loaded from "
                "a folder: load this LoRA with `FluxFillPipeline.load_lora_weights` onto that same pipeline.", ""]
    p, panels = backbone.panel_size, backbone.schema.panels
    prompt = task_prompt("decompose", backbone.prompt_templates)
    lines = ["## How to load (plain diffusers)", "", "```python", "import torch",
             "from diffusers import FluxFillPipeline", "from PIL import Image", "",
             f'pipe = FluxFillPipeline.from_pretrained("{base_model(backbone)}", dtype=torch.{str(backbone.dtype).split(".")[-1]})',
             'pipe.load_lora_weights("path/to/this/folder")  # pytorch_lora_weights.safetensors', "",
             f"# decompose: [{' | '.join(panels)}], {p} px panels; white mask = panels to generate",
             f'grid = Image.new("RGB", ({p * len(panels)}, {p}), "white")',
             'grid.paste(Image.open("composite.png").convert("RGB").resize(' + f"({p}, {p})), (0, 0))",
             f'mask = Image.new("L", ({p * len(panels)}, {p}), 0)',
             f"mask.paste(255, ({p}, 0, {p * len(panels)}, {p}))",
             f"prompt = {json.dumps(prompt)}",
             f"out = pipe(prompt=prompt, image=grid, mask_image=mask, height={p}, width={p * len(panels)},",
             f"           max_sequence_length={backbone.max_sequence_length}, num_inference_steps=8, "
             "guidance_scale=30).images[0]",
             f"layers = {{name: out.crop(({p} * i, 0, {p} * (i + 1), {p})) for i, name in "
             f"enumerate({list(panels)!r}) if i}}",
             "```", ""]
    if Path(base_model(backbone)).resolve() == ASSET_DIR.resolve():
        lines += ["The base is the tiny base shipped inside the layerloop package: "
                  '`importlib.resources.files("layerloop.models") / "assets" / "tiny-base"` in any install.', ""]
    lines += ["Its task prompts (`{caption}` is empty or \" <caption>\"; synthesize masks the composite instead):", ""]
    lines += [f"- {task}: `{template}`" for task, template in backbone.prompt_templates.items()]
    return lines + [""]


def model_card(backbone: Any, peft_cfg: Any, state: dict, card: dict) -> str:
    """Markdown card: base (loadable), how to load it with diffusers, LoRA shape, data rounds, training metrics."""
    targets = sorted(peft_cfg.target_modules) if not isinstance(peft_cfg.target_modules, str) else [peft_cfg.target_modules]
    n_params = sum(int(v.numel()) for v in state.values())
    metrics = card.get("metrics", {})
    lines = [
        "---", "library_name: diffusers", "tags: [lora, flux, fill, layerloop, layered-decomposition]",
        f"base_model: {json.dumps(base_model(backbone))}", "---", "",
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
    lines += ["", *_how_to_load(backbone), "Inside layerloop: `layerloop.models.lora_io.load_adapter(backbone, dir)`.",
              "", "## Training metrics", "", "```json", json.dumps(metrics, indent=1, default=str), "```", ""]
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


def fuse_adapter(backbone: Any) -> None:
    """Fold the loaded adapter into the transformer's weights (`FluxFillPipeline.fuse_lora`): sampling then
    runs no LoRA matmuls. The LoRA layers stay, merged, so `unload_adapter` can take it out again."""
    if LOADED_NAME not in (getattr(backbone.transformer, "peft_config", None) or {}):
        raise AdapterError("fuse_adapter needs an adapter loaded with load_adapter first")
    backbone.pipeline().fuse_lora(components=["transformer"], adapter_names=[LOADED_NAME])


def is_fused(transformer: Any) -> bool:
    """Whether any LoRA layer of the transformer is merged into its base weights."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) and m.merged for m in transformer.modules())


def unload_adapter(backbone: Any) -> None:
    """Remove every LoRA from the backbone; a fused one is unfused first (the base back up to rounding in
    the model dtype). A transformer quantised to FP8 (sample.fp8) keeps its fused adapter: refused."""
    tag = fp8_tag(backbone.transformer)
    if tag is not None:
        raise AdapterError(f"the backbone's transformer is quantised to FP8 with adapter {tag or 'none'!r} fused in "
                           "(sample.fp8): its adapter cannot be changed or removed; build a new backbone")
    if getattr(backbone.transformer, "peft_config", None):
        if is_fused(backbone.transformer):
            backbone.pipeline().unfuse_lora(components=["transformer"])
        backbone.pipeline().unload_lora_weights()
