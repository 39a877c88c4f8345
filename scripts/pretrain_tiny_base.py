"""Pretrain the tiny FLUX-Fill-shaped base that the CPU world ships in models/assets/tiny-base/.

Two phases, both seeded:
1. the tiny AutoencoderKL learns to reconstruct synthetic panels; its latent shift/scale are then set
   from the latent statistics, as FLUX's VAE has them;
2. the tiny FluxTransformer2DModel learns grid inpainting with FLUX's flow-matching objective
   (x_t = (1-t) x0 + t noise, target noise - x0, t logit-normal) under random masks (boxes, strokes,
   whole panels, all panels), over two kinds of grid:
   - unrelated grids: panels drawn independently from different triplets, with the empty prompt (a
     caption there would describe one panel only, which taught the old base to ignore its text);
   - triplet grids (--triplet-share): one item's composite | logo | object with that item's caption,
     bare or inside a task template, so the caption describes every panel it sees.
   With --train-text (default) the two text encoders learn with the transformer: at their random
   initialisation a caption moved a generated triplet by 3 grey levels where the noise moved it by 39
   (issue 26). The base thus has FLUX's knowledge of its world - products of every kind, with and
   without logos, in panels that belong together - while the task prompts, the cycle and the recipe's
   seeds remain the LoRA's to learn. Triplets come from the renderer's own "pretrain" split, never
   from a loop's seeds, pool, dev or test items.

The Fill conditioning comes from FluxFillPipeline's own methods (prepare_mask_latents, _pack_latents,
_prepare_latent_image_ids, the VAE's shift/scale), so the base sees what the pipeline builds.
Writes a diffusers FluxFillPipeline folder (model_index.json; per component a config and safetensors;
the tokenizers; the scheduler) that `FluxFillPipeline.from_pretrained(out)` loads, plus base.json (the
run's record and metrics).

    python scripts/pretrain_tiny_base.py --device cpu                # ~20 min on 2 CPU cores
    # the shipped base (issue 26): the previous base (tiny-base@776584320bfa) continued, ~11 min on 2 cores
    python scripts/pretrain_tiny_base.py --init-from OLD_BASE --out NEW --n-triplets 4000 --steps 1222 \
        --batch 16 --checkpoint-every 500 --eval-n 96 --threads 2
    python scripts/pretrain_tiny_base.py --init-from models/assets/tiny-base --out NEW --steps 6000 \
        --checkpoint-every 250                                        # continue a base; resumable:
    python scripts/pretrain_tiny_base.py ... --resume                 # the same arguments, from NEW.ckpt/
    python scripts/pretrain_tiny_base.py --smoke --out /tmp/tiny     # seconds, checks the script
    python scripts/pretrain_tiny_base.py --convert-from OLD --out NEW  # an old flat-layout base, same weights
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layerloop.models import synthetic, tiny  # noqa: E402
from layerloop.models.config import DEFAULT_PROMPT_TEMPLATES  # noqa: E402
from layerloop.models.grid import LayerSchema  # noqa: E402

PANEL = 32
MASK_KINDS = ("panels", "boxes", "strokes")
MASK_MIX = (0.45, 0.35, 0.20)
CKPT_STATE = "state.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(tiny.ASSET_DIR))
    p.add_argument("--n-triplets", type=int, default=1500, help="synthetic triplets rendered for training")
    p.add_argument("--vae-steps", type=int, default=500)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--steps", type=int, default=900, help="transformer inpainting steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--time-budget-s", type=float, default=0.0,
                   help="stop the transformer phase after this many seconds of the whole run (0 = none)")
    p.add_argument("--eval-n", type=int, default=48, help="held-out triplets for the recorded metrics")
    p.add_argument("--eval-steps", type=int, default=8, help="sampler steps for the inpainting metric")
    p.add_argument("--related", type=float, default=0.0,
                   help="share of grids whose panels are generic transforms of one panel (in-context prior)")
    p.add_argument("--mask-mix", type=float, nargs=3, default=list(MASK_MIX), metavar=("PANELS", "BOXES", "STROKES"),
                   help="mask kind shares for the grids of unrelated panels")
    p.add_argument("--triplet-mask-mix", type=float, nargs=3, default=list(TRIPLET_MASK_MIX),
                   metavar=("ALL", "PANELS", "LOCAL"),
                   help="mask kind shares for the triplet grids: all three panels (only the caption tells the "
                        "product), one or two whole panels, a local hole")
    p.add_argument("--triplet-share", type=float, default=0.5,
                   help="share of 3-panel grids that are one captioned triplet (0 = the old, text-blind recipe)")
    p.add_argument("--caption-p", type=float, default=0.8,
                   help="share of triplet grids that get their caption (the rest: the empty prompt)")
    p.add_argument("--clause-p", type=float, default=0.0,
                   help="share of captioned triplet grids whose prompt is one clause of the caption (object or "
                        "logo), so each colour word is seen with one colour")
    p.add_argument("--high-t-p", type=float, default=0.5,
                   help="share of captioned triplet grids trained at t ~ U(--high-t-min, 1), where only the "
                        "caption tells the product's colour and kind (0 = logit-normal times for every grid)")
    p.add_argument("--high-t-min", type=float, default=HIGH_T,
                   help="lowest flow time of the --high-t-p grids (the noisier, the less x_t shows the colour)")
    p.add_argument("--train-text", action=argparse.BooleanOptionalAction, default=True,
                   help="train both text encoders with the transformer")
    p.add_argument("--text-lr", type=float, default=None, help="text encoders' learning rate (default: --lr)")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="write a resumable checkpoint to --checkpoint-dir every N transformer steps (0 = never)")
    p.add_argument("--checkpoint-dir", default=None, help="default: <out>.ckpt")
    p.add_argument("--stop-at", type=int, default=0,
                   help="stop after this transformer step without saving the base, as a killed run would "
                        "(split a long run across sessions; continue with --resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue the transformer phase from --checkpoint-dir (same arguments as the first run)")
    p.add_argument("--init-from", default=None,
                   help="start from this base (all weights, vocabulary, VAE factors) and skip the VAE phase")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--smoke", action="store_true", help="tiny run (few steps) to check the script works")
    p.add_argument("--eval-only", action="store_true", help="only measure the base already in --out")
    p.add_argument("--convert-from", default=None,
                   help="rewrite an old flat-layout base (<component>.safetensors + base.json) as a diffusers "
                        "folder in --out, weights byte for byte; no training")
    args = p.parse_args(argv)
    if args.smoke:
        args.n_triplets, args.vae_steps, args.steps, args.eval_n, args.eval_steps = 24, 3, 3, 4, 2
    if min(args.n_triplets, args.vae_steps, args.steps, args.eval_n, args.batch, args.vae_batch) < 1:
        p.error("counts, steps and batch sizes must be >= 1")
    for name in ("mask_mix", "triplet_mask_mix"):
        mix = getattr(args, name)
        if min(mix) < 0 or abs(sum(mix) - 1.0) > 1e-6:
            p.error(f"--{name.replace('_', '-')} must be three non-negative shares summing to 1; got {mix}")
    for name in ("related", "triplet_share", "caption_p", "clause_p", "high_t_p"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} must be a share in [0, 1]; got {getattr(args, name)}")
    if not 0.0 <= args.high_t_min < 1.0:
        p.error(f"--high-t-min must be in [0, 1); got {args.high_t_min}")
    if args.related + args.triplet_share > 1.0:
        p.error(f"--related ({args.related}) + --triplet-share ({args.triplet_share}) must not exceed 1")
    args.checkpoint_dir = args.checkpoint_dir or f"{args.out.rstrip('/')}.ckpt"
    if args.resume and not (Path(args.checkpoint_dir) / CKPT_STATE).is_file():
        p.error(f"--resume: no checkpoint in {args.checkpoint_dir} (it needs {CKPT_STATE}; write one with "
                "--checkpoint-every)")
    if args.init_from and not tiny.assets_present(Path(args.init_from)):
        p.error(f"--init-from {args.init_from} is not a tiny base: it needs {tiny.MODEL_INDEX} and a folder "
                f"per component (a directory this script wrote; convert old ones with --convert-from)")
    if args.convert_from and not tiny.legacy_layout(Path(args.convert_from)):
        p.error(f"--convert-from {args.convert_from} is not an old flat-layout base (transformer.safetensors, "
                "base.json, no model_index.json)")
    return args


# ------------------------------------------------------------------ data

def render_pool(n: int, seed: int, split: str = "pretrain"):
    """All panels of n synthetic triplets as one [-1, 1] tensor (item i's composite, logo and object at rows
    3i, 3i + 1, 3i + 2), plus each panel's caption (its item's)."""
    import torch

    arrays, captions = [], []
    for _, triplet, meta in synthetic.make_split(split, n, PANEL, seed):
        for name in ("composite", "logo", "object"):
            arrays.append(np.asarray(triplet[name].convert("RGB"), dtype=np.float32))
            captions.append(meta["caption"])
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return x.contiguous(), captions


def random_mask(rng: np.random.Generator, n_panels: int, kind: str | None = None,
                mix: tuple[float, ...] = MASK_MIX) -> np.ndarray:
    """One pixel mask over an n-panel grid (1 = inpaint): whole panels, boxes or strokes (kind=None: the mix)."""
    w, h = PANEL * n_panels, PANEL
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    kind = kind or str(rng.choice(MASK_KINDS, p=mix))
    if kind not in MASK_KINDS:
        raise ValueError(f"mask kind must be one of {MASK_KINDS}; got {kind!r}")
    if kind == "panels":
        chosen = rng.random(n_panels) < 0.5
        chosen[rng.integers(n_panels)] = True  # never an empty mask
        for i in np.flatnonzero(chosen):
            draw.rectangle([i * PANEL, 0, (i + 1) * PANEL - 1, h - 1], fill=255)
    elif kind == "boxes":
        for _ in range(rng.integers(1, 4)):
            bw, bh = rng.integers(4, PANEL + 1, size=2)
            x0, y0 = rng.integers(0, w - bw + 1), rng.integers(0, h - bh + 1)
            draw.rectangle([x0, y0, x0 + bw - 1, y0 + bh - 1], fill=255)
    else:
        for _ in range(rng.integers(1, 4)):
            pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(rng.integers(2, 5))]
            draw.line(pts, fill=255, width=int(rng.integers(3, 8)))
    return (np.asarray(img) > 127).astype(np.float32)


def make_batch(panels, rng: np.random.Generator, batch: int, n_panels: int, kind: str | None = None):
    """Grids of independently drawn panels (different triplets), their masks and a caption index each."""
    import torch

    idx = rng.integers(0, panels.shape[0], size=(batch, n_panels))
    grids = torch.cat([panels[idx[:, i]] for i in range(n_panels)], dim=3)
    masks = torch.from_numpy(np.stack([random_mask(rng, n_panels, kind) for _ in range(batch)]))[:, None]
    return grids, masks, idx[:, 0]


RELATED_KINDS = ("copy", "mirror", "gain")
RELATED_MIX = (0.7, 0.15, 0.15)


def related_grids(source, rng: np.random.Generator, n_panels: int, bank=None):
    """Grids whose panels are generic transforms of ONE panel, with whole panels (or local holes) masked.

    FLUX learned from web images that the panels of a grid relate (diptychs, repeated products); a base
    trained only on unrelated panels has no reason to look across panels, and no LoRA budget teaches that.
    The relations here are generic - mostly exact copies, some mirrored or brighter/darker - never logo
    removal or extraction, so the decomposition relation itself is still left to the LoRA. Copies
    dominate so that a hidden panel is predictable from a visible one (a mix of many equally likely
    transforms makes the best guess a blur, and teaches little). `bank` (masks of this grid width): 30 %
    of the grids get a local box/stroke mask from it instead of whole panels, so local holes are
    filled by copying from the other panels too.
    """
    import torch

    b = source.shape[0]
    panels = []
    for _ in range(n_panels):
        x = source.clone()
        kind = torch.from_numpy(rng.choice(len(RELATED_KINDS), size=b, p=RELATED_MIX)).to(x.device)
        x = torch.where((kind == 1)[:, None, None, None], x.flip(-1), x)
        gain = torch.from_numpy(rng.uniform(0.6, 1.3, size=b).astype(np.float32)).to(x.device)
        x = torch.where((kind == 2)[:, None, None, None], ((x + 1) * gain[:, None, None, None] - 1).clamp(-1, 1), x)
        panels.append(x)
    masks = torch.zeros(b, 1, PANEL, PANEL * n_panels, device=source.device)
    local = rng.random(b) < (0.3 if bank is not None else 0.0)
    for row in range(b):
        if local[row]:
            masks[row] = bank[int(rng.integers(bank.shape[0]))]
            continue
        hidden = rng.permutation(n_panels)[: rng.integers(1, n_panels)]  # at least one panel stays visible
        for i in hidden:
            masks[row, :, :, i * PANEL:(i + 1) * PANEL] = 1.0
    return torch.cat(panels, dim=3), masks


TRIPLET_MASKS = ("all", "panels", "local")
# 70 % all-masked: only these grids need the caption (issue 26: at 30 % the base named the colour 0.14, at 70 % 0.20)
TRIPLET_MASK_MIX = (0.7, 0.2, 0.1)


def triplet_masks(rng: np.random.Generator, b: int, bank, device, mix=TRIPLET_MASK_MIX):
    """Masks for triplet grids: all three panels (generation from the caption), one or two whole panels
    (one layer from the others: the relation a Fill model sees in related panels), or a local hole."""
    import torch

    masks = torch.zeros(b, 1, PANEL, 3 * PANEL, device=device)
    for row, kind in enumerate(rng.choice(len(TRIPLET_MASKS), size=b, p=mix)):
        if TRIPLET_MASKS[kind] == "all":
            masks[row] = 1.0
        elif TRIPLET_MASKS[kind] == "panels":
            for i in rng.permutation(3)[: rng.integers(1, 3)]:
                masks[row, :, :, i * PANEL:(i + 1) * PANEL] = 1.0
        else:
            masks[row] = bank[int(rng.integers(bank.shape[0]))]
    return masks


def triplet_prompt(caption: str, rng: np.random.Generator, caption_p: float, clause_p: float = 0.0) -> str:
    """The caption bare (half) or inside one of the task templates, or (1 - caption_p) the empty prompt:
    the templates' words then do not drown the caption when the LoRA's prompts carry it.

    `clause_p`: share of captioned grids that get one clause only (object or logo, even odds). A full
    caption names two colours, and a small text encoder must learn which one paints the object; a clause
    names one, so the word's colour is learned apart from that binding."""
    if rng.random() >= caption_p:
        return ""
    if clause_p and rng.random() < clause_p:
        caption = synthetic.split_caption(caption)[int(rng.integers(2))]
    if rng.random() < 0.5:
        return caption
    template = list(DEFAULT_PROMPT_TEMPLATES.values())[int(rng.integers(len(DEFAULT_PROMPT_TEMPLATES)))]
    return template.format(caption=f" {caption}")


