"""Classifier-free guidance on the caption for text -> triplet sampling (tau_G).

FluxFillPipeline has no true classifier-free guidance: its `guidance_scale` feeds FLUX's distilled guidance
embedding. The tiny world's base reads its caption in the right direction but weakly (at t = 1 a colour
word moves the object's mean colour by ~3 grey levels where the palette spans ~60), so a generated
product is mostly the prior's. Guidance extrapolates away from the prediction without the caption:

    v = v(template) + scale * (v(template + caption) - v(template))

where "template" is the task's prompt with an empty caption slot, so only the caption's words are
amplified, not the task's. `caption_guidance` doubles the transformer's batch inside one pipeline call by
hooking its forward (the pipeline's own scheduler, masks and packing stay as they are); the cost is a
second transformer pass per step. The hooks see only FluxTransformer2DModel's keyword arguments, so FLUX
weights take the same path (not yet run on them: no GPU was lent to the session that built it).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # torch stays a lazy import at run time
    import torch

_BATCHED = ("hidden_states", "timestep", "guidance")  # per-item inputs the unconditional half repeats


@contextmanager
def caption_guidance(transformer, uncond_embeds: "torch.Tensor", uncond_pooled: "torch.Tensor",
                     scale: float) -> Iterator[None]:
    """Within the block, every forward of `transformer` returns the guided velocity at `scale`.

    `uncond_embeds` (1, seq, dim) and `uncond_pooled` (1, dim): the template's embeddings without a
    caption. They must have the conditional embeddings' sequence length (the pipeline pads to
    max_sequence_length, so prompts of one backbone always do). Scale 1 adds no hooks."""
    if scale < 0:
        raise ValueError(f"caption guidance scale must be >= 0, got {scale}")
    if uncond_embeds.ndim != 3 or uncond_pooled.ndim != 2 or len(uncond_embeds) != 1 or len(uncond_pooled) != 1:
        raise ValueError(f"unconditional embeddings must be one prompt: (1, seq, dim) and (1, dim); got "
                         f"{tuple(uncond_embeds.shape)} and {tuple(uncond_pooled.shape)}")
    if scale == 1:
        yield
        return
    handles = [transformer.register_forward_pre_hook(_doubling_hook(uncond_embeds, uncond_pooled), with_kwargs=True),
               transformer.register_forward_hook(_combining_hook(scale), with_kwargs=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _doubling_hook(uncond_embeds, uncond_pooled):
    """Forward pre-hook: the batch twice, the second half with the caption-free embeddings."""
    import torch

    def hook(module, args, kwargs):
        if args:
            raise ValueError("caption guidance expects the transformer called with keyword arguments "
                             "(as FluxFillPipeline does)")
        cond = kwargs["encoder_hidden_states"]
        if cond.shape[1:] != uncond_embeds.shape[1:]:
            raise ValueError(f"caption-free embeddings {tuple(uncond_embeds.shape[1:])} do not match the "
                             f"prompt's {tuple(cond.shape[1:])}")
        b = cond.shape[0]
        out = dict(kwargs)
        for key in _BATCHED:
            if out.get(key) is not None:
                out[key] = torch.cat([out[key], out[key]])
        out["encoder_hidden_states"] = torch.cat([cond, uncond_embeds.to(cond).expand(b, -1, -1)])
        pooled = kwargs["pooled_projections"]
        out["pooled_projections"] = torch.cat([pooled, uncond_pooled.to(pooled).expand(b, -1)])
        return args, out

    return hook


def _combining_hook(scale: float):
    """Forward hook: the doubled output folded back to the guided velocity, in the output's own form."""

    def hook(module, args, kwargs, output):
        tuple_out = isinstance(output, tuple)
        v = output[0] if tuple_out else output.sample
        cond, uncond = v.chunk(2)
        guided = uncond + scale * (cond - uncond)
        if tuple_out:
            return (guided, *output[1:])
        output.sample = guided
        return output

    return hook
