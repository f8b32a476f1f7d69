"""95% intervals: coverage-sensible values on textbook cases, clear errors."""

import numpy as np
import pytest

from lamini_lite.stats import (bootstrap_interval, newcombe_difference,
                               paired_bootstrap_difference, wilson_interval, z_value)


def test_z_value_matches_the_normal_quantile():
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-5)
    assert z_value(0.99) == pytest.approx(2.575829, abs=1e-5)


def test_wilson_interval_textbook_values():
    ci = wilson_interval(8, 10)  # Wilson (1927) / Newcombe (1998) example values
    assert ci.estimate == 0.8
    assert ci.low == pytest.approx(0.4902, abs=1e-3) and ci.high == pytest.approx(0.9433, abs=1e-3)
    zero = wilson_interval(0, 20)
    assert zero.low == 0.0 and 0.1 < zero.high < 0.2  # honest at k = 0


def test_newcombe_difference_textbook_value():
    # Newcombe (1998), method 10, example (56/70 vs 48/80): 0.0524 to 0.3339
    ci = newcombe_difference(56, 70, 48, 80)
    assert ci.estimate == pytest.approx(0.2)
    assert ci.low == pytest.approx(0.0524, abs=2e-3) and ci.high == pytest.approx(0.3339, abs=2e-3)


def test_bootstrap_covers_the_mean_and_is_reproducible():
    x = np.random.default_rng(0).normal(1.0, 1.0, size=200)
    a, b = bootstrap_interval(x, seed=1), bootstrap_interval(x, seed=1)
    assert a == b and a.low < 1.0 < a.high and a.high - a.low < 0.4
    d = paired_bootstrap_difference(x + 0.5, x)
    assert d.estimate == pytest.approx(0.5) and d.high - d.low < 1e-9


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="n must be positive"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="must not exceed"):
        wilson_interval(5, 3)
    with pytest.raises(ValueError, match="paired"):
        paired_bootstrap_difference([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])
