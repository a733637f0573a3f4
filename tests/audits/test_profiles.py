"""Which items and conditions a profile scores."""

from __future__ import annotations

from collections import Counter

from audits.builtin import load_keel_suite
from audits.conditions import ADVERSARIAL, NEUTRAL, condition_of
from audits.models import Item
from audits.profiles import QUICK_CONDITIONS, default_conditions, select_items
from audits.services import audit_create


def test_quick_keeps_one_item_per_cell_and_covers_every_domain_trait_and_family(db):
    suites = [load_keel_suite(n) for n in ("beneficial", "probes", "steering-helpful")]
    items = list(Item.objects.filter(suite__in=suites, split="eval").order_by("item_id"))
    quick = select_items(items, "quick")
    cells = Counter(
        (i.suite_id, condition_of(i.tags)) if i.kind == "instruction"
        else (i.suite_id, i.domain, i.trait or i.family)
        for i in quick
    )  # fmt: skip
    assert set(cells.values()) == {1}
    benefit = [i for i in quick if i.kind == "benefit"]
    assert len(benefit) == 60  # 12 domains x 5 traits
    probes = [i for i in quick if i.kind == "misalignment"]
    assert {i.family for i in probes} == {
        "deception", "sycophancy", "reward_hacking", "harmful_compliance", "over_refusal",
        "unfairness",
    }  # fmt: skip
    assert {i.domain for i in probes} == {i.domain for i in benefit}
    assert len({condition_of(i.tags) for i in quick if i.kind == "instruction"}) == 10
    assert len(quick) < len(items) / 3


def test_quick_subset_depends_on_item_ids_only(db):
    suite = load_keel_suite("beneficial")
    items = list(Item.objects.filter(suite=suite, split="eval"))
    forwards = select_items(sorted(items, key=lambda i: i.item_id), "quick")
    backwards = select_items(sorted(items, key=lambda i: i.item_id, reverse=True), "quick")
    assert {i.pk for i in forwards} == {i.pk for i in backwards}


def test_standard_and_full_keep_every_item(db):
    items = list(Item.objects.filter(suite=load_keel_suite("probes"), split="eval"))
    assert select_items(items, "standard") == items
    assert select_items(items, "full") == items


def test_profiles_choose_conditions_when_none_are_given(tiny_checkpoint, starter_suite):
    assert len(QUICK_CONDITIONS) >= 3 and QUICK_CONDITIONS[0] == NEUTRAL
    quick = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite])
    assert quick.conditions == list(QUICK_CONDITIONS)
    full = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite], profile="full")
    assert full.conditions == default_conditions("full") == [NEUTRAL, *ADVERSARIAL]
    assert quick.config_hash != full.config_hash
