"""Sampling with the (optionally LoRA-adapted) Fill backbone: decompose, synthesize, generate.

Every task is one FluxFillPipeline call over the in-context grid with the task's mask and cached task
embeddings: Euler flow-matching steps (`SampleConfig.steps`), FLUX guidance (`SampleConfig.guidance`), and for
generate classifier-free guidance on the caption (`SampleConfig.caption_guidance`, models/guidance.py).
Known panels are returned from the input untouched; only masked panels come from the model. Noise is
seeded per item from `SampleConfig.seed` and the item's content, so an item's result does not depend
on which batch it lands in (CPU kernels still differ by ~1e-4 between runs: compare with a tolerance).

`SampleConfig.fuse_lora` folds the adapter into the weights (undone when the next Sampler loads another);
`SampleConfig.fp8` then quantises the transformer's Linear layers to FP8 (models/acceleration.py), for
good: a backbone quantised with one adapter serves Samplers of that adapter with fp8 only, and any other
request is refused before anything changes. Both are checked before the backbone is touched.
"""
from __future__ import annotations

import hashlib
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from PIL import Image

from .acceleration import check_fp8, compiled_blocks, fp8_tag, quantize_fp8
from .anchoring import anchor, consensus, mean_image
from .config import SampleConfig
from .grid import (
    COMPOSITE, GridError, fill_missing, generated_panels, given_panels, make_grid, split_grid, task_mask,
)
from .guidance import caption_guidance
from .lora_io import fuse_adapter, load_adapter, unload_adapter

if TYPE_CHECKING:  # torch stays a lazy import at run time
    import torch


