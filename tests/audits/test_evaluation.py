"""An evaluate run end to end inside the test process, on a tiny random Llama."""

from __future__ import annotations

import pytest
from django.db import transaction

from audits.models import ItemResult, Metric, Run, Score, Status
from audits.services import audit_create
from gpu_tasks.evaluate import ITEMS_PER_WRITE, run_evaluation


@pytest.fixture
def audit(tiny_checkpoint, starter_suite, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        audit = audit_create(
            checkpoint=tiny_checkpoint, suites=[starter_suite], conditions=["neutral"], seed=7
        )
    assert len(callbacks) == 1  # the run is queued only once the audit is committed
    return audit


def test_it_scores_every_item_and_stores_scores(audit):
    run = audit.runs.get()
    run_evaluation(run.pk)
    run.refresh_from_db()
    audit.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert audit.status == Status.SUCCEEDED
    sampled = run.generations.count()
    assert sampled == 12  # quick: one benefit item per domain
    assert (run.progress_done, run.progress_total) == (60 + sampled, 60 + sampled)
    assert ItemResult.objects.filter(run=run).count() == 60
    result = ItemResult.objects.filter(run=run).first()
    assert result.won == (result.margin > 0)
    overall = Score.objects.get(run=run, domain="", trait="", metric=Metric.ACCURACY)
    assert overall.n == 60
    assert overall.value == pytest.approx(ItemResult.objects.filter(run=run, won=True).count() / 60)
    assert overall.ci_low < overall.value < overall.ci_high
    cell = Score.objects.get(run=run, domain="health", trait="humility", metric=Metric.MARGIN)
    assert cell.n == 1


def test_a_restarted_run_skips_stored_results_and_ends_the_same(audit, tiny_checkpoint,
                                                                 starter_suite):  # fmt: skip
    first = audit.runs.get()
    run_evaluation(first.pk)
    expected = dict(ItemResult.objects.filter(run=first).values_list("item__item_id", "margin"))
    replies = dict(first.generations.values_list("item__item_id", "text"))

    second_audit = audit_create(
        checkpoint=tiny_checkpoint, suites=[starter_suite], conditions=["neutral"], seed=7
    )
    second = second_audit.runs.get()
    # Pretend a worker died after writing two chunks (each chunk is one transaction).
    kept = ItemResult.objects.filter(run=first).order_by("item__item_id")[: 2 * ITEMS_PER_WRITE]
    ItemResult.objects.bulk_create(
        [
            ItemResult(
                **{
                    f.name: getattr(r, f.name)
                    for f in ItemResult._meta.fields
                    if f.name not in ("id", "run")
                },
                run=second,
            )
            for r in kept
        ]  # fmt: skip
    )
    Run.objects.filter(pk=second.pk).update(status=Status.RUNNING)
    audit.delete()  # else the second run would copy the first's results (tested below)
    run_evaluation(second.pk)
    second.refresh_from_db()
    assert second.status == Status.SUCCEEDED
    assert "resuming: 16 of 60 already scored" in second.log_tail
    got = dict(ItemResult.objects.filter(run=second).values_list("item__item_id", "margin"))
    assert got.keys() == expected.keys()
    assert got == expected  # same batches, so bit-identical, not merely close
    assert dict(second.generations.values_list("item__item_id", "text")) == replies  # same seeds


def test_a_cancelled_run_stops_before_scoring(audit):
    run = audit.runs.get()
    Run.objects.filter(pk=run.pk).update(cancel_requested=True)
    run_evaluation(run.pk)
    run.refresh_from_db()
    assert run.status == Status.CANCELLED
    assert not ItemResult.objects.filter(run=run).exists()


def test_a_checkpoint_moved_out_of_the_roots_fails_the_run_with_a_reason(audit, settings, tmp_path):
    settings.KEEL_CHECKPOINT_ROOTS = [tmp_path]
    run = audit.runs.get()
    with pytest.raises(Exception, match="outside the allowed checkpoint folders"):
        run_evaluation(run.pk)
    run.refresh_from_db()
    assert run.status == Status.FAILED
    assert "outside the allowed checkpoint folders" in run.error


def test_the_config_hash_changes_with_what_changes_results(tiny_checkpoint, starter_suite):
    with transaction.atomic():
        a = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite], seed=1)
        b = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite], seed=1)
        c = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite], seed=2)
    assert a.config_hash == b.config_hash
    assert a.config_hash != c.config_hash


