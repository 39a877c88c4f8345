"""Backbone factory: the ONLY place that knows whether the model is the tiny CPU base or FLUX.1-Fill-dev.

Both worlds come back as one `Backbone` of the same diffusers/transformers classes, and one
`FluxFillPipeline` built from those very modules; trainer, sampler and losses never ask which it is.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from . import tiny
from .config import ModelConfig
from .grid import LayerSchema, task_prompt, validate_templates

if TYPE_CHECKING:  # heavy imports stay lazy; these are for readers and type checkers only
    import torch
    from diffusers import FluxFillPipeline

_EMBED_CACHE_SIZE = 256
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class BackboneConfigError(ValueError):
    """The model section cannot be turned into a backbone; the message says what to fix."""


@dataclass(eq=False)
class Backbone:
    """The Fill model's modules plus what the grid code needs to drive them."""

    transformer: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    text_encoder_2: Any
    tokenizer_2: Any
    scheduler: Any
    schema: LayerSchema
    panel_size: int
    device: "torch.device"
    dtype: "torch.dtype"
    prompt_templates: dict[str, str]
    max_sequence_length: int = 512
    base_id: str = ""
    # what `FluxFillPipeline.from_pretrained` takes to load this base: a local folder or a hub id
    base_path: str = ""
    _pipe: Any = field(default=None, repr=False)
    _embeds: OrderedDict = field(default_factory=OrderedDict, repr=False)
    # pipeline calls mutate the shared scheduler (timesteps, step index): callers on threads hold this
    lock: Any = field(default_factory=threading.RLock, repr=False)

    @property
    def grid_size(self) -> tuple[int, int]:
        """(width, height) in pixels of one grid."""
        return self.schema.grid_size(self.panel_size)

    def pipeline(self) -> "FluxFillPipeline":
        """The FluxFillPipeline over these very modules (built once, shared, never copied)."""
        if self._pipe is None:
            from diffusers import FluxFillPipeline

            self._pipe = FluxFillPipeline(
                scheduler=self.scheduler, vae=self.vae, text_encoder=self.text_encoder,
                tokenizer=self.tokenizer, text_encoder_2=self.text_encoder_2,
                tokenizer_2=self.tokenizer_2, transformer=self.transformer,
            )
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    def embed_prompt(self, prompt: str) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        """(prompt_embeds [1,L,D], pooled [1,P], text_ids [L,3]) via pipeline.encode_prompt, LRU-cached."""
        import torch

        with self.lock:
            if prompt in self._embeds:
                self._embeds.move_to_end(prompt)
                return self._embeds[prompt]
            with torch.no_grad():  # not inference_mode: the trainer feeds these into autograd graphs
                out = self.pipeline().encode_prompt(
                    prompt=prompt, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
                )
            self._embeds[prompt] = out
            if len(self._embeds) > _EMBED_CACHE_SIZE:
                self._embeds.popitem(last=False)
            return out

    def task_embeddings(self, task: str, caption: str | None = None):
        """Cached text conditioning of `task`'s prompt (T5 at 512 tokens is the expensive part on FLUX)."""
        return self.embed_prompt(task_prompt(task, self.prompt_templates, caption))


def build_backbone(cfg: ModelConfig, *, allow_random_init: bool = False) -> Backbone:
    """Build the backbone `cfg` names. `allow_random_init` is for the tiny pretraining script only."""
    templates = _templates(cfg)
    device = resolve_device(cfg.device)
    if cfg.backbone == "flux":
        modules, dtype, base_id, seq_len = _flux_modules(cfg, device)
    else:
        modules, dtype, base_id, seq_len = _tiny_modules(cfg, device, allow_random_init, templates)
    pipe = modules.pop("_pipe", None)
    base_path = modules.pop("_path", "")
    backbone = Backbone(
        **modules, schema=LayerSchema(tuple(cfg.layers)), panel_size=cfg.panel_size, device=device,
        dtype=dtype, prompt_templates=templates, max_sequence_length=seq_len, base_id=base_id,
        base_path=base_path, _pipe=pipe,
    )
    _freeze(backbone)
    if cfg.gradient_checkpointing:
        backbone.transformer.enable_gradient_checkpointing()
    return backbone


