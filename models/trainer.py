"""LoRA training of the Fill backbone on the in-context grid: flow matching + cycle consistency.

One LoRA (peft, transformer only, base frozen) learns decomposition (tau_D) and synthesis (tau_C) of
the same triplets, and optionally generation (tau_G) from captions. Everything the transformer sees
is built by FluxFillPipeline's own methods (`FillCodec`), so training and sampling agree exactly.

Loss per step (paper, Sec. "Loss & Training"):
  L = L_rec + w * L_cyc
  L_rec = || v(x_t, M, t, tau) - (noise - x0) ||^2 over every token of the grid (or, with
          loss_region "generated", over the tokens of the panels the task generates; L_cyc likewise)
  L_cyc = || v(x_t^I, M_D, t, tau_D) - v(x_t^{I*}, M_D, t, tau_D) ||^2          (I* = synth(A, B))
        + || v(x_t^{AB}, M_C, t, tau_C) - v(x_t^{A'B'}, M_C, t, tau_C) ||^2     ((A', B') = decomp(I))
Each cycle term reuses the L_rec forward of a sample as its "real" side (same noise, same t), and the
generated intermediate is made under no_grad from pure noise (one x0 estimate or a few Euler steps).

Determinism: every random draw of step k comes from a generator seeded by (seed, k), so a run resumed
from a checkpoint (safetensors + JSON, never pickle) replays the very same batches and noise.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import losses
from .acceleration import compiled_blocks
from .config import LoraConfig, TrainConfig
from .grid import generated_panels, make_grid, panel_size_of, task_mask
from .lora_io import read_adapter_metadata, read_adapter_state, save_adapter, unload_adapter

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

ADAPTER_NAME = "layerloop"
METRICS_FILE = "metrics.json"
CHECKPOINT_PREFIX = "ckpt-"
OPPOSITE = {"decompose": "synthesize", "synthesize": "decompose"}
CYCLE_TERMS = {"decompose": "loss_cyc_d", "synthesize": "loss_cyc_c"}

ProgressFn = Callable[[int, int, dict], None]


class TrainError(ValueError):
    """Training cannot start or resume with these inputs; the message says what to fix."""


@dataclass
class TrainResult:
    adapter_dir: str
    metrics: dict
    loss_curve: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Fill conditioning, exactly as FluxFillPipeline builds it
# --------------------------------------------------------------------------------------------------
class FillCodec:
    """Grid pixels <-> packed latents, Fill conditioning and the transformer call, batched.

    Uses only the pipeline's own pieces (image/mask processors, `_encode_vae_image`,
    `prepare_mask_latents`, `_pack_latents`, `_unpack_latents`, `_prepare_latent_image_ids`, the VAE's
    shift/scaling factors) so a trained LoRA sees at sampling time what it saw while training.
    """

    def __init__(self, backbone: Any):
        import torch

        self.backbone = backbone
        self.pipe = backbone.pipeline()
        self.schema = backbone.schema
        self.panel = backbone.panel_size
        self.width, self.height = self.schema.grid_size(self.panel)
        self.device, self.dtype = backbone.device, backbone.dtype
        scale = self.pipe.vae_scale_factor
        self.channels = self.pipe.latent_channels
        self.lat_h = 2 * (self.height // (scale * 2))
        self.lat_w = 2 * (self.width // (scale * 2))
        self.img_ids = self.pipe._prepare_latent_image_ids(1, self.lat_h // 2, self.lat_w // 2, self.device, self.dtype)
        self._masks = {
            task: self.pipe.mask_processor.preprocess(task_mask(task, self.schema, self.panel),
                                                      height=self.height, width=self.width)
            for task in ("decompose", "synthesize", "generate")
        }
        patch = 2 * scale  # one packed token covers patch x patch pixels, in _pack_latents' row-major order
        self._token_masks = {
            task: (torch.nn.functional.avg_pool2d(m.float(), patch).flatten() > 0.5).float().to(self.device)
            for task, m in self._masks.items()
        }

    def generated_tokens(self, tasks: list[str]) -> "torch.Tensor":
        """(B, tokens) float: 1 on the tokens of the panels each task generates, 0 on the given ones."""
        import torch

        return torch.stack([self._token_masks[t] for t in tasks])

    def pixels(self, grids: list["Image.Image"]) -> "torch.Tensor":
        """(B, 3, H, W) float32 in [-1, 1], via the pipeline's image processor."""
        return self.pipe.image_processor.preprocess(grids, height=self.height, width=self.width).float()

    def encode(self, pixels: "torch.Tensor", generator: "torch.Generator") -> "torch.Tensor":
        """Packed, shifted and scaled VAE latents (B, tokens, 4C) of full grids: the x0 of flow matching."""
        vae = self.pipe.vae
        lat = self.pipe._encode_vae_image(pixels.to(self.device, vae.dtype), generator=generator)
        return self.pipe._pack_latents(lat.to(self.dtype), lat.shape[0], self.channels, self.lat_h, self.lat_w)

    def condition(self, pixels: "torch.Tensor", tasks: list[str], generator: "torch.Generator") -> "torch.Tensor":
        """Fill conditioning per sample: packed masked-image latents ++ packed mask, as the pipeline does."""
        import torch

        mask = torch.cat([self._masks[t] for t in tasks]).to(pixels.dtype)
        masked = (pixels * (1 - mask)).to(self.device, self.dtype)
        packed_mask, masked_latents = self.pipe.prepare_mask_latents(
            mask, masked, len(tasks), self.channels, 1, self.height, self.width, self.dtype, self.device, generator
        )
        return torch.cat((masked_latents, packed_mask), dim=-1)

    def decode(self, packed: "torch.Tensor") -> "torch.Tensor":
        """Packed latents -> (B, 3, H, W) float32 pixels in [-1, 1] on the CPU."""
        vae = self.pipe.vae
        lat = self.pipe._unpack_latents(packed, self.height, self.width, self.pipe.vae_scale_factor)
        lat = lat / vae.config.scaling_factor + vae.config.shift_factor
        img = vae.decode(lat.to(vae.dtype), return_dict=False)[0]
        return img.float().clamp(-1, 1).cpu()

    def velocity(self, x_t, cond, t, embeds, guidance: float) -> "torch.Tensor":
        """v_theta(x_t, M, t, tau): one transformer call on hidden = x_t ++ conditioning."""
        import torch

        prompt_embeds, pooled, text_ids = embeds
        n = x_t.shape[0]
        g = torch.full((n,), guidance, device=self.device, dtype=torch.float32)
        if not self.pipe.transformer.config.guidance_embeds:
            g = None
        return self.pipe.transformer(
            hidden_states=torch.cat((x_t, cond), dim=2).to(self.dtype),
            timestep=t.to(self.device, self.dtype), guidance=g,
            pooled_projections=pooled, encoder_hidden_states=prompt_embeds,
            txt_ids=text_ids, img_ids=self.img_ids, return_dict=False,
        )[0]

    def paste_panels(self, real: "torch.Tensor", generated: "torch.Tensor", panels: tuple[str, ...]) -> "torch.Tensor":
        """A copy of `real` grid pixels with the named panels taken from `generated`."""
        out = real.clone()
        for name in panels:
            i = self.schema.panels.index(name)
            cols = slice(i * self.panel, (i + 1) * self.panel)
            out[..., cols] = generated[..., cols]
        return out


