"""Paired bootstrap intervals (models.stats)."""
from __future__ import annotations

import numpy as np
import pytest

from layerloop.models.stats import paired_bootstrap


def test_a_consistent_gain_has_an_interval_above_zero_and_noise_one_across_it():
    rng = np.random.default_rng(1)
    base = rng.normal(20, 3, 200)  # items differ a lot; the pairing removes that
    mean, lo, hi = paired_bootstrap(base, base + 0.5 + rng.normal(0, 0.3, 200))
    assert 0.4 < lo < mean < hi < 0.6
    mean, lo, hi = paired_bootstrap(base, base + rng.normal(0, 0.3, 200))
    assert lo < 0 < hi and abs(mean) < 0.1
    assert paired_bootstrap([1, 2, 3], [2, 3, 4]) == (1.0, 1.0, 1.0)
    assert paired_bootstrap(base, base + 1, seed=3) == paired_bootstrap(base, base + 1, seed=3)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="non-finite"):
        paired_bootstrap([1, float("inf")], [1, 2])
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap([1, 2], [1, 2], level=1.5)


def test_seeds_x_items_intervals_carry_the_seeds_variance():
    rng = np.random.default_rng(2)
    base = rng.normal(20, 3, (3, 150))
    steady = base + 0.5 + rng.normal(0, 0.3, (3, 150))
    mean, lo, hi = paired_bootstrap(base, steady)
    assert 0.4 < lo < mean < hi < 0.6
    # one training seed gains 1.5 dB, the others lose 0.5: the mean is positive, the interval is not
    shifted = base + np.array([[1.5], [-0.5], [-0.5]]) + rng.normal(0, 0.3, (3, 150))
    mean, lo, hi = paired_bootstrap(base, shifted)
    assert 0.1 < mean < 0.3 and lo < 0 < hi
    # the same differences pooled as one seed would claim a gain
    assert paired_bootstrap(base.ravel(), shifted.ravel())[1] > 0
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap(base, base[:2])
