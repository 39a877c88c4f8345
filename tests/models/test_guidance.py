"""Caption guidance (models/guidance.py) on the shipped tiny transformer: the guided velocity is the
extrapolation of two real forward passes, hooks never outlive their block, and the Sampler applies it to
generate only."""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from layerloop.models.config import SampleConfig
from layerloop.models.guidance import caption_guidance
from layerloop.models.sampler import Sampler


def _inputs(transformer, batch: int = 2, tokens: int = 24, seq: int = 7, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    c = transformer.config
    return {
        "hidden_states": torch.randn(batch, tokens, c.in_channels, generator=g),
        "timestep": torch.rand(batch, generator=g),
        "guidance": torch.full((batch,), 30.0),
        "pooled_projections": torch.randn(batch, c.pooled_projection_dim, generator=g),
        "encoder_hidden_states": torch.randn(batch, seq, c.joint_attention_dim, generator=g),
        "txt_ids": torch.zeros(seq, 3),
        "img_ids": torch.zeros(tokens, 3),
        "return_dict": False,
    }


def _forward(transformer, kwargs: dict):
    import torch

    with torch.no_grad():
        return transformer(**kwargs)[0]


def _hook_count(module) -> int:
    return len(module._forward_hooks) + len(module._forward_pre_hooks)


@pytest.mark.parametrize("scale", [0.0, 4.0])
def test_guided_velocity_is_the_extrapolation_of_two_real_passes(tiny_backbone, scale):
    tr = tiny_backbone.transformer
    x = _inputs(tr)
    uncond = _inputs(tr, seed=1)
    u_embeds, u_pooled = uncond["encoder_hidden_states"][:1], uncond["pooled_projections"][:1]
    cond_v = _forward(tr, x)
    uncond_v = _forward(tr, {**x, "encoder_hidden_states": u_embeds.expand(2, -1, -1),
                             "pooled_projections": u_pooled.expand(2, -1)})
    with caption_guidance(tr, u_embeds, u_pooled, scale):
        guided = _forward(tr, x)
    want = uncond_v + scale * (cond_v - uncond_v)
    np.testing.assert_allclose(guided.numpy(), want.numpy(), atol=1e-5)
    assert guided.shape == cond_v.shape
    if scale == 0:  # the caption-free prediction, which differs from the captioned one
        assert float((cond_v - uncond_v).abs().max()) > 1e-3
    assert _hook_count(tr) == 0


def test_scale_one_adds_no_hooks_and_hooks_go_even_on_error(tiny_backbone):
    tr = tiny_backbone.transformer
    x = _inputs(tr)
    e, p = x["encoder_hidden_states"][:1], x["pooled_projections"][:1]
    with caption_guidance(tr, e, p, 1.0):
        assert _hook_count(tr) == 0
    with pytest.raises(RuntimeError, match="inside"):
        with caption_guidance(tr, e, p, 3.0):
            assert _hook_count(tr) == 2
            raise RuntimeError("inside the block")
    assert _hook_count(tr) == 0


def test_bad_guidance_input_is_a_clear_error(tiny_backbone):
    tr = tiny_backbone.transformer
    x = _inputs(tr)
    e, p = x["encoder_hidden_states"], x["pooled_projections"]
    with pytest.raises(ValueError, match=">= 0"):
        with caption_guidance(tr, e[:1], p[:1], -1.0):
            pass
    with pytest.raises(ValueError, match="one prompt"):
        with caption_guidance(tr, e, p, 2.0):  # two prompts, not one
            pass
    with caption_guidance(tr, e[:1, :3], p[:1], 2.0), pytest.raises(ValueError, match="do not match"):
        _forward(tr, x)
    with pytest.raises(ValidationError, match="caption_guidance"):
        SampleConfig(caption_guidance=-2)


def test_sampler_guides_generate_only(tiny_backbone):
    from PIL import Image

    plain = Sampler(tiny_backbone, None, SampleConfig(steps=2))
    guided = Sampler(tiny_backbone, None, SampleConfig(steps=2, caption_guidance=4.0))
    prompt = ["a red mug with a blue star logo reading 'ZAP'"]
    a, b = plain.generate(prompt)[0], guided.generate(prompt)[0]
    diff = {k: np.abs(np.asarray(a[k], np.float32) - np.asarray(b[k], np.float32)).mean() for k in a}
    assert max(diff.values()) > 1.0, diff  # grey levels: guidance changed the generated triplet
    composite = Image.new("RGB", (32, 32), (200, 40, 40))
    da, db = plain.decompose([composite])[0], guided.decompose([composite])[0]
    for k in da:  # decompose has no caption: the same call either way
        np.testing.assert_array_equal(np.asarray(da[k]), np.asarray(db[k]))
    assert _hook_count(tiny_backbone.transformer) == 0