# --------------------------------------------------------------------------------------------------
# Per-dataset-view cache: grids, x0 latents, per-task conditioning, text embeddings
# --------------------------------------------------------------------------------------------------
@dataclass
class DataCache:
    grids: list  # PIL grids, kept for the cycle term's re-encoding
    x0: "torch.Tensor"  # (N, tokens, C) on CPU
    cond: dict  # task -> (N, tokens, C') on CPU
    embeds: dict  # (task, caption) -> (prompt_embeds, pooled, text_ids)
    captions: list
    fingerprint: str
    trust: Any = None  # (N, tokens) float or None: how far each sample's target tokens may be believed
    allowed: list | None = None  # per sample: the tasks it may be trained on (None: decompose and synthesize)
    labeled: list | None = None  # per sample: human-labeled (anchor_fraction of every batch comes from these)


def build_cache(codec: FillCodec, triplets: list[dict], captions: list[str] | None, seed: int,
                with_generate: bool) -> DataCache:
    """Encode every triplet once (VAE latents and Fill conditioning per task) and its text conditioning."""
    grids = [_grid_of(codec, trip, i) for i, trip in enumerate(triplets)]
    caps = list(captions) if captions is not None else [None] * len(grids)
    tasks = ["decompose", "synthesize"] + (["generate"] if with_generate else [])
    x0, cond = encode_views(codec, grids, tasks, seed)
    embeds = {(t, None): codec.backbone.task_embeddings(t) for t in OPPOSITE}
    embeds[("", None)] = codec.backbone.embed_prompt("")
    if with_generate:
        for c in set(caps):
            embeds[("generate", c)] = codec.backbone.task_embeddings("generate", c)
    return DataCache(grids, x0, cond, embeds, caps, _data_fingerprint(grids, caps))


def encode_views(codec: FillCodec, grids: list, tasks: list[str], seed: int, chunk: int = 16):
    """(x0 latents, {task: Fill conditioning}) of `grids`, on the CPU, encoded in small batches."""
    import torch

    gen = torch.Generator().manual_seed(_mix(seed, -1))
    x0, cond = [], {t: [] for t in tasks}
    with torch.no_grad():
        for lo in range(0, len(grids), chunk):
            px = codec.pixels(grids[lo:lo + chunk])
            x0.append(codec.encode(px, gen).cpu())
            for t in tasks:
                cond[t].append(codec.condition(px, [t] * px.shape[0], gen).cpu())
    return torch.cat(x0), {t: torch.cat(v) for t, v in cond.items()}


