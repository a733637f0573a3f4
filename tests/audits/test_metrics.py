import math

import pytest

from audits.metrics import bootstrap_mean, wilson


def test_wilson_is_not_zero_width_at_the_extremes():
    all_won = wilson(10, 10)
    assert all_won.value == 1.0
    assert all_won.ci_high == pytest.approx(1.0)
    assert all_won.ci_low == pytest.approx(0.7225, abs=1e-3)
    none_won = wilson(0, 10)
    assert none_won.ci_low == pytest.approx(0.0)
    assert none_won.ci_high == pytest.approx(0.2775, abs=1e-3)


def test_wilson_matches_a_known_value():
    # By hand: centre (0.38 + z²/200) / (1 + z²/100) = 0.38445, half-width 0.09347.
    e = wilson(38, 100)
    assert (round(e.ci_low, 4), round(e.ci_high, 4)) == (0.2910, 0.4779)


def test_bootstrap_interval_contains_the_mean_and_is_seeded():
    values = [0.1, -0.4, 0.3, 0.9, -0.2, 0.5, 0.0, 0.2]
    a, b = bootstrap_mean(values, seed=1), bootstrap_mean(values, seed=1)
    assert a == b
    assert a.ci_low < a.value < a.ci_high
    assert a.value == pytest.approx(sum(values) / len(values))


def test_one_value_has_an_unbounded_interval():
    e = bootstrap_mean([0.3])
    assert math.isinf(e.ci_low) and math.isinf(e.ci_high)


def test_no_values_is_an_error():
    with pytest.raises(ValueError):
        bootstrap_mean([])
    with pytest.raises(ValueError):
        wilson(0, 0)