class Sampler:
    """Runs the grid tasks on a backbone; `adapter_dir=None` means the base model without any LoRA."""

    def __init__(self, backbone: Any, adapter_dir: str | None, cfg: SampleConfig):
        self.backbone, self.cfg, self.adapter_dir = backbone, cfg, adapter_dir
        self.fp8_linears: int | None = None  # Linear layers this Sampler quantised to FP8 (sample.fp8)
        # the backbone is shared: make sure it carries exactly the adapter this sampler was asked for
        # (one adapter at a time per backbone: build one backbone per concurrent sampler)
        with backbone.lock:
            if fp8_tag(backbone.transformer) is not None:
                self._reuse_fp8(adapter_dir)
                return
            if cfg.fp8:
                check_fp8(backbone.device, backbone.dtype)  # before the backbone is changed at all
            if adapter_dir:
                load_adapter(backbone, adapter_dir)
                if cfg.fuse_lora:
                    fuse_adapter(backbone)
            else:
                unload_adapter(backbone)
            if cfg.fp8:
                self.fp8_linears = quantize_fp8(backbone.transformer, backbone.device, backbone.dtype,
                                                tag=_adapter_key(adapter_dir))

    def _reuse_fp8(self, adapter_dir: str | None) -> None:
        """A backbone already quantised to FP8 serves only its own adapter, with fp8 on."""
        tag = fp8_tag(self.backbone.transformer)
        if not self.cfg.fp8 or _adapter_key(adapter_dir) != tag:
            want = f"adapter {adapter_dir!r}" if adapter_dir else "the base model"
            raise ValueError(
                f"this backbone's transformer is quantised to FP8 with adapter {tag or 'none'!r} fused in; "
                f"sampling {want} with fp8 {self.cfg.fp8} needs a new backbone (build_backbone)")

    def decompose(self, composites: Sequence[Image.Image], draw: int = 0) -> list[dict[str, Image.Image]]:
        """Composite -> its layers (tau_D); returns only the layer panels.

        `draw` k > 0 starts every item from another noise (k draws of the same item are independent
        samples of its decomposition: models/anchoring.consensus averages them).
        """
        triplets = self.run("decompose", [{COMPOSITE: c} for c in composites], draw=draw)
        return [{k: t[k] for k in self.backbone.schema.layers} for t in triplets]

    def infer(self, composites: Sequence[Image.Image]) -> list[dict[str, Image.Image]]:
        """Composite -> its layers in the configured inference mode: `draws` decompositions from independent
        noise averaged per pixel (1 = the plain decomposition), then with `anchor` the background layer (the
        schema's last) kept equal to the composite outside the footprint the model changed."""
        draws = [self.decompose(composites, draw=k) for k in range(self.cfg.draws)]
        out = [draws[0][i] if len(draws) == 1 else consensus([d[i] for d in draws]) for i in range(len(composites))]
        if not self.cfg.anchor:
            return out
        background = self.backbone.schema.layers[-1]
        return [anchor(c, layers, background=background)[0] for c, layers in zip(composites, out)]

    def synthesize(self, layers: Sequence[Mapping[str, Image.Image]], draw: int = 0) -> list[Image.Image]:
        """Layers -> composite (tau_C); `draw` as in `decompose`."""
        return [t[COMPOSITE] for t in self.run("synthesize", [dict(x) for x in layers], draw=draw)]

    def compose(self, layers: Sequence[Mapping[str, Image.Image]]) -> list[Image.Image]:
        """Layers -> composite in the configured inference mode: `draws` syntheses from independent noise and,
        with more than one, their per-pixel mean (as `infer`'s consensus: what the draws disagree on fades,
        which PSNR rewards and a sharp print does not); then with `anchor` the composite kept equal to the
        background layer (the schema's last) outside the footprint where the model printed something, which
        is what a composite is there."""
        made = [self.synthesize(layers, draw=k) for k in range(self.cfg.draws)]
        out = made[0] if len(made) == 1 else [mean_image(list(cs)) for cs in zip(*made)]
        return self.keep_background(layers, out) if self.cfg.anchor else out

    def keep_background(self, layers: Sequence[Mapping[str, Image.Image]],
                        composites: Sequence[Image.Image]) -> list[Image.Image]:
        """`composites` synthesized from `layers`, kept equal to the background layer outside the footprint
        where the model changed it (what `compose` does after `synthesize`; callers that need both reuse one
        synthesis)."""
        background = self.backbone.schema.layers[-1]
        return [anchor(given[background].convert("RGB"), {background: made}, background=background)[0][background]
                for given, made in zip(layers, composites, strict=True)]

    def generate(self, prompts: Sequence[str]) -> list[dict[str, Image.Image]]:
        """Text -> a full triplet (tau_G), the prompt filling the generate template's caption slot."""
        if any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("generate needs non-empty text prompts")
        return self.run("generate", [{} for _ in prompts], captions=list(prompts))

    def run(self, task: str, items: Sequence[Mapping[str, Image.Image]],
            captions: Sequence[str] | None = None, draw: int = 0) -> list[dict[str, Image.Image]]:
        """Any task over items holding exactly the task's given panels; returns full triplets, batched."""
        if draw < 0:
            raise ValueError(f"draw must be >= 0; got {draw}")
        if captions is not None and len(captions) != len(items):
            raise ValueError(f"{len(captions)} captions for {len(items)} items")
        prepared = [self._prepare(task, item, i) for i, item in enumerate(items)]
        out: list[dict[str, Image.Image]] = []
        for start in range(0, len(prepared), self.cfg.batch_size):
            chunk = prepared[start:start + self.cfg.batch_size]
            caps = captions[start:start + len(chunk)] if captions is not None else [None] * len(chunk)
            out.extend(self._run_batch(task, chunk, caps, draw))
        return out

    # ------------------------------------------------------------------ internals

    def _prepare(self, task: str, item: Mapping[str, Image.Image], index: int) -> dict:
        """Check one item, bring its panels to the backbone's panel size, remember the caller's size."""
        want = set(given_panels(task, self.backbone.schema))
        if set(item) != want:
            raise GridError(f"item {index} for '{task}' has panels {sorted(item)}; expected {sorted(want)}")
        size = self.backbone.panel_size
        sizes = {im.size for im in item.values()}
        if len(sizes) > 1 or any(w != h for w, h in sizes):
            raise GridError(f"item {index}: panels must be square and equally sized; got {sorted(sizes)}")
        side = sizes.pop()[0] if sizes else size
        panels = {k: _fit(im, size) for k, im in item.items()}
        return {"given": dict(item), "panels": panels, "side": side}

    def _run_batch(self, task: str, chunk: list[dict], captions: Sequence[str | None], draw: int) -> list[dict]:
        import torch

        bb, schema, size = self.backbone, self.backbone.schema, self.backbone.panel_size
        grids = [make_grid(fill_missing(c["panels"], schema, size), schema) for c in chunk]
        embeds = [bb.task_embeddings(task, cap) for cap in captions]
        generators = [self._generator(task, g, cap, draw) for g, cap in zip(grids, captions)]
        width, height = bb.grid_size
        with bb.lock, compiled_blocks(bb.transformer, self.cfg.compile_blocks), self._guided(task, captions):
            result = bb.pipeline()(
                prompt_embeds=torch.cat([e[0] for e in embeds]),
                pooled_prompt_embeds=torch.cat([e[1] for e in embeds]),
                image=grids, mask_image=task_mask(task, schema, size), height=height, width=width,
                latents=self._initial_noise(generators), num_inference_steps=self.cfg.steps,
                guidance_scale=self.cfg.guidance, generator=generators, output_type="pil",
            )
        return [self._assemble(task, c, img) for c, img in zip(chunk, result.images)]

    def _guided(self, task: str, captions: Sequence[str | None]):
        """Caption guidance around the pipeline call where a caption is given (generate) and it is on."""
        if self.cfg.caption_guidance == 1 or not all(captions):
            return nullcontext()
        pe, pooled, _ = self.backbone.task_embeddings(task, None)
        return caption_guidance(self.backbone.transformer, pe, pooled, self.cfg.caption_guidance)

    def _initial_noise(self, generators: list) -> "torch.Tensor":
        """Packed x_1 noise, one generator per item.

        At strength 1 the pipeline would VAE-encode every grid only to replace it by this noise, and with
        a list of generators it encodes them one by one; handing the noise in skips that wasted work.
        """
        import torch

        pipe, (width, height) = self.backbone.pipeline(), self.backbone.grid_size
        c = pipe.transformer.config.out_channels // 4
        h, w = 2 * (height // (pipe.vae_scale_factor * 2)), 2 * (width // (pipe.vae_scale_factor * 2))
        noise = torch.cat([torch.randn((1, c, h, w), generator=g) for g in generators])
        packed = pipe._pack_latents(noise, len(generators), c, h, w)
        return packed.to(device=self.backbone.device, dtype=self.backbone.dtype)

    def _assemble(self, task: str, item: dict, grid: Image.Image) -> dict[str, Image.Image]:
        """Known panels from the input (as given), generated ones from the output at the input's size."""
        made = split_grid(grid, self.backbone.schema)
        out = {name: _fit(made[name], item["side"]) for name in generated_panels(task, self.backbone.schema)}
        out.update({name: im.convert("RGB") for name, im in item["given"].items()})
        return {name: out[name] for name in self.backbone.schema.panels}

    def _generator(self, task: str, grid: Image.Image, caption: str | None, draw: int = 0):
        """A CPU generator seeded from the config seed, the draw and the item's content (same input -> same noise)."""
        import torch

        # draw 0 keeps the historical key, so existing stores' samples stay reproducible
        key = f"{self.cfg.seed}|{task}|{caption or ''}|" + (f"draw{draw}|" if draw else "")
        h = hashlib.sha256(key.encode())
        h.update(grid.tobytes())
        return torch.Generator().manual_seed(int.from_bytes(h.digest()[:8], "little") & (2**63 - 1))


def _adapter_key(adapter_dir: str | None) -> str:
    """How an FP8 backbone names the adapter fused into it: its resolved directory, "" for the base."""
    return str(Path(adapter_dir).resolve()) if adapter_dir else ""


def _fit(img: Image.Image, side: int) -> Image.Image:
    """RGB at side x side; resampled (bicubic) only when the size differs."""
    rgb = img.convert("RGB")
    return rgb if rgb.size == (side, side) else rgb.resize((side, side), Image.BICUBIC)
