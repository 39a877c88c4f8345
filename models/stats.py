"""Paired statistics for "A - B" claims: per-item differences and percentile-bootstrap intervals.

Two methods scored on the same items are compared item by item (the pairing removes the items' own
difficulty from the spread), and the interval says how far the mean difference could move with another
draw of items of the same kind. numpy only; seeded, so a table prints the same interval every run.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, reps: int = 2000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """(mean of b - a, lower, upper): the mean paired difference and its percentile-bootstrap interval."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"paired_bootstrap needs two equally long lists of >= 2 scores; got {x.shape} and {y.shape}")
    if not np.isfinite(x).all() or not np.isfinite(y).all():
        raise ValueError("paired_bootstrap got a non-finite score (cap PSNR of exact matches first)")
    if not 0 < level < 1 or reps < 100:
        raise ValueError(f"level must be in (0, 1) and reps >= 100; got {level}, {reps}")
    diff = y - x
    idx = np.random.default_rng(seed).integers(0, len(diff), (reps, len(diff)))
    means = diff[idx].mean(axis=1)
    tail = 100 * (1 - level) / 2
    return float(diff.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))