def _grid_of(codec: FillCodec, triplet: dict, index: int):
    try:
        size = panel_size_of({p: triplet[p] for p in codec.schema.panels if p in triplet})
        if size != codec.panel:
            raise ValueError(f"panels are {size} px but the backbone's panel_size is {codec.panel}")
        return make_grid(triplet, codec.schema)
    except ValueError as exc:
        raise TrainError(f"triplet #{index} cannot be trained on: {exc}") from exc


def _data_fingerprint(grids: list, captions: list) -> str:
    h = hashlib.sha256()
    for g, c in zip(grids, captions):
        h.update(g.tobytes())
        h.update(repr(c).encode())
    return h.hexdigest()[:16]


def _mix(seed: int, step: int) -> int:
    """A 63-bit seed for (seed, step): independent streams per step make resume replay exact."""
    digest = hashlib.sha256(f"layerloop:{seed}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------------------
# LoRA setup
# --------------------------------------------------------------------------------------------------
def attach_lora(transformer, lora: LoraConfig, seed: int) -> dict[str, "torch.nn.Parameter"]:
    """Add the trainer's peft adapter (base frozen) and return its parameters by name, in fp32."""
    import torch
    from peft import LoraConfig as PeftLoraConfig

    if getattr(transformer, "peft_config", None):
        raise TrainError(
            f"the transformer already carries adapters {list(transformer.peft_config)}; call "
            "layerloop.models.lora_io.unload_adapter(backbone) before training (pass init_adapter= to continue from one)"
        )
    transformer.requires_grad_(False)
    config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.effective_alpha, target_modules=list(lora.targets),
                            lora_dropout=lora.dropout, init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _clear_stale_peft_flag(transformer)
        try:
            transformer.add_adapter(config, adapter_name=ADAPTER_NAME)
        except ValueError as exc:
            _clear_stale_peft_flag(transformer)
            raise TrainError(f"lora.targets {lora.targets} do not fit the transformer: {exc}") from exc
    params = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
    for p in params.values():
        # fp32 master weights: bf16 LoRA updates of ~1e-4 would round away on FLUX
        p.data = p.data.float()
    return params


def detach_lora(transformer) -> None:
    """Remove the trainer's adapter so the backbone is left as it was found."""
    names = list(getattr(transformer, "peft_config", None) or {})
    if names == [ADAPTER_NAME]:
        transformer.unload_lora()  # puts the original Linear modules back: no wrapper cost when sampling
    elif ADAPTER_NAME in names:
        transformer.delete_adapters(ADAPTER_NAME)
    _clear_stale_peft_flag(transformer)


def _clear_stale_peft_flag(transformer) -> None:
    # diffusers sets `_hf_peft_config_loaded` before injecting; a failed injection (bad targets) or a
    # deleted last adapter leaves the flag without `peft_config`, and the next add_adapter crashes
    if not getattr(transformer, "peft_config", None):
        transformer._hf_peft_config_loaded = False


def load_init_adapter(transformer, adapter_dir: str, params: dict) -> None:
    """Copy a previous adapter's weights into the fresh one; rank/targets must match."""
    from peft.utils import set_peft_model_state_dict

    state = read_adapter_state(adapter_dir)
    expected = _peft_state(transformer)
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    bad = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or extra or bad:
        raise TrainError(
            f"init_adapter {adapter_dir} does not match lora config (rank/targets): missing {missing[:3]}, "
            f"unexpected {extra[:3]}, shape mismatch {bad[:3]}; train with the adapter's own rank and targets"
        )
    meta = read_adapter_metadata(adapter_dir)
    alpha = transformer.peft_config[ADAPTER_NAME].lora_alpha
    if meta and meta.get("lora_alpha") not in (None, alpha):
        raise TrainError(f"init_adapter {adapter_dir} has lora_alpha {meta['lora_alpha']} but lora.alpha is {alpha}; "
                         "set lora.alpha to match or start a fresh adapter")
    set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER_NAME)
    for p in params.values():
        p.data = p.data.float()  # loading copies in the file's dtype; keep fp32 master weights


def _peft_state(transformer) -> dict:
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer, adapter_name=ADAPTER_NAME)


# --------------------------------------------------------------------------------------------------
# The training step
# --------------------------------------------------------------------------------------------------
@dataclass
class _Batch:
    idx: list
    tasks: list
    x0: Any
    cond: Any
    embeds: tuple
    t: Any
    noise: Any
    x_t: Any


def labeled_positions(anchor_fraction: float, batch_size: int, step: int) -> tuple[int, int]:
    """[start, stop) of step's labeled samples in the labeled stream: anchor_fraction * batch_size per step
    on average (exact fractions, so 0.75 at batch 4 is 3 every step), never fewer than one."""
    from fractions import Fraction

    share = min(Fraction(batch_size), max(Fraction(1), Fraction(anchor_fraction).limit_denominator(10**6) * batch_size))
    return int(share * step), int(share * (step + 1))


