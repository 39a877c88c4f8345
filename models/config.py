"""Typed config sections of the model side: backbone, LoRA, training and sampling.

Defaults describe the tiny CPU world; the FLUX world changes `backbone`, `path`, `panel_size` and the
step counts, nothing else. Unknown fields are errors so a typo in layerloop.yaml stops the run at once.
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_SAFE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

DEFAULT_PROMPT_TEMPLATES = {
    "decompose": (
        "A three-panel image. Left: a product photo with a printed logo. Middle: the logo alone on a plain "
        "white background. Right: the same product without the logo.{caption}"
    ),
    "synthesize": (
        "A three-panel image. Middle: a logo on a plain white background. Right: a product without a logo. "
        "Left: the product with the logo printed on it, following its shape and lighting.{caption}"
    ),
    "generate": (
        "A three-panel image of a branded product: the product with its logo, the logo alone on white, "
        "and the product without the logo.{caption}"
    ),
}

# The two-logo schema (models.synthetic.render_triplet(logos=2)): a four-panel grid, model.layers TWO_LOGO_LAYERS.
TWO_LOGO_LAYERS = ["logo_1", "logo_2", "object"]
TWO_LOGO_PROMPT_TEMPLATES = {
    "decompose": (
        "A four-panel image. First: a product photo with two printed logos. Second: the first logo alone on a plain "
        "white background. Third: the second logo alone on white. Fourth: the same product without logos.{caption}"
    ),
    "synthesize": (
        "A four-panel image. Second and third: two logos on plain white backgrounds. Fourth: a product without "
        "logos. First: the product with both logos printed on it, following its shape and lighting.{caption}"
    ),
    "generate": (
        "A four-panel image of a branded product: the product with its two logos, each logo alone on white, "
        "and the product without logos.{caption}"
    ),
}

# ICEdit-style targets: attention projections and MLP of both block kinds (peft matches by suffix).
DEFAULT_LORA_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0",
    "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    "ff.net.2", "ff_context.net.2", "proj_mlp", "proj_out",
]


LAB_LEVER = "lab_lever"


def lab(default, **kwargs):
    """A research lever: validated and honoured like any field, but its verdict lives in research/README.md and
    `layerloop init` does not write it out (the product's defaults are the measured choice)."""
    return Field(default, json_schema_extra={LAB_LEVER: True}, **kwargs)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ModelConfig(_Section):
    """Which backbone to build and how; the only config the factory branches on."""

    backbone: Literal["tiny", "flux"] = "tiny"
    path: str | None = Field(None, description="flux: local dir (or hub id); tiny: None = shipped base")
    layers: list[str] = Field(default_factory=lambda: ["logo", "object"])
    panel_size: int = Field(32, ge=16, le=2048)
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    device: str = "auto"
    gradient_checkpointing: bool = False
    cpu_offload: bool = False
    prompt_templates: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_PROMPT_TEMPLATES))

    @field_validator("panel_size")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"panel_size must be a multiple of 16 (FLUX packs 2x2 latents of an 8x VAE); got {v}")
        return v

    @field_validator("layers")
    @classmethod
    def _layer_names(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v) or any(not _SAFE_NAME.match(n) or n == "composite" for n in v):
            raise ValueError(f"layers must be unique lowercase names other than 'composite'; got {v}")
        return v

    @model_validator(mode="after")
    def _flux_needs_path(self) -> "ModelConfig":
        if self.backbone == "flux" and not self.path:
            raise ValueError("model.path is required for backbone 'flux' (a local FLUX.1-Fill-dev directory)")
        return self


class LoraConfig(_Section):
    """LoRA shape. alpha defaults to rank: diffusers assumes alpha == rank when no metadata is saved."""

    rank: int = Field(8, ge=1, le=512)
    alpha: int | None = None
    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @property
    def effective_alpha(self) -> int:
        return self.rank if self.alpha is None else self.alpha