def resolve_device(name: str) -> "torch.device":
    """'auto' = CUDA when present, else CPU; asking for CUDA without one is a config error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise BackboneConfigError(f"model.device '{name}' is not a torch device (try auto, cpu, cuda)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackboneConfigError(f"model.device is '{name}' but CUDA is not available; use device: auto or cpu")
    return device


def _templates(cfg: ModelConfig) -> dict[str, str]:
    try:
        return validate_templates(cfg.prompt_templates)
    except ValueError as exc:
        raise BackboneConfigError(f"model.prompt_templates: {exc}") from exc


def _dtype(cfg: ModelConfig, default: str) -> "torch.dtype":
    import torch

    return getattr(torch, _DTYPES[cfg.dtype or default])


def _freeze(backbone: Backbone) -> None:
    """Base weights are never trained through the backbone; LoRA layers added later stay trainable."""
    for module in (backbone.transformer, backbone.vae, backbone.text_encoder, backbone.text_encoder_2):
        module.requires_grad_(False)
        module.eval()


def _tiny_asset_dir(cfg: ModelConfig) -> Path:
    return Path(cfg.path).expanduser() if cfg.path else tiny.ASSET_DIR


def _tiny_modules(cfg: ModelConfig, device, allow_random_init: bool, templates: dict[str, str]):
    import torch


    asset_dir = _tiny_asset_dir(cfg)
    if tiny.assets_present(asset_dir):
        # the shipped folder loads the way a user loads it: plain FluxFillPipeline.from_pretrained
        modules = _pretrained(str(asset_dir), cfg, device, _dtype(cfg, "float32"), "the tiny base")
        digest = weights_digest(tiny.weights_path(asset_dir, "transformer"))
        return modules, _dtype(cfg, "float32"), f"tiny-base@{digest}", tiny.T5_MAX_LENGTH
    if tiny.legacy_layout(asset_dir):
        raise BackboneConfigError(
            f"{asset_dir} holds a tiny base in the old flat layout (<component>.safetensors); convert it to a "
            f"diffusers folder: python scripts/pretrain_tiny_base.py --convert-from {asset_dir} --out NEW_DIR")
    if not allow_random_init:
        raise BackboneConfigError(
            f"tiny base not found in {asset_dir} (need {tiny.MODEL_INDEX} and per-component folders with "
            "safetensors, as `FluxFillPipeline.save_pretrained` writes them); run "
            "`python scripts/pretrain_tiny_base.py` or set model.path to a directory that has them"
        )
    modules = tiny.build_modules(tiny.default_meta(templates))
    dtype = _dtype(cfg, "float32")
    for name in tiny.COMPONENTS:
        # random init is fp32: cast only when asked, diffusers warns on every .to(dtype)
        modules[name].to(device) if dtype == torch.float32 else modules[name].to(device=device, dtype=dtype)
    return modules, dtype, "tiny-random", tiny.T5_MAX_LENGTH


def _flux_modules(cfg: ModelConfig, device):
    path = _flux_source(cfg.path)
    dtype = _dtype(cfg, "bfloat16")
    modules = _pretrained(path, cfg, device, dtype, "FLUX.1-Fill-dev")
    return modules, dtype, f"flux-fill:{path}", 512


def _pretrained(path: str, cfg: ModelConfig, device, dtype, what: str) -> dict[str, Any]:
    """The modules of the FluxFillPipeline folder at `path` (safetensors only), on `device`, plus the pipeline."""
    from diffusers import FluxFillPipeline

    try:
        with _no_progress_bars():
            pipe = FluxFillPipeline.from_pretrained(path, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise BackboneConfigError(
            f"could not load {what} from '{path}': {exc}. Point model.path at a local "
            "FluxFillPipeline directory (with model_index.json and safetensors weights)"
        ) from exc
    if cfg.cpu_offload:
        if device.type != "cuda":
            raise BackboneConfigError("model.cpu_offload needs a CUDA device; set cpu_offload: false on CPU")
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    names = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
    local = Path(path).expanduser()
    return {**{n: getattr(pipe, n) for n in names}, "_pipe": pipe,
            "_path": str(local.resolve()) if local.is_dir() else path}


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """diffusers and transformers draw loading bars per component; every process that builds a backbone
    would print them into a run's output. Their switches are global: put back what was there."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libs = [lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()]
    for lib in libs:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libs:
            lib.enable_progress_bar()


def _flux_source(path: str | None) -> str:
    """A local FLUX directory, or a hub id (owner/name) for users with network; anything else is an error."""
    if not path:
        raise BackboneConfigError("model.path is required for backbone 'flux' (a local FLUX.1-Fill-dev directory)")
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise BackboneConfigError(f"model.path '{path}' is a directory without model_index.json; "
                                      "point it at the root of a FLUX.1-Fill-dev download")
        return str(local)
    looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if not looks_like_hub_id or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise BackboneConfigError(f"model.path '{path}' does not exist; point it at a local FLUX.1-Fill-dev directory")
    return path


def weights_digest(path: Path) -> str:
    """The 12 hex digits of a weights file's sha256 that name a tiny base (`tiny-base@<digest>`)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]
