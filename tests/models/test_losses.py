"""Flow-matching and cycle-loss maths (models/losses.py) on plain tensors."""
from __future__ import annotations

import math

import pytest
import torch

from layerloop.models import losses


def test_noisy_sample_interpolates_between_data_and_noise():
    x0, noise = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    t = torch.tensor([0.0, 0.25])
    x_t = losses.noisy_sample(x0, noise, t)
    assert torch.equal(x_t[0], x0[0])
    assert torch.allclose(x_t[1], torch.full((4, 3), 0.25))


def test_x0_estimate_inverts_the_true_velocity():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 5, 2, generator=g), torch.randn(3, 5, 2, generator=g)
    t = torch.tensor([0.1, 0.5, 0.9])
    x_t = losses.noisy_sample(x0, noise, t)
    v = losses.velocity_target(x0, noise)
    assert torch.allclose(losses.x0_estimate(x_t, v, t), x0, atol=1e-6)
    assert losses.flow_matching_loss(v, x0, noise).item() == 0.0
    assert losses.flow_matching_loss(v + 0.1, x0, noise).item() == pytest.approx(0.01, rel=1e-4)


def test_cycle_loss_is_zero_for_equal_inputs_and_positive_otherwise():
    v = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(1))
    assert losses.cycle_loss(v, v.clone()).item() == 0.0
    assert losses.cycle_loss(v, v + 0.01).item() > 0.0
    with pytest.raises(ValueError, match="shape"):
        losses.cycle_loss(v, v[:1])


def test_logit_normal_times_are_seeded_and_inside_the_unit_interval():
    a = losses.logit_normal_t(1000, torch.Generator().manual_seed(3))
    b = losses.logit_normal_t(1000, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert 0.0 < a.min().item() and a.max().item() < 1.0
    assert abs(a.median().item() - 0.5) < 0.05  # sigmoid(N(0,1)) is centred on 0.5
    shifted = losses.logit_normal_t(1000, torch.Generator().manual_seed(3), mean=1.0)
    assert shifted.median().item() > 0.65


def test_cycle_weight_is_off_during_warmup():
    assert losses.cycle_weight_at(0, 0.5, 10) == 0.0
    assert losses.cycle_weight_at(9, 0.5, 10) == 0.0
    assert losses.cycle_weight_at(10, 0.5, 10) == 0.5
    assert losses.cycle_weight_at(0, 0.5, 0) == 0.5
    with pytest.raises(ValueError):
        losses.cycle_weight_at(-1, 0.5, 0)


def test_token_weights_restrict_the_loss_to_the_selected_tokens():
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, 4, generator=g)
    v = losses.velocity_target(x0, noise)
    w = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=torch.float32)
    off = v.clone()
    off[0, :2] += 5.0  # errors only where the weights are zero
    off[1, 2:] -= 3.0
    assert losses.flow_matching_loss(off, x0, noise, w).item() == 0.0
    assert losses.flow_matching_loss(off, x0, noise).item() > 1.0
    ones = torch.ones(2, 6)
    assert losses.flow_matching_loss(off, x0, noise, ones).item() == pytest.approx(
        losses.flow_matching_loss(off, x0, noise).item(), rel=1e-6)
    hit = v.clone()
    hit[0, 2:] += 0.5  # every weighted token of sample 0 off by 0.5 -> 0.25 there, 0 for sample 1
    assert losses.flow_matching_loss(hit, x0, noise, w).item() == pytest.approx(0.125, rel=1e-5)
    assert losses.cycle_loss(off, v, w).item() == 0.0
    with pytest.raises(ValueError, match="token_weight"):
        losses.flow_matching_loss(v, x0, noise, torch.ones(2, 5))


def test_lr_factor_warms_up_then_holds_or_decays_to_zero():
    assert [losses.lr_factor(s, 100, "constant", 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cos = [losses.lr_factor(s, 100, "cosine", 0) for s in range(101)]
    assert cos[0] == 1.0 and cos[50] == pytest.approx(0.5) and cos[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(cos, cos[1:]))
    assert losses.lr_factor(1, 100, "cosine", 4) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.01)))
    with pytest.raises(ValueError, match="schedule"):
        losses.lr_factor(0, 10, "linear", 0)
