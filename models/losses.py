"""Flow-matching and cycle-consistency losses of the trainer, as plain tensor functions.

Conventions (rectified flow, as FLUX is trained): a sample at time t in [0, 1] is
x_t = (1 - t) * x0 + t * noise, the velocity target is noise - x0, and a one-step estimate of the
clean sample from a predicted velocity v is x0_hat = x_t - t * v. Tensors are packed FLUX latents
of shape (batch, tokens, channels); t has shape (batch,).

Kept free of model code so the maths can be tested on its own.
"""
from __future__ import annotations

import torch


def logit_normal_t(n: int, generator: torch.Generator, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """n times in (0, 1), t = sigmoid(N(mean, std)): mid-range times, where learning happens, dominate."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


def noisy_sample(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise."""
    tb = _bcast(t, x0)
    return (1 - tb) * x0 + tb * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d x_t / d t = noise - x0."""
    return noise - x0


def x0_estimate(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One-step clean-sample estimate x0_hat = x_t - t v (exact when v is the true velocity)."""
    return x_t - _bcast(t, x_t) * v


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference per sample, computed in float32 (bf16 sums lose the small losses)."""
    if a.shape != b.shape:
        raise ValueError(f"loss inputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = a.float() - b.float()
    return diff.pow(2).flatten(1).mean(dim=1)


def weighted_mse(a: torch.Tensor, b: torch.Tensor, token_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Batch mean of per-sample MSE; with token_weight (batch, tokens) a weighted mean over tokens."""
    if token_weight is None:
        return per_sample_mse(a, b).mean()
    if token_weight.shape != a.shape[:2]:
        raise ValueError(f"token_weight must be (batch, tokens) = {tuple(a.shape[:2])}; got {tuple(token_weight.shape)}")
    per_token = (a.float() - b.float()).pow(2).mean(dim=-1)
    w = token_weight.to(per_token.device, per_token.dtype)
    return ((per_token * w).sum(dim=1) / w.sum(dim=1).clamp_min(1e-8)).mean()


def flow_matching_loss(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                       token_weight: torch.Tensor | None = None) -> torch.Tensor:
    """L_rec: || v_theta(x_t) - (noise - x0) ||^2 over every token, or the tokens token_weight selects."""
    return weighted_mse(v_pred, velocity_target(x0, noise), token_weight)


def cycle_loss(v_real: torch.Tensor, v_cycled: torch.Tensor, token_weight: torch.Tensor | None = None) -> torch.Tensor:
    """One L_cyc term: || v(x_t^real, M, t, tau) - v(x_t^cycled, M, t, tau) ||^2.

    Both velocities must come from the same noise and t; the cycled input must already be detached
    (no gradient through the generated intermediate). Zero when both inputs are equal.
    """
    return weighted_mse(v_real, v_cycled, token_weight)


def lr_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    """Multiplier of the base learning rate at 0-based `step`: linear warm-up, then constant or cosine."""
    import math

    if schedule not in ("constant", "cosine"):
        raise ValueError(f"lr schedule must be 'constant' or 'cosine'; got {schedule!r}")
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "constant":
        return warm
    progress = min(1.0, step / max(1, total))
    return warm * 0.5 * (1.0 + math.cos(math.pi * progress))


def cycle_weight_at(step: int, weight: float, warmup_steps: int) -> float:
    """Cycle weight at `step` (0-based): off during warm-up, then `weight`.

    Off rather than ramped: before the LoRA has learnt the two tasks its intermediates are noise,
    and skipping the term also skips its extra forward passes.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0; got {step}")
    return float(weight) if step >= warmup_steps else 0.0