class CycleTrainer:
    """Holds the model, data cache and optimizer; `step(k)` runs training step k deterministically."""

    def __init__(self, backbone, cache: DataCache, codec: FillCodec, cfg: TrainConfig, params: dict):
        import torch

        self.backbone, self.cache, self.codec, self.cfg = backbone, cache, codec, cfg
        self.params = params
        if backbone.device.type == "cuda":
            # cuDNN's fused attention backward failed on an H100 (torch 2.11+cu130: "mha_graph.execute ...
            # is_good()", then illegal memory access); the flash / memory-efficient SDPA kernels train fine.
            torch.backends.cuda.enable_cudnn_sdp(False)
        self.names = sorted(params)
        self.optimizer = torch.optim.AdamW([params[n] for n in self.names], lr=cfg.lr, weight_decay=0.0)
        self.n = cache.x0.shape[0]

    # -- batch composition ---------------------------------------------------------------------
    def batch_indices(self, step: int) -> list[int]:
        """Epoch-wise shuffled indices; with labeled and unlabeled triplets, anchor_fraction from the labeled.

        Two independent epoch streams keep human-labeled data in every batch however many pseudo-labels
        accumulate (self-training drifts unless real data stays in each step). A share that is not a whole
        number of samples is honoured over the run: at batch 4, 0.875 gives 3 and 4 labeled samples in turn.
        """
        lab, bs = self.cache.labeled, self.cfg.batch_size
        if not lab or self.cfg.anchor_fraction <= 0 or all(lab) or not any(lab):
            return self._epoch_stream(list(range(self.n)), step * bs, bs, salt=-2)
        start, stop = labeled_positions(self.cfg.anchor_fraction, bs, step)
        labeled = [i for i in range(self.n) if lab[i]]
        others = [i for i in range(self.n) if not lab[i]]
        picked = self._epoch_stream(labeled, start, stop - start, salt=-2)
        n_other = bs - (stop - start)
        return picked + (self._epoch_stream(others, step * bs - start, n_other, salt=-(1 << 40)) if n_other else [])

    def _epoch_stream(self, members: list[int], start: int, count: int, salt: int) -> list[int]:
        """Items start .. start+count of the concatenated per-epoch permutations of `members`."""
        import torch

        n, out, pos = len(members), [], start
        while len(out) < count:
            epoch, offset = divmod(pos, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(self.cfg.seed, salt - epoch)))
            take = min(count - len(out), n - offset)
            out.extend(members[j] for j in perm[offset:offset + take].tolist())
            pos += take
        return out

    def batch_tasks(self, idx: list[int], gen: "torch.Generator") -> list[str]:
        """Half decomposition, half synthesis of the same triplets (random which half); some generation.

        A triplet restricted to some tasks (pseudo-labels: decomposition only) gets its first allowed one.
        """
        import torch

        n = len(idx)
        order = torch.randperm(n, generator=gen).tolist()
        tasks = ["decompose" if order[i] % 2 == 0 else "synthesize" for i in range(n)]
        if self.cache.allowed is not None:
            tasks = self._restricted_tasks(idx, order)
        if self.cfg.generate_fraction > 0:
            u = torch.rand(n, generator=gen).tolist()
            tasks = ["generate" if u[i] < self.cfg.generate_fraction else tasks[i] for i in range(n)]
        return tasks

    def _restricted_tasks(self, idx: list[int], order: list[int]) -> list[str]:
        """Tasks when some triplets allow only some: the restricted ones get their first allowed task, and the
        free ones take the decomposition slots first (as many as an all-free batch has), then synthesis.

        Pseudo-labels are decomposition-only; without this the labeled seeds would do less decomposition
        than in the same training without pseudo-labels, and the kinds the seeds show would pay for it.
        """
        allowed = [self.cache.allowed[j] for j in idx]
        tasks = [a[0] if len(a) == 1 else "" for a in allowed]
        free = sorted((i for i, t in enumerate(tasks) if not t), key=lambda i: order[i])
        slots = (len(idx) + 1) // 2
        for rank, i in enumerate(free):
            tasks[i] = "decompose" if rank < slots else "synthesize"
        return tasks

    def embeddings(self, idx: list[int], tasks: list[str], gen: "torch.Generator", dropout: bool = True):
        """Batched text conditioning; prompts dropped to "" with probability text_dropout."""
        import torch

        drop = (torch.rand(len(idx), generator=gen) < self.cfg.text_dropout).tolist() if dropout else [False] * len(idx)
        keys = []
        for i, task, d in zip(idx, tasks, drop):
            keys.append(("", None) if d else (task, self.cache.captions[i] if task == "generate" else None))
        parts = [self.cache.embeds[k] for k in keys]
        return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), parts[0][2])

    # -- cycle intermediate ---------------------------------------------------------------------
    def generate_x0(self, cond, embeds, gen: "torch.Generator") -> "torch.Tensor":
        """Clean-latent estimate from pure noise: one x0 step, or a few Euler steps (cycle_intermediate)."""
        import torch

        steps = 1 if self.cfg.cycle_intermediate == "one_step" else self.cfg.cycle_sampler_steps
        x = torch.randn(cond.shape[0], cond.shape[1], self.cache.x0.shape[-1], generator=gen).to(self.codec.device, self.codec.dtype)
        sigmas = torch.linspace(1.0, 0.0, steps + 1)
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            t = torch.full((x.shape[0],), float(s))
            v = self.codec.velocity(x, cond, t, embeds, self.cfg.guidance)
            x = x + (float(s_next) - float(s)) * v
        return x

    def cycled_pixels(self, idx: list[int], tasks: list[str], gen: "torch.Generator") -> "torch.Tensor":
        """Each sample's grid pixels with the opposite task's output pasted in (no_grad).

        tau_D sample: composite replaced by I* = synthesize(A, B); tau_C sample: layers replaced by
        (A', B') = decompose(I). No gradient flows through the intermediate.
        """
        import torch

        inter_tasks = [OPPOSITE[t] for t in tasks]
        with torch.no_grad():
            cond = torch.stack([self.cache.cond[t][i] for i, t in zip(idx, inter_tasks)]).to(self.codec.device)
            decoded = self.codec.decode(self.generate_x0(cond, self._plain_embeds(inter_tasks), gen))
            real = self.codec.pixels([self.cache.grids[i] for i in idx])
            return torch.cat([
                self.codec.paste_panels(real[k:k + 1], decoded[k:k + 1], generated_panels(t, self.codec.schema))
                for k, t in enumerate(inter_tasks)
            ])

    def cycled_inputs(self, idx: list[int], tasks: list[str], gen: "torch.Generator"):
        """(x0, Fill conditioning) of the cycled grids, built by the pipeline's own encoders."""
        import torch

        swapped = self.cycled_pixels(idx, tasks, gen)
        with torch.no_grad():
            return self.codec.encode(swapped, gen), self.codec.condition(swapped, tasks, gen)

    def _plain_embeds(self, tasks: list[str]):
        import torch

        parts = [self.cache.embeds[(t, None)] for t in tasks]
        return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), parts[0][2])

    # -- one step -----------------------------------------------------------------------------
    def losses(self, step: int) -> dict:
        """All loss terms of step `step` (a graph for backward in 'loss'), from the step's own RNG."""
        import torch

        gen = torch.Generator().manual_seed(_mix(self.cfg.seed, step))
        torch.manual_seed(_mix(self.cfg.seed, step))  # LoRA dropout draws from the global RNG
        b = self.batch(step, gen)
        weight = losses.cycle_weight_at(step, self.cfg.cycle_weight, self.cfg.cycle_warmup_steps)
        sel = [k for k, task in enumerate(b.tasks)
               if task in OPPOSITE and float(b.t[k]) <= self.cfg.cycle_max_t] if weight > 0 else []
        if not sel:
            v = self.codec.velocity(b.x_t, b.cond, b.t, b.embeds, self.cfg.guidance)
            return self._combine(v, b.x0, b.noise, {}, weight, self.token_weight(b.tasks, b.idx))
        v, terms = self.cycle_forward(b, sel, gen)
        return self._combine(v, b.x0, b.noise, terms, weight, self.token_weight(b.tasks, b.idx))

    def token_weight(self, tasks: list[str], idx: list[int] | None = None) -> "torch.Tensor | None":
        """None (every token), or the generated panels' tokens (loss_region), times the samples' trust."""
        w = self.codec.generated_tokens(tasks) if self.cfg.loss_region == "generated" else None
        if self.cache.trust is None or idx is None:
            return w
        trust = self.cache.trust[idx].to(self.codec.device)
        return trust if w is None else w * trust

    def batch(self, step: int, gen: "torch.Generator") -> "_Batch":
        """Step `step`'s samples: indices, tasks, x0, conditioning, text, t, noise and x_t."""
        import torch

        idx = self.batch_indices(step)
        tasks = self.batch_tasks(idx, gen)
        dev = self.codec.device
        x0 = self.cache.x0[idx].to(dev)
        cond = torch.stack([self.cache.cond[t][i] for i, t in zip(idx, tasks)]).to(dev)
        embeds = self.embeddings(idx, tasks, gen)
        t = losses.logit_normal_t(len(idx), gen, self.cfg.logit_mean, self.cfg.logit_std)
        noise = torch.randn(x0.shape, generator=gen).to(dev, x0.dtype)
        return _Batch(idx, tasks, x0, cond, embeds, t, noise, losses.noisy_sample(x0, noise, t))

    def cycle_forward(self, b: "_Batch", sel: list[int], gen: "torch.Generator"):
        """Velocities of the batch plus both L_cyc terms over the tau_D / tau_C samples `sel`.

        Real and cycled inputs go through one forward, with the same noise and t by construction.
        """
        import torch

        cyc_x0, cyc_cond = self.cycled_inputs([b.idx[k] for k in sel], [b.tasks[k] for k in sel], gen)
        x_all = torch.cat([b.x_t, losses.noisy_sample(cyc_x0, b.noise[sel], b.t[sel])])
        emb_all = tuple(torch.cat([e, e[sel]]) for e in b.embeds[:2]) + (b.embeds[2],)
        v_all = self.codec.velocity(x_all, torch.cat([b.cond, cyc_cond]), torch.cat([b.t, b.t[sel]]), emb_all,
                                    self.cfg.guidance)
        v, v_cyc = v_all[: len(b.idx)], v_all[len(b.idx):]
        terms = {}
        for task, name in CYCLE_TERMS.items():
            rows = [j for j, k in enumerate(sel) if b.tasks[k] == task]
            if rows:
                w = self.token_weight([task] * len(rows), [b.idx[sel[j]] for j in rows])
                terms[name] = losses.cycle_loss(v[[sel[j] for j in rows]], v_cyc[rows], w)
        return v, terms

    @staticmethod
    def _combine(v, x0, noise, terms: dict, weight: float, token_weight) -> dict:
        loss_fm = losses.flow_matching_loss(v, x0, noise, token_weight)
        loss_cyc = sum(terms.values()) if terms else None
        loss = loss_fm if loss_cyc is None else loss_fm + weight * loss_cyc
        return {"loss": loss, "loss_fm": loss_fm, "loss_cyc": loss_cyc, **terms}

    def step(self, step: int) -> dict:
        """Run optimisation step `step`; returns its scalar metrics."""
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        lr = self.cfg.lr * losses.lr_factor(step, self.cfg.steps, self.cfg.lr_schedule, self.cfg.lr_warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        out = self.losses(step)
        out["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_([self.params[n] for n in self.names], self.cfg.grad_clip)
        self.optimizer.step()
        row = {"step": step + 1}
        for k, val in out.items():
            row[k] = None if val is None else float(val.detach())
        row["grad_norm"] = float(grad_norm)
        row["lr"] = lr
        return row


# --------------------------------------------------------------------------------------------------
# Checkpoints: safetensors for tensors, JSON for the rest
# --------------------------------------------------------------------------------------------------
def save_checkpoint(out_dir: Path, trainer: CycleTrainer, step: int, curve: list[dict], fingerprint: str) -> Path:
    """Write ckpt-<step>/ atomically (temp dir + rename), then drop older checkpoints."""
    from safetensors.torch import save_file

    final = out_dir / f"{CHECKPOINT_PREFIX}{step:07d}"
    tmp = out_dir / f".tmp-{CHECKPOINT_PREFIX}{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({n: trainer.params[n].detach().cpu().contiguous() for n in trainer.names}, str(tmp / "lora.safetensors"))
    tensors, scalars = _optimizer_state(trainer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    state = {"step": step, "fingerprint": fingerprint, "optimizer_scalars": scalars, "loss_curve": curve}
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in _checkpoints(out_dir):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _optimizer_state(trainer: CycleTrainer) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    state = trainer.optimizer.state_dict()["state"]
    for i, name in enumerate(trainer.names):
        for key, val in state.get(i, {}).items():
            if key == "step":
                scalars[name] = float(val)
            else:
                tensors[f"{name}::{key}"] = val.detach().cpu().contiguous()
    return tensors, scalars


def _checkpoints(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.json").is_file())


def load_checkpoint(path: Path, trainer: CycleTrainer, fingerprint: str) -> tuple[int, list[dict]]:
    """Restore LoRA weights and optimizer moments; refuses a checkpoint of another config or data."""
    import torch
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    if state.get("fingerprint") != fingerprint:
        raise TrainError(
            f"checkpoint {path} was made with another training config or data set; delete it or "
            "train into a fresh out_dir"
        )
    weights = load_file(str(path / "lora.safetensors"))
    if sorted(weights) != trainer.names:
        raise TrainError(f"checkpoint {path} has other LoRA parameters than this run; delete it")
    with torch.no_grad():
        for n in trainer.names:
            trainer.params[n].copy_(weights[n].to(trainer.params[n].device))
    moments = load_file(str(path / "optimizer.safetensors"))
    opt_state = trainer.optimizer.state_dict()
    for i, n in enumerate(trainer.names):
        if n in state["optimizer_scalars"]:
            opt_state["state"][i] = {
                "step": torch.tensor(state["optimizer_scalars"][n]),
                "exp_avg": moments[f"{n}::exp_avg"], "exp_avg_sq": moments[f"{n}::exp_avg_sq"],
            }
    trainer.optimizer.load_state_dict(opt_state)
    return int(state["step"]), list(state["loss_curve"])


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------
def train_lora(backbone, triplets: list[dict], cfg: TrainConfig, lora: LoraConfig, out_dir: str, *,
               init_adapter: str | None = None, captions: list[str] | None = None,
               progress: ProgressFn | None = None, card: dict | None = None,
               trust: list | None = None, tasks: list | None = None,
               labeled: list | None = None) -> TrainResult:
    """Train the shared decomposition/synthesis LoRA on `triplets`; write the adapter into `out_dir`.

    `card` adds fields to the model card (e.g. {"data_rounds": [0, 1], "round": 2}).
    Per-triplet options, each a list parallel to `triplets` (None = the defaults):
      * `trust`: {panel: (H, W) float array in [0, 1]} or None: how far each target pixel may be believed
        (a pseudo-label's model-made pixels get 0, its real pixels 1); multiplies the loss per token;
      * `tasks`: the tasks a triplet may be trained on, e.g. ("decompose",) for a pseudo-label whose
        layers are not good enough to condition synthesis on;
      * `labeled`: True for human-labeled triplets; `cfg.anchor_fraction` of every batch comes from them.

    Resumes from the newest checkpoint in `out_dir` when one of the same config and data exists.
    An adapter a Sampler loaded is unloaded first (training on top of it would train the wrong model);
    the backbone comes back without adapters: load the result with lora_io.load_adapter / a new Sampler.
    """
    _check_inputs(triplets, cfg, lora, captions, init_adapter)
    _check_per_item(len(triplets), trust=trust, tasks=tasks, labeled=labeled)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if getattr(backbone.transformer, "peft_config", None):
        log.info("unloading adapters %s before training", list(backbone.transformer.peft_config))
        unload_adapter(backbone)
    codec = FillCodec(backbone)
    params = attach_lora(backbone.transformer, lora, cfg.seed)
    try:
        if init_adapter:
            load_init_adapter(backbone.transformer, init_adapter, params)
        cache = build_cache(codec, triplets, captions, cfg.seed, cfg.generate_fraction > 0)
        add_item_options(cache, codec, trust=trust, tasks=tasks, labeled=labeled)
        fingerprint = _run_fingerprint(cfg, lora, cache.fingerprint, init_adapter)
        trainer = CycleTrainer(backbone, cache, codec, cfg, params)
        with compiled_blocks(backbone.transformer, cfg.compile_blocks):
            return _run(trainer, out, fingerprint, init_adapter, progress, card or {})
    finally:
        backbone.transformer.eval()
        detach_lora(backbone.transformer)


def _check_per_item(n: int, **options) -> None:
    for name, values in options.items():
        if values is not None and len(values) != n:
            raise TrainError(f"{name} has {len(values)} entries for {n} triplets; give one per triplet")
    for i, allowed in enumerate(options.get("tasks") or []):
        if allowed is not None and (not allowed or set(allowed) - set(OPPOSITE)):
            raise TrainError(f"tasks of triplet #{i} must be a non-empty subset of {sorted(OPPOSITE)}; got {allowed}")


def add_item_options(cache: DataCache, codec: FillCodec, *, trust=None, tasks=None, labeled=None) -> None:
    """Per-triplet trust maps (as token weights), allowed tasks and labeled flags; part of the data fingerprint."""
    cache.trust = trust_tokens(codec, trust) if trust is not None and any(t is not None for t in trust) else None
    restricted = tasks is not None and any(tasks)  # all None: plain batches, exactly as without the option
    cache.allowed = [tuple(t) if t else tuple(OPPOSITE) for t in tasks] if restricted else None
    cache.labeled = [bool(x) for x in labeled] if labeled is not None else None
    if cache.trust is None and cache.allowed is None and (labeled is None or all(labeled)):
        return  # nothing per-triplet: the same run, and fingerprint, as a plain list of triplets
    h = hashlib.sha256(json.dumps([cache.allowed, cache.labeled]).encode())
    if cache.trust is not None:
        h.update(cache.trust.numpy().tobytes())
    cache.fingerprint = hashlib.sha256(f"{cache.fingerprint}:{h.hexdigest()}".encode()).hexdigest()[:16]


def trust_tokens(codec: FillCodec, trust: list) -> "torch.Tensor":
    """(N, tokens) float: each sample's pixel trust per panel averaged over every packed token's patch."""
    import numpy as np
    import torch

    patch = 2 * codec.pipe.vae_scale_factor  # one packed token covers patch x patch pixels, row-major
    rows = []
    for i, maps in enumerate(trust):
        full = np.ones((codec.height, codec.width), np.float32)
        for name, arr in (maps or {}).items():
            if name not in codec.schema.panels:
                raise TrainError(f"trust of triplet #{i} names panel {name!r}; panels are {codec.schema.panels}")
            arr = np.asarray(arr, np.float32)
            if arr.shape != (codec.panel, codec.panel) or not np.all((arr >= 0) & (arr <= 1)):
                raise TrainError(f"trust[{name!r}] of triplet #{i} must be a {codec.panel}x{codec.panel} "
                                 f"array in [0, 1]; got shape {arr.shape}")
            col = codec.schema.panels.index(name) * codec.panel
            full[:, col:col + codec.panel] = arr
        rows.append(torch.nn.functional.avg_pool2d(torch.from_numpy(full)[None, None], patch).flatten())
    return torch.stack(rows)


def _check_inputs(triplets, cfg: TrainConfig, lora: LoraConfig, captions, init_adapter) -> None:
    if not isinstance(cfg, TrainConfig) or not isinstance(lora, LoraConfig):
        raise TrainError("train_lora needs models.config.TrainConfig and LoraConfig instances")
    if not triplets:
        raise TrainError("no triplets to train on; the training view is empty")
    if captions is not None and len(captions) != len(triplets):
        raise TrainError(f"captions has {len(captions)} entries for {len(triplets)} triplets; give one per triplet")
    if init_adapter and not Path(init_adapter, "pytorch_lora_weights.safetensors").is_file():
        raise TrainError(f"init_adapter {init_adapter} has no pytorch_lora_weights.safetensors")


def _run_fingerprint(cfg: TrainConfig, lora: LoraConfig, data_fp: str, init_adapter: str | None) -> str:
    # `steps` and `checkpoint_every` are left out so a finished run can be extended by raising steps
    relevant = cfg.model_dump(exclude={"steps", "checkpoint_every", "continue_from_previous", "compile_blocks"})
    blob = json.dumps([relevant, lora.model_dump(), data_fp, _file_digest(init_adapter)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _file_digest(adapter_dir: str | None) -> str | None:
    if not adapter_dir:
        return None
    return hashlib.sha256(Path(adapter_dir, "pytorch_lora_weights.safetensors").read_bytes()).hexdigest()[:16]


def _run(trainer: CycleTrainer, out: Path, fingerprint: str, init_adapter, progress: ProgressFn | None,
         card_extra: dict) -> TrainResult:
    cfg = trainer.cfg
    start, curve = 0, []
    ckpts = _checkpoints(out)
    if ckpts:
        start, curve = load_checkpoint(ckpts[-1], trainer, fingerprint)
    trainer.backbone.transformer.train()
    t0 = time.perf_counter()
    with _ProgressSink(progress, cfg.steps, start) as sink:
        for step in range(start, cfg.steps):
            row = trainer.step(step)
            curve.append(_round_row(row))
            sink.update(step + 1, row)
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                save_checkpoint(out, trainer, step + 1, curve, fingerprint)
    seconds = time.perf_counter() - t0
    trainer.backbone.transformer.eval()
    metrics = _summary(curve, cfg, trainer, seconds, start, init_adapter)
    card = {**card_extra, "metrics": metrics, "train": cfg.model_dump(), "n_triplets": trainer.n}
    save_adapter(trainer.backbone, str(out), card=card, adapter_name=ADAPTER_NAME)
    (out / METRICS_FILE).write_text(json.dumps({"loss_curve": curve, "summary": metrics}, indent=1))
    for ckpt in _checkpoints(out):
        shutil.rmtree(ckpt, ignore_errors=True)
    return TrainResult(adapter_dir=str(out), metrics=metrics, loss_curve=curve)


def _round_row(row: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}


def _summary(curve: list[dict], cfg: TrainConfig, trainer: CycleTrainer, seconds: float, start: int,
             init_adapter) -> dict:
    tail = curve[-max(1, len(curve) // 10):]
    head = curve[: max(1, len(curve) // 10)]
    mean = lambda rows, k: _mean([r[k] for r in rows if r.get(k) is not None])  # noqa: E731
    ran = cfg.steps - start
    return {
        "steps": cfg.steps, "resumed_from_step": start, "train_seconds": round(seconds, 2),
        "sec_per_step": round(seconds / ran, 4) if ran else None,
        "n_triplets": trainer.n, "batch_size": cfg.batch_size,
        "loss_first": mean(head, "loss"), "loss_final": mean(tail, "loss"),
        "loss_fm_first": mean(head, "loss_fm"), "loss_fm_final": mean(tail, "loss_fm"),
        "loss_cyc_final": mean(tail, "loss_cyc"),
        "cycle_weight": cfg.cycle_weight, "cycle_intermediate": cfg.cycle_intermediate,
        "init_adapter": init_adapter,
    }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


class _ProgressSink:
    """The caller's progress callback, else a rich bar on an interactive terminal, else a plain line on stderr
    at least every `every_s` seconds, and at the end of a run that printed one (logs and CI see where a long
    training run is, with its speed and ETA; a run shorter than `every_s` prints nothing)."""

    every_s = 30.0

    def __init__(self, callback: ProgressFn | None, total: int, start: int,
                 clock: Callable[[], float] = time.monotonic):
        self.callback, self.total, self.start, self.clock = callback, total, start, clock
        self._bar = None
        self._t0 = self._last = clock()

    def __enter__(self) -> "_ProgressSink":
        if self.callback is None and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("train", total=self.total, completed=self.start, loss="-")
        return self

    def update(self, step: int, row: dict) -> None:
        if self.callback is not None:
            self.callback(step, self.total, row)
        elif self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{row['loss']:.4f}")
        elif self.clock() - self._last >= self.every_s or (step == self.total and self._last > self._t0):
            self._last = self.clock()
            sys.stderr.write(progress_line(step, self.total, row["loss"], step - self.start, self._last - self._t0))
            sys.stderr.flush()

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def progress_line(step: int, total: int, loss: float, done: int, seconds: float) -> str:
    """`train 340/1500 (23 %) loss 0.1234, 3.1 steps/s, ETA 6m12s` for a run that made `done` steps in `seconds`."""
    rate = done / seconds if seconds > 0 else 0.0
    eta = f"{int((total - step) / rate // 60)}m{int((total - step) / rate % 60):02d}s" if rate > 0 else "?"
    return f"train {step}/{total} ({100 * step // max(1, total)} %) loss {loss:.4f}, {rate:.1f} steps/s, ETA {eta}\n"