class TrainConfig(_Section):
    """Flow matching + cycle consistency training of the shared LoRA."""

    steps: int = Field(200, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="cosine: decay to 0 at `steps` (changing `steps` then changes the schedule)")
    lr_warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0 over this many steps")
    batch_size: int = Field(4, ge=1)
    seed: int = 0
    cycle_weight: float = Field(
        0.0, ge=0, description="weight of the cycle-consistency term; 0 = off (the default: no variant measured "
                                "so far improved decomposition, docs/training.md)")
    cycle_warmup_steps: int = lab(50, ge=0)
    cycle_intermediate: Literal["one_step", "sampler"] = lab("one_step")
    cycle_sampler_steps: int = lab(4, ge=1)
    cycle_max_t: float = lab(
        1.0, gt=0, le=1, description="apply the cycle term only to samples noised to t <= this (ControlNet++ "
                                     "uses its one-step consistency loss at low noise only; 1.0 = every t)")
    generate_fraction: float = lab(0.0, ge=0, le=1, description="share of tau_G samples (text -> triplet)")
    guidance: float = Field(1.0, ge=0, description="FLUX guidance embedding while training (ICEdit: 1.0)")
    text_dropout: float = Field(0.1, ge=0, lt=1)
    logit_mean: float = lab(0.0)
    logit_std: float = lab(1.0, gt=0)
    grad_clip: float = Field(1.0, gt=0)
    loss_region: Literal["all", "generated"] = lab(
        "generated", description="all: every grid token (ICEdit); generated: only the panels the task generates")
    anchor_fraction: float = lab(
        0.75, ge=0, le=1, description="share of every batch drawn from human-labeled triplets when pseudo-labels "
                                     "are in the training set too (self-training drifts unless real data stays in); "
                                     "honoured over the run when it is not a whole number of samples (at batch 4, "
                                     "0.875 gives 3 and 4 labeled samples in turn); at least one per batch")
    checkpoint_every: int = Field(100, ge=1)
    continue_from_previous: bool = True
    compile_blocks: bool = Field(
        False, description="regional torch.compile of the transformer blocks while training (GPU speed-up)")


class SampleConfig(_Section):
    """Euler flow-matching sampling for decompose / synthesize / generate."""

    steps: int = Field(8, ge=1, le=200)
    guidance: float = Field(30.0, ge=0)
    seed: int = 0
    caption_guidance: float = Field(
        1.0, ge=0, le=50, description="classifier-free guidance on the caption for generate (tau_G): the velocity "
                                      "is extrapolated from the caption-free template's by this factor "
                                      "(models/guidance.py); 1 = off. Costs a second transformer pass per step "
                                      "of generate only")
    batch_size: int = Field(8, ge=1)
    compile_blocks: bool = Field(
        False, description="regional torch.compile of the transformer blocks while sampling (GPU speed-up)")
    draws: int = Field(
        1, ge=1, le=32, description="draws per image at inference, each from its own noise: decompositions "
                                    "(decompose, eval, held-out measurements) and syntheses (Sampler.compose: "
                                    "synthesize, rebrand); more than 1 returns their per-pixel mean, the "
                                    "consensus (seed adapter, test split: 6 draws lift logo 11.54 -> 13.21 dB; "
                                    "composite +1.16 dB over the object panel with 6 anchored syntheses, +0.08 with one, "
                                    "docs/reports.md), at `draws` times the cost")
    anchor: bool = Field(
        True, description="at inference the background layer (the schema's last) is the input composite wherever "
                          "the decomposition leaves it unchanged, the model's inpainting only inside the footprint "
                          "(models/anchoring.py). On by default: the dev split chose it (research/inference_mode.py, "
                          "3 seed adapters x 128 items: object +1.93 dB unseen kinds [+1.67, +2.25], +1.12 seen "
                          "[+0.77, +1.49] at one draw, logo unchanged, no model cost)")
    fuse_lora: bool = Field(
        False, description="fold the adapter's LoRA into the transformer's weights for sampling (no LoRA matmuls per "
                           "step); loading another adapter or none unfuses it first, which restores the base up to "
                           "rounding in the model dtype")
    fp8: bool = Field(
        False, description="FP8 (e4m3) weights and per-row dynamic FP8 activations in the transformer's Linear layers "
                           "(torchao; a CUDA GPU of compute capability >= 8.9 and model.dtype bfloat16). Irreversible: "
                           "the adapter is fused first, and that backbone then samples with this adapter only. Needs "
                           "fuse_lora: true. Speed and quality against bf16: bench/gpu_path.py")

    @model_validator(mode="after")
    def _fp8_needs_fused_lora(self) -> "SampleConfig":
        if self.fp8 and not self.fuse_lora:
            raise ValueError("sample.fp8 needs sample.fuse_lora: true (the LoRA is folded into the weights before "
                             "they are quantised to FP8)")
        return self