class TrainData:
    """Panels and a bank of masks kept on the training device, so a step draws a batch by indexing only.

    Drawing PIL masks per sample per step kept a GPU waiting on the CPU; a bank of a few thousand masks
    per grid width, drawn once (from its own seeded generator, so a resumed run rebuilds the same bank),
    gives the same distribution.
    """

    def __init__(self, panels, captions: list[str], rng: np.random.Generator, device, bank_size: int,
                 args=None, mix: tuple[float, ...] = MASK_MIX, bank_seed: int = 0):
        import torch

        self.panels, self.captions, self.rng, self.device = panels.to(device), captions, rng, device
        self.related = getattr(args, "related", 0.0)
        self.triplet = getattr(args, "triplet_share", 0.0)
        self.caption_p = getattr(args, "caption_p", 0.0)
        self.clause_p = getattr(args, "clause_p", 0.0)
        self.triplet_mix = tuple(getattr(args, "triplet_mask_mix", TRIPLET_MASK_MIX))
        bank_rng = np.random.default_rng(bank_seed)
        self.banks = {n: torch.from_numpy(np.stack([random_mask(bank_rng, n, mix=mix) for _ in range(size)]))[:, None].to(device)
                      for n, size in ((3, bank_size), (4, max(1, bank_size // 4)))}

    def batch(self, batch: int, n_panels: int):
        """(grids, masks, prompts): related grids, then triplet grids (3 panels only), then unrelated ones."""
        import torch

        idx = self.rng.integers(0, self.panels.shape[0], size=(batch, n_panels))
        pick = torch.from_numpy(idx).to(self.device)
        grids = torch.cat([self.panels[pick[:, i]] for i in range(n_panels)], dim=3)
        bank = self.banks[n_panels]
        masks = bank[torch.from_numpy(self.rng.integers(0, bank.shape[0], size=batch)).to(self.device)]
        prompts = [""] * batch  # unrelated panels: no caption describes the grid
        n_rel = int(round(self.related * batch))
        if n_rel:
            grids[:n_rel], masks[:n_rel] = related_grids(self.panels[pick[:n_rel, 0]], self.rng, n_panels, bank)
        n_trip = int(round(self.triplet * batch)) if n_panels == 3 else 0
        if n_trip:
            rows = slice(n_rel, n_rel + n_trip)
            items = torch.from_numpy(self.rng.integers(0, self.panels.shape[0] // 3, size=n_trip)).to(self.device)
            grids[rows] = torch.cat([self.panels[3 * items + k] for k in range(3)], dim=3)
            masks[rows] = triplet_masks(self.rng, n_trip, bank, self.device, self.triplet_mix)
            prompts[rows] = [triplet_prompt(self.captions[3 * int(i)], self.rng, self.caption_p, self.clause_p)
                             for i in items]
        return grids, masks, prompts


# ------------------------------------------------------------------ phase 1: VAE

def train_vae(vae, panels, args, rng, log, started: float) -> int:
    import torch

    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    vae.train().requires_grad_(True)
    panels = panels.to(args.device)
    # the VAE may use at most 35 % of a time budget, so the transformer always gets the larger share
    clock = _Clock(args.vae_steps, _remaining(args, started, share=0.35))
    for step in range(1, args.vae_steps + 1):
        x = panels[torch.from_numpy(rng.integers(0, panels.shape[0], size=args.vae_batch)).to(args.device)]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(x.device)
        rec = vae.decode(z).sample
        # MSE drives PSNR; L1 keeps thin logo strokes sharp; tiny KL keeps latents bounded for the transformer
        loss = (rec - x).pow(2).mean() + 0.5 * (rec - x).abs().mean() + 1e-6 * post.kl().mean()
        progress = clock.progress(step)
        _set_lr(opt, args.vae_lr, step, args.vae_steps, progress)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0 or step == args.vae_steps:
            log(f"vae step {step}/{args.vae_steps} loss {loss.item():.4f}")
        if clock.budgeted and progress >= 1.0 and step < args.vae_steps:
            log(f"VAE share of the time budget reached after {step} steps")
            break
    vae.eval().requires_grad_(False)
    return step


def set_latent_factors(vae, panels, device) -> dict:
    """shift = latent mean, scale = 1/latent std, so the transformer sees unit-variance latents (as FLUX)."""
    import torch

    with torch.no_grad():
        z = torch.cat([vae.encode(panels[i:i + 256].to(device)).latent_dist.mode() for i in range(0, min(1024, len(panels)), 256)])
    factors = {"shift_factor": float(z.mean()), "scaling_factor": float(1.0 / z.std())}
    vae.register_to_config(**factors)
    return factors


# ------------------------------------------------------------------ phase 2: transformer

class TextConditioning:
    """Prompt embeddings as FluxFillPipeline.encode_prompt makes them: with gradients while the text
    encoders learn (--train-text), else cached per distinct prompt (the encoders are then constant)."""

    def __init__(self, pipe, device, train: bool):
        self.pipe, self.device, self.train, self.cache = pipe, device, train, {}

    def __call__(self, prompts: list[str]):
        import torch

        if self.train:
            return self._encode(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            with torch.no_grad():
                embeds, pooled = self._encode(missing)
            self.cache.update({p: (e, q) for p, e, q in zip(missing, embeds, pooled)})
        return (torch.stack([self.cache[p][0] for p in prompts]), torch.stack([self.cache[p][1] for p in prompts]))

    def _encode(self, prompts: list[str]):
        embeds, pooled, _ = self.pipe.encode_prompt(prompts, prompt_2=prompts, device=self.device,
                                                    max_sequence_length=tiny.T5_MAX_LENGTH)
        return embeds, pooled


def fill_inputs(pipe, grids, masks, gen):
    """Packed clean latents x0 and the Fill conditioning exactly as FluxFillPipeline builds it."""
    import torch

    vae, b = pipe.vae, grids.shape[0]
    h, w = grids.shape[-2:]
    lat_h, lat_w = h // pipe.vae_scale_factor, w // pipe.vae_scale_factor
    with torch.no_grad():
        z = vae.encode(grids).latent_dist.sample(gen)
        z = (z - vae.config.shift_factor) * vae.config.scaling_factor
        x0 = pipe._pack_latents(z, b, z.shape[1], lat_h, lat_w)
        mask, masked = pipe.prepare_mask_latents(
            masks, grids * (1 - masks), b, z.shape[1], 1, h, w, grids.dtype, grids.device, gen
        )
    cond = torch.cat((masked, mask), dim=-1)
    ids = pipe._prepare_latent_image_ids(b, lat_h // 2, lat_w // 2, grids.device, grids.dtype)
    return x0, cond, ids


HIGH_T = 0.9  # the noisiest tenth of flow times, where x_t shows little of the product (see --high-t-p)


def caption_times(t, prompts: list[str], gen, share: float, low: float = HIGH_T):
    """Flow times with a `share` of the captioned rows moved to U(low, 1).

    Colour is the noise-robust feature: averaged over the ~300 latent values of an object, the noise's std
    is t / 17, so by that estimate (not measured) x_t shows the colour until t ~ 0.95 and only above it
    does the loss need the caption; sigmoid(N(0, 1)) puts 0.16 % of its draws there. The sampler's first
    step, which settles colour and kind, runs at t = 1. Unrelated grids (the empty prompt) keep the
    logit-normal times."""
    import torch

    if not share:
        return t
    high = low + (1 - low) * torch.rand(len(prompts), generator=gen)
    pick = torch.tensor([bool(p) for p in prompts]) & (torch.rand(len(prompts), generator=gen) < share)
    return torch.where(pick, high, t)


def transformer_step(pipe, text: TextConditioning, batch, gen, rng, args):
    """One flow-matching loss on a batch of inpainting grids."""
    import torch

    from layerloop.models.losses import logit_normal_t, noisy_sample, velocity_target

    grids, masks, prompts = batch
    grids, masks = grids.to(args.device), masks.to(args.device)
    x0, cond, img_ids = fill_inputs(pipe, grids, masks, gen)
    b = x0.shape[0]
    t = caption_times(logit_normal_t(b, gen), prompts, gen, getattr(args, "high_t_p", 0.0),
                      getattr(args, "high_t_min", HIGH_T)).to(args.device)
    noise = torch.randn(x0.shape, generator=gen).to(args.device)
    embeds, pooled = text(prompts)
    # guidance is uniform over the range samplers use, so the base does not depend on its value
    guidance = torch.from_numpy(rng.uniform(1.0, 40.0, size=b).astype(np.float32)).to(args.device)
    v = pipe.transformer(
        hidden_states=torch.cat((noisy_sample(x0, noise, t), cond), dim=2), timestep=t, guidance=guidance,
        pooled_projections=pooled, encoder_hidden_states=embeds,
        txt_ids=torch.zeros(embeds.shape[1], 3, device=args.device), img_ids=img_ids, return_dict=False,
    )[0]
    return (v - velocity_target(x0, noise)).pow(2).mean()


def trained_modules(pipe, args) -> list:
    """What the transformer phase optimises: the transformer, and the text encoders with --train-text."""
    return [pipe.transformer, *((pipe.text_encoder, pipe.text_encoder_2) if args.train_text else ())]


def make_optimizer(pipe, args):
    import torch

    groups = [{"params": list(pipe.transformer.parameters()), "lr_scale": 1.0}]
    if args.train_text:
        encoders = [p for m in (pipe.text_encoder, pipe.text_encoder_2) for p in m.parameters()]
        groups.append({"params": encoders, "lr_scale": (args.text_lr or args.lr) / args.lr})
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.01)


def train_transformer(pipe, panels, captions, args, rng, log, started: float, record: dict) -> int:
    """The inpainting phase; returns the last step done. Checkpoints (and --resume) keep every piece of
    state a step depends on, so a resumed run ends with the weights of an uninterrupted one."""
    import torch

    modules = trained_modules(pipe, args)
    pipe.text_encoder.eval(), pipe.text_encoder_2.eval()  # fresh modules start in train mode: T5's dropout
    pipe.transformer.train()                                # would make training differ from inference
    for m in modules:
        m.requires_grad_(True)
    text = TextConditioning(pipe, args.device, train=args.train_text)
    opt = make_optimizer(pipe, args)
    gen = torch.Generator().manual_seed(args.seed + 1)
    data = TrainData(panels, captions, rng, args.device, bank_size=min(args.steps * args.batch, 8192), args=args,
                     mix=tuple(args.mask_mix), bank_seed=args.seed + 11)
    first, spent = 1, 0.0
    if args.resume:
        first, spent = restore_checkpoint(Path(args.checkpoint_dir), opt, gen, rng, record, log)
    budget = _remaining(args, started - spent, share=1.0)
    clock, done = _Clock(args.steps, budget, spent_s=spent), first - 1
    params = [p for m in modules for p in m.parameters()]
    for step in range(first, args.steps + 1):
        progress = clock.progress(step)
        _set_lr(opt, args.lr, step, args.steps, progress)
        n_panels = 4 if rng.random() < 0.2 else 3  # K=3 grids too, so wider schemas are not out of range
        loss = transformer_step(pipe, text, data.batch(args.batch, n_panels), gen, rng, args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        done = step
        if step % args.log_every == 0 or step == args.steps:
            log(f"transformer step {step}/{args.steps} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e}")
        if args.checkpoint_every and step % args.checkpoint_every == 0 and step < args.steps:
            save_checkpoint(pipe, Path(args.checkpoint_dir), opt, gen, rng, step, clock.spent(), record, log)
        if args.stop_at and step >= args.stop_at:
            log(f"stopped at step {step} (--stop-at): resume with --resume")
            break
        if clock.budgeted and progress >= 1.0 and step < args.steps:
            log(f"time budget reached after {step} transformer steps")
            break
    for m in modules:
        m.eval().requires_grad_(False)
    return done


# ------------------------------------------------------------------ checkpoints

def save_checkpoint(pipe, ckdir: Path, opt, gen, rng, step: int, spent_s: float, record: dict, log) -> None:
    """The whole base (a folder --init-from reads), the optimizer's moments and the generators' states.

    Safetensors and JSON only (no pickle); state.json is written last, through a rename, so a run killed
    while writing leaves the previous checkpoint whole.
    """
    from safetensors.torch import save_file

    ckdir.mkdir(parents=True, exist_ok=True)
    modules = {n: getattr(pipe, n) for n in (*tiny.COMPONENTS, *tiny.TOKENIZERS, "scheduler")}
    tiny.save_base(modules, ckdir / "base", {"record": {"checkpoint_step": step}})
    tensors, meta = _optimizer_tensors(opt)
    tensors["torch_generator"] = gen.get_state()
    save_file(tensors, str(ckdir / "optimizer.safetensors"))
    state = {"step": step, "spent_s": spent_s, "numpy_rng": rng.bit_generator.state, "param_groups": meta,
             "record": record}
    (ckdir / f"{CKPT_STATE}.tmp").write_text(json.dumps(state))
    (ckdir / f"{CKPT_STATE}.tmp").replace(ckdir / CKPT_STATE)
    log(f"checkpoint at step {step} -> {ckdir}")


def _optimizer_tensors(opt) -> tuple[dict, list]:
    sd = opt.state_dict()
    tensors = {f"{i}.{k}": v.contiguous() for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def restore_checkpoint(ckdir: Path, opt, gen, rng, record: dict, log) -> tuple[int, float]:
    """Optimizer moments, generator states and the record of the run being resumed; returns
    (first step to run, seconds the phase had already spent). The weights were loaded by build_or_init."""
    from safetensors.torch import load_file

    state = json.loads((ckdir / CKPT_STATE).read_text())
    tensors = load_file(str(ckdir / "optimizer.safetensors"))
    gen.set_state(tensors.pop("torch_generator"))
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        per_param.setdefault(int(i), {})[name] = value
    opt.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    rng.bit_generator.state = state["numpy_rng"]
    record.update(state["record"])
    log(f"resumed from {ckdir} after step {state['step']}")
    return state["step"] + 1, state["spent_s"]


def _remaining(args, started: float, share: float) -> float | None:
    """Seconds left of `share` of the run's time budget; None when the run has no budget."""
    if not args.time_budget_s:
        return None
    return share * args.time_budget_s - (time.time() - started)


class _Clock:
    """Training progress in [0, 1]: steps done, or under a time budget whichever runs out first.

    Following the clock too means a run cut by its budget still ends with the learning rate cooled down.
    A phase left with no time still gets MIN_PHASE_S, so a slow earlier phase cannot disable the budget.
    spent_s: what a resumed phase had already used of it.
    """

    MIN_PHASE_S = 30.0

    def __init__(self, steps: int, budget_s: float | None, spent_s: float = 0.0):
        self.steps, self.start, self.before = steps, time.time(), spent_s
        self.budgeted = budget_s is not None
        self.budget = max((budget_s or 0.0) + spent_s, self.MIN_PHASE_S)

    def spent(self) -> float:
        return self.before + time.time() - self.start

    def progress(self, step: int) -> float:
        by_time = self.spent() / self.budget if self.budgeted else 0.0
        return min(1.0, max(step / self.steps, by_time))


def _set_lr(opt, base: float, step: int, total: int, progress: float) -> None:
    """Linear warm-up over 5 % of the steps, then cosine decay to zero at progress 1."""
    warm = min(1.0, step / max(1, total // 20))
    for group in opt.param_groups:
        group["lr"] = base * group.get("lr_scale", 1.0) * warm * 0.5 * (1 + math.cos(math.pi * progress))


# ------------------------------------------------------------------ evaluation

def psnr(a: np.ndarray, b: np.ndarray, weight: np.ndarray | None = None) -> float:
    """PSNR in dB of uint8-range arrays, over the pixels where weight > 0 when given."""
    err = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    mse = err.mean() if weight is None else (err * weight[..., None]).sum() / (3 * weight.sum())
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def eval_vae(vae, panels, device) -> float:
    import torch

    with torch.no_grad():
        rec = vae.decode(vae.encode(panels.to(device)).latent_dist.mode()).sample.clamp(-1, 1)
    to8 = lambda x: ((x.cpu().permute(0, 2, 3, 1).numpy() + 1) * 127.5).round()  # noqa: E731
    return float(np.mean([psnr(a, b) for a, b in zip(to8(panels), to8(rec))]))


def eval_inpainting(backbone, panels, args) -> dict:
    """Masked-region PSNR of the Fill pipeline on held-out grids vs a mean-colour fill baseline.

    Reported for the training mask mix and per mask kind: whole panels of shuffled triplets are
    unpredictable (mean fill is near PSNR-optimal there), boxes and strokes show the inpainting itself.
    """
    out = _eval_masks(backbone, panels, args, kind=None, suffix="")
    for kind in (*MASK_KINDS, "related"):
        out.update(_eval_masks(backbone, panels, args, kind=kind, suffix=f"_{kind}"))
    return {**out, "inpaint_eval_steps": args.eval_steps, "inpaint_eval_n": args.eval_n}


def _eval_masks(backbone, panels, args, kind: str | None, suffix: str) -> dict:
    import torch

    rng = np.random.default_rng(args.seed + 7)
    if kind == "related":
        grids, masks = related_grids(panels[: args.eval_n], rng, 3)
    else:
        grids, masks, _ = make_batch(panels, rng, args.eval_n, 3, kind)
    to_pil = lambda x: Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))  # noqa: E731
    truth = [np.asarray(to_pil(g), dtype=np.float64) for g in grids]
    m = masks[:, 0].numpy()
    pe, pooled, _ = backbone.embed_prompt("")
    outs = []
    for i in range(0, args.eval_n, 16):
        n = min(16, args.eval_n - i)
        res = backbone.pipeline()(
            prompt_embeds=pe.repeat(n, 1, 1), pooled_prompt_embeds=pooled.repeat(n, 1),
            image=[to_pil(g) for g in grids[i:i + n]],
            mask_image=[Image.fromarray((mm * 255).astype(np.uint8)) for mm in m[i:i + n]],
            height=PANEL, width=3 * PANEL, num_inference_steps=args.eval_steps, guidance_scale=30.0,
            generator=torch.Generator().manual_seed(args.seed + i), output_type="np",
        )
        outs.extend(list(res.images * 255.0))
    model = [psnr(o, t, mm) for o, t, mm in zip(outs, truth, m)]
    base = [psnr(_mean_fill(t, mm), t, mm) for t, mm in zip(truth, m)]
    return {f"inpaint_psnr_masked{suffix}": float(np.mean(model)),
            f"meanfill_psnr_masked{suffix}": float(np.mean(base))}


def _mean_fill(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    keep = mask < 0.5
    out = img.copy()
    out[~keep] = img[keep].mean(axis=0) if keep.any() else 127.5
    return out


# ------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> dict:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.time()
    log = lambda msg: print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)  # noqa: E731

    if args.eval_only:
        return evaluate_only(args, log)
    if args.convert_from:
        return convert_legacy(Path(args.convert_from), Path(args.out), log)
    panels, captions = render_pool(args.n_triplets, args.seed)
    held_out, _ = render_pool(args.eval_n, args.seed, split="test")
    log(f"rendered {panels.shape[0]} training panels, {held_out.shape[0]} held-out panels")
    modules, vocab, factors, vae_steps_done, init_record = build_or_init(args, panels, captions, rng, log, started)
    vae_psnr = eval_vae(modules["vae"], held_out, args.device)
    log(f"VAE held-out PSNR {vae_psnr:.2f} dB, latent factors {factors}")

    from diffusers import FluxFillPipeline

    pipe = FluxFillPipeline(**modules)
    record = {"args": vars(args), "init_from": init_record, "vae_steps_done": vae_steps_done,
              "torch": torch.__version__, "device": args.device}
    steps_done = train_transformer(pipe, panels, captions, args, rng, log, started, record)
    if args.stop_at and steps_done < args.steps:
        return {"stopped_at": steps_done}
    record.update(transformer_steps_done=steps_done, train_wall_s=round(time.time() - started, 1),
                  args=vars(args))

    out = Path(args.out)
    tiny.save_base(modules, out, {"vocab": vocab, "vae_factors": factors, "record": record})
    metrics = {"vae_psnr_heldout": vae_psnr, **evaluate_saved(out, held_out, args)}
    meta = json.loads((out / tiny.BASE_META).read_text())
    meta["metrics"] = metrics
    (out / tiny.BASE_META).write_text(json.dumps(meta, indent=1))
    log(f"wrote {out}: {json.dumps(metrics)}")
    return metrics


def build_or_init(args, panels, captions, rng, log, started: float):
    """Fresh modules with a trained VAE, or (--init-from) every weight of an existing base, VAE phase skipped.

    Returns (modules, vocab, VAE factors, VAE steps done, where an --init-from run started or None).
    """
    if args.resume:
        return _init_from(args, log, Path(args.checkpoint_dir) / "base")
    if args.init_from:
        return _init_from(args, log, Path(args.init_from))
    vocab = tiny.build_vocab([*DEFAULT_PROMPT_TEMPLATES.values(), *captions, *synthetic.WORDS, *synthetic.KINDS])
    modules = tiny.build_modules({"vocab": vocab, "vae_factors": {}})
    for name in tiny.COMPONENTS:
        modules[name].to(args.device)
    vae_steps_done = train_vae(modules["vae"], panels, args, rng, log, started)
    factors = set_latent_factors(modules["vae"], panels, args.device)
    return modules, vocab, factors, vae_steps_done, None


def _init_from(args, log, src: Path):
    """Every weight of the base in `src` (--init-from, or a checkpoint's), and its record: its own record
    and its transformer's sha256 (a resumed run's record is replaced by the checkpoint's)."""
    import hashlib

    import torch
    from diffusers import FluxFillPipeline

    meta = json.loads((src / tiny.BASE_META).read_text()) if (src / tiny.BASE_META).is_file() else {}
    record = {"path": str(src), "record": meta.get("record"),
              "transformer_sha256": hashlib.sha256(tiny.weights_path(src, "transformer").read_bytes()).hexdigest()}
    pipe = FluxFillPipeline.from_pretrained(str(src), dtype=torch.float32, use_safetensors=True)
    modules = {n: getattr(pipe, n) for n in (*tiny.COMPONENTS, *tiny.TOKENIZERS, "scheduler")}
    for name in tiny.COMPONENTS:
        modules[name].to(args.device)
    vae = modules["vae"].config
    log(f"initialised from {src} (VAE phase skipped)")
    return (modules, tiny.vocab_of(modules["tokenizer"]),
            {"shift_factor": vae.shift_factor, "scaling_factor": vae.scaling_factor}, 0, record)


def convert_legacy(src: Path, out: Path, log) -> dict:
    """An old flat-layout base rewritten as a diffusers folder; the safetensors keep their exact bytes
    (same tensors, same header), so nothing is retrained and git stores no second copy."""
    import shutil

    from safetensors.torch import load_file

    meta = json.loads((src / tiny.BASE_META).read_text())
    modules = tiny.build_modules(meta)
    for name in tiny.COMPONENTS:
        modules[name].load_state_dict(load_file(str(src / f"{name}.safetensors")), strict=True)
    tiny.save_base(modules, out, {k: v for k, v in meta.items() if k != "configs"})
    for name in tiny.COMPONENTS:
        # the tensors just loaded strictly are these files' bytes; re-saving them may reorder the header's
        # metadata keys (safetensors does not keep their order), so copy the files themselves
        shutil.copyfile(src / f"{name}.safetensors", tiny.weights_path(out, name))
    log(f"converted {src} -> {out}")
    return meta.get("metrics", {})


def evaluate_only(args, log) -> dict:
    """Recompute the recorded metrics of an existing base (prints them; base.json is left as it is)."""
    from layerloop.models.config import ModelConfig
    from layerloop.models.factory import build_backbone

    held_out, _ = render_pool(args.eval_n, args.seed, split="test")
    vae = build_backbone(ModelConfig(path=args.out, device=args.device)).vae
    metrics = {"vae_psnr_heldout": eval_vae(vae, held_out, args.device), **evaluate_saved(Path(args.out), held_out, args)}
    log(f"metrics of {args.out}: {json.dumps(metrics, indent=1)}")
    return metrics


def evaluate_saved(out: Path, held_out, args) -> dict:
    """Metrics of the base as the factory loads it (proves the saved files are what was trained)."""
    from layerloop.models.config import ModelConfig
    from layerloop.models.factory import build_backbone

    backbone = build_backbone(ModelConfig(path=str(out), device=args.device))
    if backbone.schema != LayerSchema():
        raise ValueError("the default layer schema changed; the inpainting eval assumes three panels")
    return eval_inpainting(backbone, held_out, args)


if __name__ == "__main__":
    main()