def test_each_condition_is_scored_with_one_shared_calibration(tiny_checkpoint, starter_suite):
    audit = audit_create(
        checkpoint=tiny_checkpoint, suites=[starter_suite], conditions=["neutral", "flattery"],
        profile="standard",
    )  # fmt: skip
    run = audit.runs.get()
    run_evaluation(run.pk)
    results = ItemResult.objects.filter(run=run)
    assert results.count() == 120
    by_item: dict[int, dict[str, ItemResult]] = {}
    for r in results:
        by_item.setdefault(r.item_id, {})[r.condition] = r
    neutral, flattery = by_item[starter_suite.items.first().pk].values()
    # The persona changes the conditional scores, never the empty-turn calibration.
    assert neutral.logp_chosen != flattery.logp_chosen
    assert neutral.logp_chosen_unconditional == flattery.logp_chosen_unconditional
    assert Score.objects.filter(run=run, condition="flattery", domain="", trait="").exists()


def test_a_checkpoints_calibration_is_scored_once_and_reused(tiny_checkpoint, starter_suite):
    from audits.models import Calibration

    def run_once(conditions):
        audit = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite],
                             conditions=conditions, samples=0)  # fmt: skip
        run = audit.runs.get()
        run_evaluation(run.pk)
        return dict(
            ItemResult.objects.filter(run=run, condition="neutral").values_list(
                "item__item_id", "margin"
            )
        )

    first = run_once(["neutral"])
    replies = {t for i in starter_suite.items.all() for t in (i.chosen, i.rejected)}
    assert Calibration.objects.filter(checkpoint=tiny_checkpoint).count() == len(replies)
    stored = dict(Calibration.objects.values_list("reply_hash", "logp"))
    assert run_once(["neutral"]) == first  # the second run reads the calibration: identical
    run_once(["neutral", "flattery"])
    assert dict(Calibration.objects.values_list("reply_hash", "logp")) == stored


def test_a_checkpoint_scored_the_same_way_before_is_not_scored_again(
    audit, tiny_checkpoint, starter_suite
):
    first = audit.runs.get()
    run_evaluation(first.pk)
    again = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite],
                         conditions=["neutral", "flattery"], seed=7)  # fmt: skip
    second = again.runs.get()
    run_evaluation(second.pk)
    second.refresh_from_db()
    assert second.status == Status.SUCCEEDED
    assert "reused 60 results of earlier identical scoring" in second.log_tail

    def margins(run, condition):
        results = ItemResult.objects.filter(run=run, condition=condition)
        return dict(results.values_list("item__item_id", "margin"))

    assert margins(second, "neutral") == margins(first, "neutral")
    assert len(margins(second, "flattery")) == 60  # what the first lacked was scored

    # The newest run scored the same way is read first; an older one is not read at all
    # once everything is found (its margins here are a sentinel no scoring gives).
    ItemResult.objects.filter(run=first).update(margin=99.0)
    fourth = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite],
                          conditions=["neutral", "flattery"], seed=7).runs.get()  # fmt: skip
    run_evaluation(fourth.pk)
    fourth.refresh_from_db()
    assert "reused 120 results of earlier identical scoring" in fourth.log_tail
    assert margins(fourth, "neutral") == margins(second, "neutral")
    assert margins(fourth, "flattery") == margins(second, "flattery")

    Run.objects.filter(pk__in=[first.pk, fourth.pk]).update(device="cuda bfloat16")
    third = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite],
                         conditions=["neutral"], seed=7).runs.get()  # fmt: skip
    Run.objects.filter(pk=second.pk).update(device="cuda bfloat16")
    run_evaluation(third.pk)
    third.refresh_from_db()
    assert "reused" not in third.log_tail
