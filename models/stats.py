"""Paired statistics for "A - B" claims: per-item differences and percentile-bootstrap intervals.

Two methods scored on the same items are compared item by item (the pairing removes the items' own
difficulty from the spread), and the interval says how far the mean difference could move with another
draw of items of the same kind. numpy only; seeded, so a table prints the same interval every run.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def paired_bootstrap(a: Sequence, b: Sequence, *, reps: int = 2000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """(mean of b - a, lower, upper): the mean paired difference and its percentile-bootstrap interval.

    a and b are lists of per-item scores, or seeds x items matrices (the same items under every training
    seed): then every replicate redraws the seeds and the items, so the interval carries both the training
    seed's variance and the items'."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.shape != y.shape or x.ndim not in (1, 2) or x.shape[-1] < 2:
        raise ValueError(f"paired_bootstrap needs two equally long lists of >= 2 scores (or two equal seeds x "
                         f"items matrices); got {x.shape} and {y.shape}")
    if not np.isfinite(x).all() or not np.isfinite(y).all():
        raise ValueError("paired_bootstrap got a non-finite score (cap PSNR of exact matches first)")
    if not 0 < level < 1 or reps < 100:
        raise ValueError(f"level must be in (0, 1) and reps >= 100; got {level}, {reps}")
    diff = np.atleast_2d(y - x)
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, diff.shape[0], (reps, diff.shape[0]))
    items = rng.integers(0, diff.shape[1], (reps, diff.shape[1]))
    means = np.array([diff[s][:, i].mean() for s, i in zip(seeds, items)])
    tail = 100 * (1 - level) / 2
    return float(diff.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))
