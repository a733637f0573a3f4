"""Scores an evaluate run stores: steering shifts, helpful steerability, calibration, BBQ."""

from __future__ import annotations

import pytest

from audits.builtin import load_builtin_suites, load_keel_suite
from audits.metrics import bbq_bias_scores
from audits.models import ItemResult, Metric, Score
from audits.scoring import ADVERSARIAL_POOL, HELPFUL_POOL, _bbq_row
from audits.services import audit_create
from gpu_tasks.evaluate import run_evaluation


@pytest.fixture
def scored(tiny_checkpoint, starter_suite):
    steering = load_keel_suite("steering-helpful")
    bbq = next(s for s in load_builtin_suites()[0] if s.name == "bbq")
    audit = audit_create(
        checkpoint=tiny_checkpoint, suites=[starter_suite, steering, bbq],
        conditions=["neutral", "flattery", "sales_pressure"], profile="standard", samples=0,
    )  # fmt: skip
    run = audit.runs.get()
    run_evaluation(run.pk)
    return run, starter_suite, steering, bbq


def overall(run, suite, condition, metric) -> Score:
    return Score.objects.get(run=run, suite=suite, condition=condition, domain="", trait="",
                             family="", metric=metric)  # fmt: skip


def test_steering_shift_is_the_paired_change_against_neutral(scored):
    run, starter, _, _ = scored
    results = ItemResult.objects.filter(run=run, item__suite=starter)
    neutral = {r.item_id: r.margin for r in results.filter(condition="neutral")}
    flattery = {r.item_id: r.margin for r in results.filter(condition="flattery")}
    expected = sum(flattery[i] - neutral[i] for i in neutral) / len(neutral)
    shift = overall(run, starter, "flattery", Metric.SHIFT)
    assert shift.value == pytest.approx(expected)
    assert shift.n == 60 and shift.ci_low < shift.value < shift.ci_high
    pooled = overall(run, starter, ADVERSARIAL_POOL, Metric.SHIFT)
    sales = overall(run, starter, "sales_pressure", Metric.SHIFT)
    assert pooled.n == 120
    assert pooled.value == pytest.approx((shift.value + sales.value) / 2)
    assert not Score.objects.filter(run=run, condition="neutral", metric=Metric.SHIFT).exists()


def test_helpful_steerability_pools_every_instruction(scored):
    run, _, steering, _ = scored
    results = ItemResult.objects.filter(run=run, item__suite=steering)
    helpful = overall(run, steering, HELPFUL_POOL, Metric.ACCURACY)
    assert helpful.n == results.count() == 60
    assert helpful.value == pytest.approx(results.filter(won=True).count() / 60)
    assert not ItemResult.objects.filter(run=run, item__suite=steering, condition="flattery")


def test_calibration_and_bbq_bias_are_scored(scored):
    run, starter, _, bbq = scored
    ece = overall(run, starter, "neutral", Metric.ECE)
    assert 0.0 <= ece.value <= 1.0 and ece.n == 60
    rows = [_bbq_row(r) for r in ItemResult.objects.filter(run=run, item__suite=bbq,
                                                         condition="neutral")]  # fmt: skip
    expected = bbq_bias_scores(rows, seed=run.audit.seed)
    stored = overall(run, bbq, "neutral", Metric.BBQ_BIAS_DISAMBIGUATED)
    assert stored.value == pytest.approx(expected["bias_disambiguated"].value)
    assert -1.0 <= stored.value <= 1.0
    misaligned = overall(run, bbq, "neutral", Metric.MISALIGNED)
    accuracy = overall(run, bbq, "neutral", Metric.ACCURACY)
    assert misaligned.value == pytest.approx(1 - accuracy.value)


def test_no_interval_is_reported_as_plus_or_minus_zero(scored):
    run = scored[0]
    zero_width = Score.objects.filter(run=run).extra(where=["ci_low = ci_high"])
    assert not zero_width.exists()


def test_a_pitfall_criterion_counts_when_the_reply_avoids_it():
    from audits.scoring import weighted_grade

    # meets the weight-3 criterion, avoids the weight -1 pitfall: full marks
    assert weighted_grade([(3, 1.0), (-1, 0.0)]) == 1.0
    # falls into the pitfall: loses its quarter
    assert weighted_grade([(3, 1.0), (-1, 1.0)]) == 0.75
    assert weighted_grade([(0, 0.4), (0, 0.6)]) == 0.5


def test_one_item_groups_of_a_quick_audit_have_no_zero_width_interval(tiny_checkpoint):
    steering = load_keel_suite("steering-helpful")
    audit = audit_create(checkpoint=tiny_checkpoint, suites=[steering], samples=1)
    run = audit.runs.get()
    run_evaluation(run.pk)
    singles = Score.objects.filter(run=run, n=1)
    assert singles.exists()
    assert not Score.objects.filter(run=run).extra(where=["ci_low = ci_high"]).exists()
