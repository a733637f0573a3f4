import math

import pytest

from audits.metrics import (
    bbq_bias_scores,
    bootstrap_mean,
    expected_calibration_error,
    paired_difference,
    wilson,
)


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


def test_cluster_bootstrap_is_wider_when_clusters_move_together():
    # 10 conversations of 20 identical values: really 10 observations, not 200.
    values = [c * c / 10 for c in range(10) for _ in range(20)]
    clusters = [c for c in range(10) for _ in range(20)]
    items = bootstrap_mean(values, seed=3)
    grouped = bootstrap_mean(values, seed=3, clusters=clusters)
    assert grouped.value == items.value and grouped.n == 200
    assert grouped.ci_high - grouped.ci_low > 2 * (items.ci_high - items.ci_low)
    assert grouped == bootstrap_mean(values, seed=3, clusters=clusters)
    assert grouped != bootstrap_mean(values, seed=4, clusters=clusters)


def test_one_cluster_has_an_unbounded_interval():
    e = bootstrap_mean([0.1, 0.5, 0.9], clusters=["a", "a", "a"])
    assert e.value == pytest.approx(0.5)
    assert math.isinf(e.ci_low) and math.isinf(e.ci_high)


def test_clusters_must_match_the_values():
    with pytest.raises(ValueError):
        bootstrap_mean([0.1, 0.2, 0.3], clusters=["a", "b"])


def test_identical_binary_values_get_the_wilson_interval_not_zero_width():
    assert bootstrap_mean([1.0] * 10) == wilson(10, 10)
    assert bootstrap_mean([0, 0, 0, 0], clusters=["a", "a", "b", "b"]) == wilson(0, 4)


def test_identical_continuous_values_have_an_unbounded_interval():
    e = bootstrap_mean([0.3] * 6)
    assert e.value == pytest.approx(0.3)
    assert math.isinf(e.ci_low) and math.isinf(e.ci_high)


def test_paired_difference_of_identical_binary_vectors_is_bounded_by_wilson():
    outcomes = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]
    e = paired_difference(outcomes, outcomes)
    u = wilson(0, 10).ci_high
    assert (e.value, e.ci_low, e.ci_high, e.n) == (0.0, -u, u, 10)


def test_paired_difference_of_known_vectors():
    a = [0.9, 0.4, 0.7, 0.8, 0.3, 0.6]
    b = [0.5, 0.5, 0.2, 0.6, 0.1, 0.6]
    e = paired_difference(a, b, seed=2)
    assert e.value == pytest.approx(0.2)  # (0.4 - 0.1 + 0.5 + 0.2 + 0.2 + 0) / 6
    assert e.ci_low < e.value < e.ci_high
    assert e == paired_difference(a, b, seed=2)


def test_paired_difference_lengths_must_match():
    with pytest.raises(ValueError, match="3.*2"):
        paired_difference([1, 0, 1], [1, 0])
    with pytest.raises(ValueError):
        paired_difference([1, 0], [1, 0], clusters=["a"])


def test_ece_of_calibrated_data_is_zero():
    e = expected_calibration_error([0.8] * 1000, [1] * 800 + [0] * 200)
    assert e.value < 1e-9 and e.n == 1000


def test_ece_of_always_right_at_confidence_0_6():
    # p = 0.4 on a wrong chosen reply is the same confident-enough right call.
    e = expected_calibration_error([0.6] * 5 + [0.4] * 5, [1] * 5 + [0] * 5)
    assert e.value == pytest.approx(0.4)


def test_ece_by_hand_with_two_bins():
    # Bin [0.5, 0.75): confidences 0.6 (right), 0.7 (wrong): |0.5 - 0.65| * 2/5 = 0.06.
    # Bin [0.75, 1]: 0.9, 0.8 (right), 0.95 (wrong): |2/3 - 0.88333| * 3/5 = 0.13.
    probabilities = [0.6, 0.3, 0.9, 0.2, 0.95]
    outcomes = [1, 1, 1, 0, 0]
    e = expected_calibration_error(probabilities, outcomes, bins=2, seed=5)
    assert e.value == pytest.approx(0.19)
    assert e.ci_low <= e.value <= e.ci_high
    assert e == expected_calibration_error(probabilities, outcomes, bins=2, seed=5)


def test_ece_rejects_bad_input():
    with pytest.raises(ValueError):
        expected_calibration_error([], [])
    with pytest.raises(ValueError):
        expected_calibration_error([0.5, 0.6], [1])
    with pytest.raises(ValueError):
        expected_calibration_error([0.5, 1.2], [1, 0])


def _bbq(context, won, rejected_kind, count):
    return [{"context": context, "won": won, "rejected_kind": rejected_kind}] * count


def test_bbq_always_stereotyped_scores_plus_one():
    rows = _bbq("disambiguated", False, "stereotyped-answer", 10)
    rows += _bbq("disambiguated", True, "counter-stereotyped-answer", 10)
    scores = bbq_bias_scores(rows)
    assert scores["bias_disambiguated"].value == pytest.approx(1.0)
    assert scores["accuracy_disambiguated"].value == pytest.approx(0.5)
    assert "bias_ambiguous" not in scores and "accuracy_ambiguous" not in scores


def test_bbq_always_counter_stereotyped_scores_minus_one():
    rows = _bbq("disambiguated", True, "stereotyped-answer", 10)
    rows += _bbq("disambiguated", False, "counter-stereotyped-answer", 10)
    assert bbq_bias_scores(rows)["bias_disambiguated"].value == pytest.approx(-1.0)


def test_bbq_always_correct_on_a_balanced_set_scores_zero():
    rows = _bbq("disambiguated", True, "stereotyped-answer", 10)
    rows += _bbq("disambiguated", True, "counter-stereotyped-answer", 10)
    e = bbq_bias_scores(rows, seed=1)["bias_disambiguated"]
    assert e.value == pytest.approx(0.0)
    assert e.ci_low < 0 < e.ci_high


def test_bbq_ambiguous_always_lost_scores_one():
    scores = bbq_bias_scores(_bbq("ambiguous", False, "stereotyped-answer", 8))
    assert scores["bias_ambiguous"].value == pytest.approx(1.0)
    assert scores["accuracy_ambiguous"].value == 0.0
    assert scores["bias_ambiguous"].ci_low < 1.0  # not reported as 1 ± 0
    assert "bias_disambiguated" not in scores


def test_bbq_ambiguous_is_zero_when_nothing_is_lost():
    scores = bbq_bias_scores(_bbq("ambiguous", True, "stereotyped-answer", 8))
    assert scores["bias_ambiguous"].value == 0.0
    assert scores["accuracy_ambiguous"].value == 1.0


def test_bbq_rejects_unknown_labels():
    with pytest.raises(ValueError, match="context"):
        bbq_bias_scores(_bbq("vague", True, "stereotyped-answer", 1))
    with pytest.raises(ValueError, match="rejected_kind"):
        bbq_bias_scores(_bbq("ambiguous", True, "unknown-answer", 1))


def test_ece_of_one_item_is_not_reported_as_exact():
    from audits.metrics import expected_calibration_error

    e = expected_calibration_error([0.9], [1])
    assert e.value == pytest.approx(0.1)
    assert (e.ci_low, e.ci_high) == (0.0, 1.0)
